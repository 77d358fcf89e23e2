//! Workload (b): calls per second of `echo` through each target at concurrency 1, 16 and
//! 256 by default (closed loop, one session per concurrent caller), then open-loop latency at 50% and
//! 80% of each target's own peak. Targets take turns within each round; ratios are to the
//! direct path of the target's protocol era.

use std::time::Duration;

use serde_json::json;

use crate::Settings;
use crate::client::Call;
use crate::latency::ERA_NOTE;
use crate::load::{Bounds, Outcome, close_sessions, closed_loop, open_loop, open_sessions};
use crate::procfs;
use crate::report::{Section, errors, outcome_json, ratio, thousands, us};
use crate::stack::{Stack, direct_of};

pub(crate) async fn run(stack: &Stack, settings: &Settings) -> anyhow::Result<Vec<Section>> {
    let levels: &[usize] = if settings.quick {
        &[1, 4]
    } else {
        &settings.concurrency
    };
    let bounds = Bounds {
        warmup: if settings.quick {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        },
        duration: if settings.quick {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(3)
        },
        max_calls: u64::MAX,
    };
    let targets = &stack.targets;
    // closed[level][target], and the CPU time each process of the target's bridge used
    // meanwhile (warm-up included, as in `Outcome::calls_sent`).
    let mut closed: Vec<Vec<Option<Outcome>>> =
        levels.iter().map(|_| vec![None; targets.len()]).collect();
    let pids: Vec<Vec<(&str, u32)>> = targets.iter().map(|t| stack.bridge_pids(t)).collect();
    let mut cpu: Vec<Vec<Vec<Duration>>> = levels
        .iter()
        .map(|_| pids.iter().map(|p| vec![Duration::ZERO; p.len()]).collect())
        .collect();
    for _ in 0..settings.rounds {
        for (l, &concurrency) in levels.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let sessions = open_sessions(&target.endpoint, concurrency).await?;
                let before: Vec<Duration> = pids[t]
                    .iter()
                    .map(|(_, pid)| procfs::cpu_time(*pid))
                    .collect();
                let (outcome, sessions) = closed_loop(sessions, Call::Echo, bounds).await;
                for ((used, (_, pid)), before) in cpu[l][t].iter_mut().zip(&pids[t]).zip(before) {
                    *used += procfs::cpu_time(*pid).saturating_sub(before);
                }
                close_sessions(sessions).await;
                merge(&mut closed[l][t], outcome);
            }
        }
    }

    let mut header = vec!["target".to_owned()];
    header.extend(levels.iter().map(|c| format!("calls/s c={c}")));
    let top = levels.len() - 1;
    header.push(format!("p99 µs c={}", levels[top]));
    header.push(format!("ratio to direct c={}", levels[top]));
    header.push(format!("bridge CPU µs per call c={}", levels[top]));
    header.push("errors".into());
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut section = Section::new(
        "b_throughput",
        format!(
            "(b) echo throughput, closed loop, one session per caller: {} s per run × {} rounds, interleaved",
            bounds.duration.as_secs_f64(),
            settings.rounds
        ),
        &header,
    );
    let mut peaks = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let direct_top = closed[top][direct_of(targets, target.era())]
            .as_ref()
            .map_or(0.0, Outcome::rate);
        let mut row = vec![target.name.to_owned()];
        let mut peak: f64 = 0.0;
        let mut error_cells = Vec::new();
        for (l, &concurrency) in levels.iter().enumerate() {
            let outcome = closed[l][t].as_ref().expect("every run recorded");
            row.push(thousands(outcome.rate() as u64));
            peak = peak.max(outcome.rate());
            if outcome.errors > 0 {
                error_cells.push(format!("c={concurrency}: {}", errors(outcome)));
            }
            section.record(json!({
                "target": target.name,
                "era": target.era().label(),
                "concurrency": concurrency,
                "outcome": outcome_json(outcome),
                "calls_sent": outcome.calls_sent,
                "bridge_cpu_us_per_call": pids[t]
                    .iter()
                    .zip(&cpu[l][t])
                    .map(|((process, _), used)| json!({"process": process, "us": per_call(*used, outcome)}))
                    .collect::<Vec<_>>(),
            }));
        }
        let top_outcome = closed[top][t].as_ref().expect("recorded");
        row.push(us(top_outcome.q(0.99)));
        row.push(ratio(top_outcome.rate(), direct_top));
        let bridge: Vec<String> = pids[t]
            .iter()
            .zip(&cpu[top][t])
            .map(|((process, _), used)| format!("{process} {:.0}", per_call(*used, top_outcome)))
            .collect();
        row.push(if bridge.is_empty() {
            "–".into()
        } else {
            bridge.join(", ")
        });
        row.push(if error_cells.is_empty() {
            "0".into()
        } else {
            error_cells.join("; ")
        });
        section.row(row);
        peaks.push(peak);
    }
    section.note("Ratios here are throughput over the direct path's: above 1 is faster.");
    section.note(
        "Bridge CPU: user and system CPU time of each process between the client and the upstream (relay and agent; the floor's forwarders; a peer's process) over the runs at that concurrency, warm-up included, per call sent. On this machine every process shares the same cores, so at the top concurrency calls/s is roughly the cores' time over the sum of every process's CPU per call: this column is the bridge's share, and it moves less with the machine's speed than calls/s does.",
    );
    section.note(ERA_NOTE);

    // Open loop at 50% and 80% of each target's peak.
    let fractions = [0.5, 0.8];
    let pool = if settings.quick { 4 } else { 64 };
    let mut open: Vec<Vec<Option<Outcome>>> = fractions
        .iter()
        .map(|_| vec![None; targets.len()])
        .collect();
    for _ in 0..settings.rounds {
        for (f, fraction) in fractions.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let sessions = open_sessions(&target.endpoint, pool).await?;
                let (outcome, sessions) =
                    open_loop(sessions, Call::Echo, peaks[t] * fraction, bounds).await;
                close_sessions(sessions).await;
                merge(&mut open[f][t], outcome);
            }
        }
    }
    let mut latency = Section::new(
        "b_open_loop",
        format!(
            "(b) open-loop echo latency at 50% and 80% of each target's peak ({pool} sessions; each call timed from its dispatch, or from when it was due if every session was busy)"
        ),
        &[
            "target", "load", "rate/s", "p50 µs", "p90 µs", "p99 µs", "max µs", "errors",
        ],
    );
    for (t, target) in targets.iter().enumerate() {
        for (f, fraction) in fractions.iter().enumerate() {
            let outcome = open[f][t].as_ref().expect("recorded");
            let rate = peaks[t] * fraction;
            latency.row(vec![
                target.name.to_owned(),
                format!("{:.0}%", fraction * 100.0),
                thousands(rate as u64),
                us(outcome.q(0.5)),
                us(outcome.q(0.9)),
                us(outcome.q(0.99)),
                us(outcome.latency.max()),
                errors(outcome),
            ]);
            latency.record(json!({
                "target": target.name,
                "era": target.era().label(),
                "fraction_of_peak": fraction,
                "rate": rate,
                "outcome": outcome_json(outcome),
            }));
        }
    }
    Ok(vec![section, latency])
}

/// CPU time per call sent, µs.
fn per_call(used: Duration, outcome: &Outcome) -> f64 {
    used.as_secs_f64() * 1e6 / outcome.calls_sent.max(1) as f64
}

fn merge(slot: &mut Option<Outcome>, outcome: Outcome) {
    match slot {
        Some(total) => total.merge(&outcome),
        None => *slot = Some(outcome),
    }
}
