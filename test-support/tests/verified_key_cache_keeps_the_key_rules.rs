//! The relay remembers verified client keys, and a remembered key still follows the key
//! rules: revoked through the admin API, or by `outpost-relay keys revoke` run as another
//! process against the same store, it is refused on the very next request; past its
//! expiry it is refused. (A wrong key under a remembered key id: `relay/src/key_cache.rs`,
//! since two keys with one key id cannot be made.)

use std::time::Duration;

use outpost_relay::auth::{self, Environment, KeyKind};
use outpost_relay::store::{Scopes, Store};
use outpost_test_support::{Process, TestRelay, binary, relay};

/// Status of a POST that passes authentication and then stops (a `tools/call` without a
/// session: 400), so that the relay commits nothing to the store for it.
async fn status_after_authentication(relay: &TestRelay, key: &str) -> anyhow::Result<u16> {
    let response = relay
        .http_client()
        .post(relay.mcp_url("laptop", "everything"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Authenticates with `key` until the relay remembers it: the first success writes the
/// key's last use (a commit, which makes what was remembered stale); the one after that
/// is remembered with nothing committed since.
async fn remembered(relay: &TestRelay, key: &str) -> anyhow::Result<()> {
    anyhow::ensure!(status_after_authentication(relay, key).await? == 400);
    let id = key_id(key)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let key = relay.store().key_by_id(&id).await?;
        if key.is_some_and(|k| k.last_used_at.is_some()) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "last use never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(status_after_authentication(relay, key).await? == 400);
    Ok(())
}

fn key_id(key: &str) -> anyhow::Result<String> {
    Ok(auth::parse(key, KeyKind::Client, Environment::Live)?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_through_the_admin_api_the_next_request_is_refused() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let owner = relay
        .key_with(relay.org_id(), "owner", Scopes::default())
        .await?;
    let key = relay.client_key().await?;
    remembered(&relay, &key).await?;
    let (status, _, _) = relay
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/keys/{}/revoke", key_id(&key)?),
            &owner,
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(status_after_authentication(&relay, &key).await?, 401);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_by_the_cli_in_another_process_the_next_request_is_refused() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.client_key().await?;
    remembered(&relay, &key).await?;
    let data_dir = relay
        .data_dir()
        .to_str()
        .expect("a UTF-8 temp path")
        .to_owned();
    let mut revoke = Process::spawn(
        &binary("outpost-relay"),
        &[
            "--data-dir",
            &data_dir,
            "--org",
            "acme",
            "keys",
            "revoke",
            &key_id(&key)?,
        ],
        &[],
    )?;
    assert_eq!(revoke.wait().await?, Some(0), "{}", revoke.output());
    assert_eq!(status_after_authentication(&relay, &key).await?, 401);
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_key_is_refused_once_it_expires() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let expires_at = auth::now_ms() + 2_000;
    let key = relay.expiring_client_key(expires_at).await?;
    remembered(&relay, &key).await?;
    // Waiting for the clock, not for another task: the expiry is a time.
    let left = u64::try_from(expires_at + 50 - auth::now_ms()).unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(left)).await;
    assert_eq!(status_after_authentication(&relay, &key).await?, 401);
    relay.stop().await;
    Ok(())
}
