//! Bad HTTP input gets a clear status and loses nothing: oversized bodies (declared or
//! streamed), wrong media types, unparseable JSON, invalid names, unknown sessions and
//! sessions of other keys.

use outpost_test_support::{agent, relay};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413() -> anyhow::Result<()> {
    let relay = relay().max_body(64 * 1024).spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;
    let big = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x".repeat(100 * 1024)}}});
    // Declared by Content-Length.
    let response = client.post(big.clone()).await?;
    assert_eq!(response.status, 413);
    // Streamed without a length: refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .to_string()
        .into_bytes()
        .chunks(8 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = relay
        .http_client()
        .post(relay.mcp_url("laptop", "everything"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", client.session.clone().unwrap())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await?;
    assert_eq!(streamed.status().as_u16(), 413);
    // The session is unharmed.
    let echo = client
        .call_tool("echo", json!({"message": "small"}))
        .await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: small");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_media_types_and_bad_json_are_refused() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;
    let text = client
        .post_raw(b"{}".to_vec(), &[("content-type", "text/plain")])
        .await?;
    assert_eq!(text.status, 415);
    let html_only = client
        .post_raw(b"{}".to_vec(), &[("accept", "text/html")])
        .await?;
    assert_eq!(html_only.status, 406);
    let garbage = client.post_raw(b"{\"jsonrpc\":".to_vec(), &[]).await?;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.error_code(), Some(-32700));
    let not_rpc = client.post_raw(b"{\"hello\":1}".to_vec(), &[]).await?;
    assert_eq!(not_rpc.status, 400);
    assert_eq!(not_rpc.error_code(), Some(-32600));
    let empty_batch = client.post_raw(b"[]".to_vec(), &[]).await?;
    assert_eq!(empty_batch.status, 400);
    // None of it disturbed the session.
    let echo = client.call_tool("echo", json!({"message": "fine"})).await?;
    assert_eq!(echo.result()?["content"][0]["text"], "Echo: fine");
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused_before_routing() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.client_key().await?;
    // Sent raw: an HTTP client library would normalise `%2e%2e` away before sending.
    for path in [
        "Laptop/x",
        "laptop/%2e%2e",
        "%2e%2e/x",
        "..%2fx/y",
        "lap%00top/x",
        &format!("{}/x", "a".repeat(65)),
    ] {
        let head = format!(
            "POST /mcp/{path} HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json"
        );
        let (status, response) = relay.raw_request(&head, b"{}").await?;
        assert_eq!(status, 400, "{path}: {response}");
    }
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_required_private_and_end_on_delete() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let other_key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "everything");

    // A request that is not initialize needs a session.
    let without = client.call_tool("echo", json!({"message": "x"})).await?;
    assert_eq!(without.status, 400);

    client.initialize().await?;
    let session = client.session.clone().unwrap();
    assert_eq!(session.len(), 32, "128 random bits, hex");

    // An unknown session and someone else's session are both simply not found.
    let mut stranger = relay.mcp_client(&key, "laptop", "everything");
    stranger.session = Some("0".repeat(32));
    assert_eq!(
        stranger
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .status,
        404
    );
    let mut thief = relay.mcp_client(&other_key, "laptop", "everything");
    thief.session = Some(session.clone());
    assert_eq!(
        thief
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .status,
        404
    );
    assert_eq!(thief.delete().await?, 404);

    assert_eq!(client.delete().await?, 204);
    assert_eq!(
        client
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .status,
        404
    );
    assert_eq!(client.delete().await?, 404);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_messages_without_an_open_stream_wait_for_the_get_stream() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let relay = relay().spawn().await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let mut client = relay.mcp_client(&key, "laptop", "everything");
    client.initialize().await?;
    // server-everything announces `notifications/tools/list_changed` when it starts,
    // before any client stream is open; the relay keeps it for the session's GET stream.
    let response = relay
        .http_client()
        .get(relay.mcp_url("laptop", "everything"))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", client.session.clone().unwrap())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("notifications/tools/list_changed") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await?
            .expect("stream open")?;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // A second GET stream for the same session is refused while the first is open.
    let second = relay
        .http_client()
        .get(relay.mcp_url("laptop", "everything"))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", client.session.clone().unwrap())
        .send()
        .await?;
    assert_eq!(second.status().as_u16(), 409);
    drop(body);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let relay = relay()
        .handshake_timeout(std::time::Duration::from_millis(300))
        .spawn()
        .await?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        outpost_test_support::tls_client_config(&relay.state.certs),
    ));
    let tcp = tokio::net::TcpStream::connect(relay.addr).await?;
    let mut tls = connector
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let mut buf = [0u8; 64];
    // TLS done, no request: the relay closes the connection instead of holding it.
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_origin_and_protocol_version_are_checked() -> anyhow::Result<()> {
    let relay = relay()
        .allow(&["localhost"], &["https://app.example.com"])
        .spawn()
        .await?;
    let agent = agent(&relay, "laptop")
        .server_everything("everything")
        .spawn()
        .await?;
    let key = relay.client_key().await?;
    let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#.to_vec();
    let client = relay.mcp_client(&key, "laptop", "everything");

    // A web page of another origin is refused; the allowed one is served.
    let foreign = client
        .post_raw(initialize.clone(), &[("origin", "https://evil.example")])
        .await?;
    assert_eq!(foreign.status, 403);
    let allowed = client
        .post_raw(initialize.clone(), &[("origin", "https://app.example.com")])
        .await?;
    assert_eq!(allowed.status, 200);
    assert!(allowed.result().is_ok());

    // A Host outside the list (DNS rebinding) is refused before authentication.
    let head = format!(
        "POST /mcp/laptop/everything HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json"
    );
    let (status, _) = relay.raw_request(&head, &initialize).await?;
    assert_eq!(status, 403);

    // An MCP revision the relay does not serve is a 400; a served one passes.
    let unknown = client
        .post_raw(
            initialize.clone(),
            &[("mcp-protocol-version", "1999-01-01")],
        )
        .await?;
    assert_eq!(unknown.status, 400);
    let known = client
        .post_raw(initialize, &[("mcp-protocol-version", "2025-06-18")])
        .await?;
    assert_eq!(known.status, 200);
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

/// A refusal that comes before the body is read (bad key, wrong media type) still waits
/// for the body: hyper would otherwise close the connection under a client that sends its
/// body in a second TLS record, and the client would read a reset instead of the answer.
/// Both requests on one connection get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_is_read_still_take_the_body() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = relay().spawn().await?;
    let key = relay.client_key().await?;
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let unknown_key = "Bearer pk_test_00000000000000000000000000000000".to_owned();
    let json = "application/json";
    let requests = [
        ("POST", "/mcp/laptop/everything", unknown_key.clone(), json),
        (
            "POST",
            "/mcp/laptop/everything",
            format!("Bearer {key}"),
            "text/plain",
        ),
        ("POST", "/admin/v1/keys", unknown_key.clone(), json),
        (
            "POST",
            "/admin/v1/keys",
            format!("Bearer {key}"),
            "text/plain",
        ),
        // Refused by routing (405, 404) and before it (a key in the URL), with no
        // handler of ours to read the body.
        ("PUT", "/admin/v1/keys", format!("Bearer {key}"), json),
        ("POST", "/nowhere", format!("Bearer {key}"), json),
        (
            "POST",
            "/mcp/laptop/everything?api_key=x",
            format!("Bearer {key}"),
            json,
        ),
    ];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        outpost_test_support::tls_client_config(&relay.state.certs),
    ));
    for (method, path, auth, content_type) in requests {
        let tcp = tokio::net::TcpStream::connect(relay.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let mut stream = connector.connect(name, tcp).await?;
        for last in [false, true] {
            let close = if last { "Connection: close\r\n" } else { "" };
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\n\
                 Content-Type: {content_type}\r\nAccept: application/json, text/event-stream\r\n\
                 Content-Length: {}\r\n{close}\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.flush().await?;
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            stream.write_all(body).await?;
            stream.flush().await?;
        }
        let mut response = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut response),
        )
        .await??;
        let text = String::from_utf8_lossy(&response);
        let answers = text.matches("HTTP/1.1 4").count();
        assert_eq!(answers, 2, "{method} {path} {content_type}: {text}");
    }
    relay.stop().await;
    Ok(())
}
