//! The control plane through the real `outpost-relay` binary, on the local store and
//! against a running relay (`--remote`): keys, usage by tool, and the audit trail, whose
//! `verify` finds a modified, an inserted and a deleted row, and a cut tail.

use std::path::Path;

use outpost_relay::store::Scopes;
use outpost_test_support::{Process, TestRelay, agent, binary, relay};
use serde_json::{Value, json};

async fn cli(relay: &TestRelay, args: &[&str]) -> (Option<i32>, String) {
    cli_on(relay.data_dir(), args).await
}

async fn cli_on(data: &Path, args: &[&str]) -> (Option<i32>, String) {
    let data = data.to_str().unwrap().to_owned();
    let mut all = vec!["--data-dir", data.as_str(), "--org", "acme"];
    all.extend_from_slice(args);
    let mut process = Process::spawn(&binary("outpost-relay"), &all, &[]).unwrap();
    let code = process.wait().await.unwrap();
    (code, process.output())
}

async fn remote(relay: &TestRelay, key: &str, args: &[&str]) -> (Option<i32>, String) {
    let base = relay.base_url();
    let ca = relay.state.certs.ca.to_str().unwrap().to_owned();
    let mut all = vec!["--remote", base.as_str(), "--remote-ca-file", ca.as_str()];
    all.extend_from_slice(args);
    let mut process = Process::spawn(
        &binary("outpost-relay"),
        &all,
        &[("OUTPOST_ADMIN_KEY", key)],
    )
    .unwrap();
    let code = process.wait().await.unwrap();
    (code, process.output())
}

/// Runs one SQL statement on the relay's database, as an attacker with file access would.
async fn tamper(data: &Path, sql: &str) {
    let path = data.join(outpost_relay::config::DATABASE_FILE);
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_keys_locally_and_remotely_and_reads_usage() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let site = agent(&relay, "site")
        .server_everything("everything")
        .spawn()
        .await?;

    // Local store: a scoped member key with a plan, shown once.
    let (code, out) = cli(
        &relay,
        &[
            "keys", "create", "--name", "ci", "--scope", "site/*", "--tool", "echo", "--plan",
            "small", "--quiet",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let key = out.trim().to_owned();
    assert!(key.starts_with("pk_live_"), "{out}");
    let mut client = relay.mcp_client(&key, "site", "everything");
    client.initialize().await?;
    for _ in 0..3 {
        client
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .result()?;
    }
    relay.wait_for_usage(4).await?;
    let (code, out) = cli(&relay, &["keys", "list"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("site/*") && out.contains("ci") && !out.contains(&key[8..]),
        "{out}"
    );
    let (code, out) = cli(&relay, &["usage", "--since", "1h", "--by", "tool"]).await;
    assert_eq!(code, Some(0), "{out}");
    let echo = out
        .lines()
        .find(|l| l.starts_with("echo"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(echo.split_whitespace().nth(1), Some("3"), "{out}");

    // Remote: an admin key drives the same operations through the admin API.
    let admin = relay
        .key_with(relay.org_id(), "admin", Scopes::default())
        .await?;
    let (code, out) = remote(&relay, &admin, &["keys", "list", "--json"]).await;
    assert_eq!(code, Some(0), "{out}");
    let listed: Value = serde_json::from_str(&out)?;
    let id = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, out) = remote(
        &relay,
        &admin,
        &["keys", "rotate", &id, "--overlap", "0s", "--quiet"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let rotated = out.trim().to_owned();
    assert_eq!(
        client
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .status,
        401
    );
    let mut fresh = relay.mcp_client(&rotated, "site", "everything");
    fresh.initialize().await?;
    let (code, out) = remote(
        &relay,
        &admin,
        &["usage", "--since", "1h", "--by", "key", "--json"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&id), "{out}");
    // A viewer may read usage but not keys: the CLI says why and fails.
    let viewer = relay
        .key_with(relay.org_id(), "viewer", Scopes::default())
        .await?;
    let (code, out) = remote(&relay, &viewer, &["keys", "list"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("HTTP 403"), "{out}");
    site.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_modified_inserted_and_deleted_rows() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let owner = relay
        .key_with(relay.org_id(), "owner", Scopes::default())
        .await?;
    for name in ["a", "b", "c", "d", "e"] {
        let (status, _, _) = relay
            .admin(
                reqwest::Method::POST,
                "/admin/v1/keys",
                &owner,
                Some(json!({"name": name})),
            )
            .await?;
        assert_eq!(status, 201);
    }
    // Stopped, so nothing writes while the files are tampered with.
    let state = relay.stop().await;
    let data = state.data_dir().to_owned();

    let (code, out) = cli_on(&data, &["audit", "verify"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("intact: 5 rows"), "{out}");
    let (code, out) = cli_on(&data, &["audit", "export"]).await;
    assert_eq!(code, Some(0), "{out}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    assert!(
        events
            .iter()
            .all(|e| e["action"] == "key.created" && e["hash"].is_string())
    );
    assert!(
        !out.contains("pk_live_"),
        "key material in the trail: {out}"
    );

    let backup = std::fs::read(data.join("outpost.db"))?;
    let restore = || {
        for leftover in ["outpost.db-wal", "outpost.db-shm"] {
            let _ = std::fs::remove_file(data.join(leftover));
        }
        std::fs::write(data.join("outpost.db"), &backup)
    };
    let cases = [
        (
            "modified",
            "UPDATE audit_events SET resource = 'kid_0000000000000000' WHERE seq = 3",
            "row 3 was modified",
        ),
        (
            "inserted",
            "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 3; \
             UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000; \
             INSERT INTO audit_events SELECT 3, at, org_id, actor, action, resource, source, user_agent, correlation_id, detail, prev_hash, hash FROM audit_events WHERE seq = 2",
            "row 3",
        ),
        (
            "deleted",
            "DELETE FROM audit_events WHERE seq = 3",
            "row 4 follows row 2",
        ),
        (
            "cut tail",
            "DELETE FROM audit_events WHERE seq = 5",
            "deleted from the end",
        ),
        (
            "moved head",
            "DELETE FROM audit_events WHERE seq = 5; UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4)",
            "head seal is wrong",
        ),
    ];
    for (what, sql, expected) in cases {
        restore()?;
        for statement in sql.split("; ") {
            tamper(&data, statement).await;
        }
        let (code, out) = cli_on(&data, &["audit", "verify"]).await;
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(
            out.contains(expected),
            "{what}: expected {expected:?} in {out}"
        );
    }
    Ok(())
}
