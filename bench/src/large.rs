//! Workload (c): `big` results of 1 MiB and 10 MiB at concurrency 1 and 16 through each
//! target: MiB/s, call latency, the peak RSS and the CPU per MiB of the processes in
//! between (relay and agent for Outpost, the bridge for a peer), and meanwhile the latency
//! of small `echo` calls on another session, which large results must not hold up. The
//! 2025-era targets only.

use std::time::Duration;

use serde_json::json;

use crate::Settings;
use crate::client::{Call, Era};
use crate::load::{Bounds, Outcome, close_sessions, closed_loop, open_sessions};
use crate::procfs;
use crate::report::{Section, errors, outcome_json, ratio, us};
use crate::stack::Stack;

pub(crate) async fn run(stack: &Stack, settings: &Settings) -> anyhow::Result<Section> {
    let sizes: &[usize] = if settings.quick {
        &[256 * 1024]
    } else {
        &[MIB, 10 * MIB]
    };
    let levels: &[usize] = if settings.quick { &[2] } else { &[1, 16] };
    let bounds = Bounds {
        warmup: Duration::ZERO,
        duration: if settings.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        },
        max_calls: if settings.quick { 4 } else { 200 },
    };
    // The direct path first.
    let targets = stack.targets_of(Era::Sessions);
    let cases: Vec<(usize, usize)> = sizes
        .iter()
        .flat_map(|&size| levels.iter().map(move |&c| (size, c)))
        .collect();
    // results[case][target]
    let mut results: Vec<Vec<Option<Run>>> =
        cases.iter().map(|_| vec![None; targets.len()]).collect();
    for _ in 0..settings.rounds {
        for (k, &(size, concurrency)) in cases.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let pids = stack.bridge_pids(target);
                let starts: Vec<u64> = pids
                    .iter()
                    .map(|(_, pid)| {
                        procfs::reset_peak(*pid);
                        procfs::rss_kib(*pid)
                    })
                    .collect();
                let big = open_sessions(&target.endpoint, concurrency).await?;
                let small = open_sessions(&target.endpoint, 1).await?;
                let cpu_before: Vec<Duration> =
                    pids.iter().map(|(_, pid)| procfs::cpu_time(*pid)).collect();
                let side = Bounds {
                    warmup: Duration::ZERO,
                    duration: bounds.duration,
                    max_calls: u64::MAX,
                };
                let ((big_outcome, big), (small_outcome, small)) = tokio::join!(
                    closed_loop(big, Call::Big(size), bounds),
                    closed_loop(small, Call::Echo, side),
                );
                let cpu: Vec<Duration> = pids
                    .iter()
                    .zip(cpu_before)
                    .map(|((_, pid), before)| procfs::cpu_time(*pid).saturating_sub(before))
                    .collect();
                let peaks: Vec<Peak> = pids
                    .iter()
                    .zip(starts)
                    .map(|(&(process, pid), start_kib)| Peak {
                        process,
                        start_kib,
                        peak_kib: procfs::peak_rss_kib(pid),
                    })
                    .collect();
                close_sessions(big).await;
                close_sessions(small).await;
                let slot = &mut results[k][t];
                match slot {
                    Some(run) => {
                        run.big.merge(&big_outcome);
                        run.small.merge(&small_outcome);
                        for (total, used) in run.cpu.iter_mut().zip(cpu) {
                            *total += used;
                        }
                        for (kept, new) in run.peaks.iter_mut().zip(peaks) {
                            if new.peak_kib > kept.peak_kib {
                                *kept = new;
                            }
                        }
                    }
                    None => {
                        *slot = Some(Run {
                            big: big_outcome,
                            small: small_outcome,
                            peaks,
                            cpu,
                        });
                    }
                }
            }
        }
    }

    let mut section = Section::new(
        "c_large_results",
        format!(
            "(c) large results: `big` of N bytes, up to {} s or {} calls per run × {} rounds, interleaved; small echo calls on another session meanwhile",
            bounds.duration.as_secs_f64(),
            bounds.max_calls,
            settings.rounds
        ),
        &[
            "target",
            "size",
            "c",
            "MiB/s",
            "p50 ms",
            "p99 ms",
            "p50 ratio",
            "small p50 µs",
            "small p99 µs",
            "peak RSS MiB (at start)",
            "bridge CPU ms per MiB",
            "errors",
        ],
    );
    for (k, &(size, concurrency)) in cases.iter().enumerate() {
        let direct_p50 = results[k][0].as_ref().map_or(0, |r| r.big.q(0.5));
        for (t, target) in targets.iter().enumerate() {
            let Run {
                big,
                small,
                peaks,
                cpu,
            } = results[k][t].as_ref().expect("recorded");
            let received_mib = big.bytes as f64 / MIB as f64;
            let cpu_per_mib: Vec<(&str, f64)> = peaks
                .iter()
                .zip(cpu)
                .map(|(peak, used)| {
                    let ms = used.as_secs_f64() * 1000.0 / received_mib.max(1e-9);
                    (peak.process, ms)
                })
                .collect();
            let cpu_cell = if cpu_per_mib.is_empty() || big.bytes == 0 {
                "–".to_owned()
            } else {
                cpu_per_mib
                    .iter()
                    .map(|(process, ms)| format!("{process} {ms:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let rss = if peaks.is_empty() {
                "–".to_owned()
            } else {
                peaks
                    .iter()
                    .map(|peak| {
                        format!(
                            "{} {:.0} ({:.0})",
                            peak.process,
                            mib(peak.peak_kib),
                            mib(peak.start_kib)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            section.row(vec![
                target.name.to_owned(),
                size_name(size),
                concurrency.to_string(),
                format!("{:.0}", big.mib_per_sec()),
                format!("{:.1}", big.q(0.5) as f64 / 1000.0),
                format!("{:.1}", big.q(0.99) as f64 / 1000.0),
                ratio(big.q(0.5) as f64, direct_p50 as f64),
                us(small.q(0.5)),
                us(small.q(0.99)),
                rss,
                cpu_cell,
                errors(big),
            ]);
            section.record(json!({
                "target": target.name,
                "bytes": size,
                "concurrency": concurrency,
                "big": outcome_json(big),
                "small": outcome_json(small),
                "peak_rss_kib": peaks.iter().map(|peak| json!({"process": peak.process, "kib": peak.peak_kib, "start_kib": peak.start_kib})).collect::<Vec<_>>(),
                "bridge_cpu_ms_per_mib": cpu_per_mib.iter().map(|(process, ms)| json!({"process": process, "ms": ms})).collect::<Vec<_>>(),
            }));
        }
    }
    section.note("Peak RSS is VmHWM, reset before each run to the RSS of that moment (`/proc/PID/clear_refs`), which is given in brackets: a peak equal to it (in whole MiB) means the run fitted in memory the process still held from earlier runs or workloads (glibc keeps freed memory), so the run's own need may be smaller. For each process, the round with the largest peak is shown. Outpost's figure is the relay's and the agent's; the floor's, its forwarders' in the order the client's bytes cross them; a peer's, its own process's.");
    section.note("Bridge CPU: user and system CPU time of each process between the client and the upstream over the runs of that case, the small calls' share included, per MiB of `big` results received. It moves less with this machine's speed than the latencies do. The small calls run for the whole run while the big ones may stop at their call bound, so where the big calls end early (1 MiB) the figure is mostly the small calls' cost.");
    Ok(section)
}

/// One target's runs of one case, rounds merged.
#[derive(Debug, Clone)]
struct Run {
    /// The `big` calls.
    big: Outcome,
    /// The `echo` calls on another session meanwhile.
    small: Outcome,
    /// The peak RSS of each process between client and upstream.
    peaks: Vec<Peak>,
    /// The CPU time each of those processes used, in the order of `peaks`.
    cpu: Vec<Duration>,
}

/// One process's peak RSS over a run, and its RSS when the run started.
#[derive(Debug, Clone)]
struct Peak {
    process: &'static str,
    start_kib: u64,
    peak_kib: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn size_name(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / 1024)
    }
}

const MIB: usize = 1024 * 1024;
