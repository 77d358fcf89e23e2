//! Unknown, malformed, expired and revoked keys, and keys of the wrong kind, all get the
//! same 401; a key in the URL is refused before routing; revocation takes effect on the
//! very next request.

use outpost_test_support::{TestRelay, agent, relay};
use serde_json::{Value, json};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

async fn post_with(
    relay: &TestRelay,
    url: &str,
    authorization: Option<&str>,
) -> anyhow::Result<(u16, Value, reqwest::header::HeaderMap)> {
    let mut request = relay
        .http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(std::time::Duration::from_secs(30))
        .body(INITIALIZE);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body, headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_key_gets_the_same_401() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let url = relay.mcp_url("laptop", "everything");
    let valid = relay.client_key().await?;
    let revoked = relay.client_key().await?;
    relay.revoke(&revoked).await?;
    let expired = relay.expiring_client_key(1_000).await?;
    let unknown = format!("pk_live_{}", "A".repeat(32));
    let test_env = format!("pk_test_{}", &valid["pk_live_".len()..]);
    let bad: Vec<(String, Option<String>)> = vec![
        ("missing".into(), None),
        ("not bearer".into(), Some(format!("Basic {valid}"))),
        ("malformed".into(), Some("Bearer pk_live_short".into())),
        ("unknown".into(), Some(format!("Bearer {unknown}"))),
        ("revoked".into(), Some(format!("Bearer {revoked}"))),
        ("expired".into(), Some(format!("Bearer {expired}"))),
        (
            "other environment".into(),
            Some(format!("Bearer {test_env}")),
        ),
        ("agent key".into(), Some(format!("Bearer {}", agent.key))),
        (
            "tampered".into(),
            Some(format!("Bearer {}X", &valid[..valid.len() - 1])),
        ),
    ];
    let mut bodies = Vec::new();
    for (case, authorization) in &bad {
        let (status, mut body, headers) = post_with(&relay, &url, authorization.as_deref()).await?;
        assert_eq!(status, 401, "{case}");
        assert_eq!(
            headers["www-authenticate"], "Bearer realm=\"outpost\"",
            "{case}"
        );
        // The same body but for the correlation id.
        body["error"]["message"] = Value::Null;
        body["error"]["data"] = Value::Null;
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let (status, _, _) = post_with(&relay, &url, Some(&format!("Bearer {valid}"))).await?;
    assert_eq!(status, 200, "the valid key works");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_takes_effect_on_the_next_request() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;
    assert_eq!(
        client
            .call_tool("echo", json!({"message": "a"}))
            .await?
            .status,
        200
    );
    relay.revoke(&key).await?;
    assert_eq!(
        client
            .call_tool("echo", json!({"message": "b"}))
            .await?
            .status,
        401
    );
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_the_url_are_refused_before_routing() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.client_key().await?;
    let base = relay.mcp_url("laptop", "cat");
    for query in [
        format!("key={key}"),
        format!("api_key={key}"),
        format!("x={key}"),
        format!("x={}", key.replace('_', "%5F")),
        "access_token=anything".to_owned(),
    ] {
        let (status, body, _) = post_with(
            &relay,
            &format!("{base}?{query}"),
            Some(&format!("Bearer {key}")),
        )
        .await?;
        assert_eq!(status, 400, "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Authorization header"),
            "{body}"
        );
    }
    relay.stop().await;
    Ok(())
}
