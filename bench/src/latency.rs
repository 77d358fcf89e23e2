//! Workload (a): one 16-byte `echo` at a time per target, targets taking turns round by
//! round; per-call latency percentiles and their ratio to the direct path of the same
//! protocol era.

use serde_json::json;

use crate::Settings;
use crate::client::Call;
use crate::load::{Outcome, close_sessions, micros, open_sessions};
use crate::report::{Section, errors, outcome_json, ratio, us};
use crate::stack::{Stack, direct_of};

pub(crate) async fn run(stack: &Stack, settings: &Settings) -> anyhow::Result<Section> {
    let calls = settings.calls;
    let warmup = (calls / 10).max(10);
    let mut sessions = Vec::new();
    for target in &stack.targets {
        let mut session = open_sessions(&target.endpoint, 1).await?.remove(0);
        for _ in 0..warmup {
            session.call(Call::Echo).await?;
        }
        sessions.push(session);
    }
    let mut outcomes: Vec<Outcome> = stack.targets.iter().map(|_| Outcome::new()).collect();
    for _ in 0..settings.rounds {
        for (session, outcome) in sessions.iter_mut().zip(&mut outcomes) {
            for _ in 0..calls {
                let started = tokio::time::Instant::now();
                match session.call(Call::Echo).await {
                    Ok(_) => outcome.latency.saturating_record(micros(started.elapsed())),
                    Err(err) => {
                        outcome.errors += 1;
                        outcome
                            .first_error
                            .get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
        }
    }
    for session in sessions {
        close_sessions(vec![session]).await;
    }

    let mut section = Section::new(
        "a_latency",
        format!(
            "(a) echo 16 B, concurrency 1: {calls} calls × {} rounds per target, interleaved",
            settings.rounds
        ),
        &[
            "target",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "max µs",
            "p50 ratio",
            "p99 ratio",
            "added p50 µs",
            "errors",
        ],
    );
    for (target, outcome) in stack.targets.iter().zip(&outcomes) {
        let direct = &outcomes[direct_of(&stack.targets, target.era())];
        section.row(vec![
            target.name.to_owned(),
            us(outcome.q(0.5)),
            us(outcome.q(0.9)),
            us(outcome.q(0.99)),
            us(outcome.latency.max()),
            ratio(outcome.q(0.5) as f64, direct.q(0.5) as f64),
            ratio(outcome.q(0.99) as f64, direct.q(0.99) as f64),
            us(outcome.q(0.5).saturating_sub(direct.q(0.5))),
            errors(outcome),
        ]);
        section.record(json!({
            "target": target.name,
            "era": target.era().label(),
            "outcome": outcome_json(outcome),
            "p50_ratio": outcome.q(0.5) as f64 / direct.q(0.5).max(1) as f64,
            "p99_ratio": outcome.q(0.99) as f64 / direct.q(0.99).max(1) as f64,
        }));
    }
    section.note(ERA_NOTE);
    Ok(section)
}

/// How rows of the two protocol eras are read, under the tables of (a) and (b).
pub(crate) const ERA_NOTE: &str = "Rows named 2026 speak MCP 2026-07-28 (stateless requests with `_meta` and `Mcp-Method`/`Mcp-Name` headers) to a stateless Rust upstream, and their ratios are to `direct 2026`; the other rows speak MCP 2025-06-18 (sessions) and their ratios are to `direct (rmcp HTTP)`. `bridged`: a 2026 client on the 2025 rmcp upstream, which the relay serves with a session per request.";
