//! Workload (g): the peers' summary. supergateway and mcp-proxy run as targets in (a), (b)
//! and (c), bridging the same stdio server; this gathers each target's ratio to direct from
//! those sections, so Outpost and the peers can be compared on one line each, with the
//! floor (forwarders that read nothing) beside them when it ran. The peers speak the
//! 2025 era, so the rows are the 2025-era targets.

use serde_json::{Value, json};

use crate::report::Section;

/// One row per target: its ratio to direct on (a), (b) and (c), from this run's sections.
pub(crate) fn summary(sections: &[Section]) -> Section {
    let find = |key: &str| sections.iter().find(|s| s.key == key).map(|s| &s.json);
    let latency = find("a_latency");
    let throughput = find("b_throughput");
    let large = find("c_large_results");
    let items =
        |value: Option<&Value>| value.and_then(Value::as_array).cloned().unwrap_or_default();

    let mut targets: Vec<String> = Vec::new();
    for item in items(latency)
        .iter()
        .chain(&items(throughput))
        .chain(&items(large))
    {
        if let Some(name) = item["target"].as_str()
            && item["era"].as_str() != Some("2026")
            && !targets.iter().any(|t| t == name)
        {
            targets.push(name.to_owned());
        }
    }
    let top_concurrency = items(throughput)
        .iter()
        .filter_map(|i| i["concurrency"].as_u64())
        .max()
        .unwrap_or(0);
    let largest = items(large)
        .iter()
        .filter_map(|i| i["bytes"].as_u64())
        .max()
        .unwrap_or(0);
    let smallest_level = items(large)
        .iter()
        .filter_map(|i| i["concurrency"].as_u64())
        .min()
        .unwrap_or(1);
    let value_of = |items: &[Value], target: &str, pick: &dyn Fn(&Value) -> Option<f64>| {
        items
            .iter()
            .find(|i| i["target"].as_str() == Some(target) && pick(i).is_some())
            .and_then(pick)
    };
    let a_items = items(latency);
    let b_items = items(throughput);
    let c_items = items(large);
    let b_of = |target: &str| {
        value_of(&b_items, target, &|i| {
            (i["concurrency"].as_u64() == Some(top_concurrency))
                .then(|| i["outcome"]["calls_per_sec"].as_f64())
                .flatten()
        })
    };
    let c_of = |target: &str| {
        value_of(&c_items, target, &|i| {
            (i["bytes"].as_u64() == Some(largest)
                && i["concurrency"].as_u64() == Some(smallest_level))
            .then(|| i["big"]["p50_us"].as_f64())
            .flatten()
        })
    };
    let direct = targets.first().cloned().unwrap_or_default();

    let mut section = Section::new(
        "g_peers",
        "(g) ratio to direct, same run: Outpost beside the peers and the floor (lower is better on a and c, higher on b)",
        &[
            "target",
            "(a) p50 latency ratio",
            "(a) p99 latency ratio",
            &format!("(b) calls/s ratio c={top_concurrency}"),
            &format!("(c) {} KiB c={smallest_level} time ratio", largest / 1024),
        ],
    );
    let fmt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}x"));
    for target in &targets {
        let a50 = value_of(&a_items, target, &|i| i["p50_ratio"].as_f64());
        let a99 = value_of(&a_items, target, &|i| i["p99_ratio"].as_f64());
        let b = b_of(target)
            .zip(b_of(&direct))
            .map(|(t, d)| t / d.max(1e-9));
        let c = c_of(target)
            .zip(c_of(&direct))
            .map(|(t, d)| t / d.max(1e-9));
        section.row(vec![target.clone(), fmt(a50), fmt(a99), fmt(b), fmt(c)]);
        section.record(json!({
            "target": target,
            "a_p50_ratio": a50,
            "a_p99_ratio": a99,
            "b_throughput_ratio": b,
            "c_large_time_ratio": c,
        }));
    }
    section
}
