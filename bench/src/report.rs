//! Collects what the workloads found: a table per workload, printed as Markdown (so a run
//! pastes into docs/benchmarks.md as it is), and one JSON document with every figure.
//! Owns formatting; does not measure.

use std::path::Path;

use serde_json::{Map, Value};

use crate::load::Outcome;

/// One workload's table, notes and figures.
#[derive(Debug)]
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) header: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
    pub(crate) notes: Vec<String>,
    /// The key of this section in the JSON file.
    pub(crate) key: &'static str,
    pub(crate) json: Value,
}

impl Section {
    pub(crate) fn new(key: &'static str, title: impl Into<String>, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
            key,
            json: Value::Array(Vec::new()),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Adds one record to the JSON array.
    pub(crate) fn record(&mut self, value: Value) {
        if let Value::Array(items) = &mut self.json {
            items.push(value);
        }
    }

    /// Prints the table as Markdown.
    pub(crate) fn print(&self) {
        println!("\n### {}\n", self.title);
        println!("| {} |", self.header.join(" | "));
        let align: Vec<&str> = self
            .header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", align.join("|"));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }
}

/// Writes every section's figures, with the machine's description, as one JSON file.
pub(crate) fn write_json(path: &Path, sections: &[Section], machine: Value) -> anyhow::Result<()> {
    let mut root = Map::new();
    root.insert("machine".into(), machine);
    for section in sections {
        root.insert(section.key.into(), section.json.clone());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&Value::Object(root))?)?;
    Ok(())
}

/// Percentiles and counts of an outcome, for the JSON file.
pub(crate) fn outcome_json(outcome: &Outcome) -> Value {
    serde_json::json!({
        "calls": outcome.calls(),
        "errors": outcome.errors,
        "first_error": outcome.first_error,
        "seconds": outcome.elapsed.as_secs_f64(),
        "calls_per_sec": outcome.rate(),
        "mib_per_sec": outcome.mib_per_sec(),
        "p50_us": outcome.q(0.50),
        "p90_us": outcome.q(0.90),
        "p99_us": outcome.q(0.99),
        "max_us": outcome.latency.max(),
    })
}

/// µs with thousands separators.
pub(crate) fn us(value: u64) -> String {
    thousands(value)
}

/// An integer with thousands separators.
pub(crate) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio like `2.45x`, or `–` when the base is missing.
pub(crate) fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 && value > 0.0 {
        format!("{:.2}x", value / base)
    } else {
        "–".into()
    }
}

/// Errors as a cell: `0`, or the count and the first message, cut short.
pub(crate) fn errors(outcome: &Outcome) -> String {
    match &outcome.first_error {
        None => "0".into(),
        Some(first) => format!(
            "{} ({})",
            outcome.errors,
            first.chars().take(60).collect::<String>().replace('|', "/")
        ),
    }
}

/// The machine: CPU model and count, memory, kernel.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_kib / (1024 * 1024),
        "kernel": kernel.trim(),
        "loadavg_at_start": load.trim(),
    })
}
