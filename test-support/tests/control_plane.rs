//! The admin API through real HTTP against a running relay: every operation against every
//! role, one table; organisations that cannot see or reach each other's objects, for every
//! endpoint; and the key lifecycle (create once, list without secrets, revoke, rotate with
//! an overlap, expire).

use std::time::Duration;

use outpost_relay::store::Scopes;
use outpost_test_support::{TestRelay, agent, relay};
use reqwest::Method;
use serde_json::{Value, json};

const ROLES: [&str; 4] = ["viewer", "member", "admin", "owner"];

/// Fresh objects for one role's row of the table, made by an owner.
struct Targets {
    /// A member key the acting key did not create.
    member_key: String,
    /// Another member key, to revoke.
    revoke_key: String,
    /// Another, to rotate.
    rotate_key: String,
    /// A second owner key, to demote.
    owner_key: String,
}

async fn key_id(relay: &TestRelay, owner: &str, body: Value) -> String {
    let (status, _, created) = relay
        .admin(Method::POST, "/admin/v1/keys", owner, Some(body))
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    created["key"]["id"].as_str().unwrap().to_owned()
}

async fn targets(relay: &TestRelay, owner: &str) -> Targets {
    Targets {
        member_key: key_id(relay, owner, json!({"role": "member"})).await,
        revoke_key: key_id(relay, owner, json!({"role": "member"})).await,
        rotate_key: key_id(relay, owner, json!({"role": "member"})).await,
        owner_key: key_id(relay, owner, json!({"role": "owner"})).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_operation_against_every_role() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let org = relay.org_id().to_owned();
    let owner = relay.key_with(&org, "owner", Scopes::default()).await?;
    // Expected status per role: viewer, member, admin, owner.
    type Row = (
        &'static str,
        Method,
        fn(&Targets) -> String,
        Option<Value>,
        [u16; 4],
    );
    let table: Vec<Row> = vec![
        (
            "read organisation",
            Method::GET,
            |_| "/admin/v1/organisation".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "list agents",
            Method::GET,
            |_| "/admin/v1/agents".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "read usage",
            Method::GET,
            |_| "/admin/v1/usage?since=1h&by=tool".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "list keys",
            Method::GET,
            |_| "/admin/v1/keys".into(),
            None,
            [403, 200, 200, 200],
        ),
        (
            "create member key",
            Method::POST,
            |_| "/admin/v1/keys".into(),
            Some(json!({"role": "member"})),
            [403, 201, 201, 201],
        ),
        (
            "create viewer key",
            Method::POST,
            |_| "/admin/v1/keys".into(),
            Some(json!({"role": "viewer"})),
            [403, 201, 201, 201],
        ),
        (
            "create admin key",
            Method::POST,
            |_| "/admin/v1/keys".into(),
            Some(json!({"role": "admin"})),
            [403, 403, 201, 201],
        ),
        (
            "create owner key",
            Method::POST,
            |_| "/admin/v1/keys".into(),
            Some(json!({"role": "owner"})),
            [403, 403, 403, 201],
        ),
        (
            "create agent key",
            Method::POST,
            |_| "/admin/v1/keys".into(),
            Some(json!({"agent": "site-b"})),
            [403, 403, 201, 201],
        ),
        (
            "read another's key",
            Method::GET,
            |t| format!("/admin/v1/keys/{}", t.member_key),
            None,
            [403, 404, 200, 200],
        ),
        (
            "change a member's role",
            Method::PATCH,
            |t| format!("/admin/v1/keys/{}", t.member_key),
            Some(json!({"role": "viewer"})),
            [403, 403, 200, 200],
        ),
        (
            "demote an owner",
            Method::PATCH,
            |t| format!("/admin/v1/keys/{}", t.owner_key),
            Some(json!({"role": "admin"})),
            [403, 403, 403, 200],
        ),
        (
            "rotate another's key",
            Method::POST,
            |t| format!("/admin/v1/keys/{}/rotate", t.rotate_key),
            Some(json!({"overlap_seconds": 60})),
            [403, 404, 201, 201],
        ),
        (
            "revoke another's key",
            Method::POST,
            |t| format!("/admin/v1/keys/{}/revoke", t.revoke_key),
            None,
            [403, 404, 200, 200],
        ),
        (
            "read audit",
            Method::GET,
            |_| "/admin/v1/audit?after=0&limit=10".into(),
            None,
            [403, 403, 200, 200],
        ),
        (
            "verify audit",
            Method::GET,
            |_| "/admin/v1/audit/verify".into(),
            None,
            [403, 403, 200, 200],
        ),
        (
            "rename organisation",
            Method::PATCH,
            |_| "/admin/v1/organisation".into(),
            Some(json!({"name": "acme-renamed"})),
            [403, 403, 403, 200],
        ),
    ];
    let mut failures = Vec::new();
    for (column, role) in ROLES.iter().enumerate() {
        let actor = relay.key_with(&org, role, Scopes::default()).await?;
        let targets = targets(&relay, &owner).await;
        for (name, method, path, body, expected) in &table {
            let path = path(&targets);
            let (status, headers, answer) = relay
                .admin(method.clone(), &path, &actor, body.clone())
                .await?;
            if status != expected[column] {
                failures.push(format!(
                    "{role} {name}: {method} {path} gave {status}, expected {} ({answer})",
                    expected[column]
                ));
            }
            if status >= 400 {
                assert!(answer["correlation_id"].is_string(), "{answer}");
                assert!(headers.contains_key("x-correlation-id"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A member manages its own keys, and cannot reach beyond its own scopes.
    let member = relay
        .key_with(
            &org,
            "member",
            Scopes {
                servers: vec!["site/*".into()],
                tools: vec![],
            },
        )
        .await?;
    let (status, _, created) = relay
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &member,
            Some(json!({"scopes": ["site/files"]})),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let own = created["key"]["id"].as_str().unwrap().to_owned();
    let (status, _, listed) = relay
        .admin(Method::GET, "/admin/v1/keys", &member, None)
        .await?;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&own.as_str()), "{ids:?}");
    assert!(!ids.contains(&targets(&relay, &owner).await.member_key.as_str()));
    let (status, _, _) = relay
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{own}/revoke"),
            &member,
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _, _) = relay
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &member,
            Some(json!({"scopes": ["*/*"]})),
        )
        .await?;
    assert_eq!(status, 403, "a member widened its own scope");

    // An admin demoted to member cannot rotate its way back: the admin and agent keys it
    // made are no longer its to manage.
    let admin = relay.key_with(&org, "admin", Scopes::default()).await?;
    let made_admin = key_id(&relay, &admin, json!({"role": "admin"})).await;
    let made_agent = key_id(&relay, &admin, json!({"agent": "site-c"})).await;
    let admin_id = outpost_relay::auth::parse(
        &admin,
        outpost_relay::auth::KeyKind::Client,
        outpost_relay::auth::Environment::Live,
    )?;
    let (status, _, _) = relay
        .admin(
            Method::PATCH,
            &format!("/admin/v1/keys/{}", admin_id.0),
            &owner,
            Some(json!({"role": "member"})),
        )
        .await?;
    assert_eq!(status, 200);
    for target in [&made_admin, &made_agent] {
        let (status, _, answer) = relay
            .admin(
                Method::POST,
                &format!("/admin/v1/keys/{target}/rotate"),
                &admin,
                None,
            )
            .await?;
        assert_eq!(status, 404, "a demoted admin rotated {target}: {answer}");
    }

    // No key is 401, distinct from 403.
    let (status, headers, _) = relay
        .admin(Method::GET, "/admin/v1/keys", "nope", None)
        .await?;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisations_neither_see_nor_reach_each_other() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let org_a = relay.org_id().to_owned();
    let owner_a = relay.key_with(&org_a, "owner", Scopes::default()).await?;
    let org_b = relay.organisation("globex").await?;
    let owner_b = relay.key_with(&org_b, "owner", Scopes::default()).await?;

    // Org A has an agent with a server, keys and usage.
    let site = agent(&relay, "site")
        .server_everything("everything")
        .spawn()
        .await?;
    let client_a = relay.client_key().await?;
    let mut mcp = relay.mcp_client(&client_a, "site", "everything");
    mcp.initialize().await?;
    mcp.call_tool("echo", json!({"message": "a"})).await?;
    relay.wait_for_usage(2).await?;
    let a_key = key_id(
        &relay,
        &owner_a,
        json!({"role": "member", "name": "a-secret-project"}),
    )
    .await;

    // Every endpoint, as org B.
    for path in [
        format!("/admin/v1/keys/{a_key}"),
        format!("/admin/v1/keys/{a_key}/revoke"),
        format!("/admin/v1/keys/{a_key}/rotate"),
    ] {
        let method = if path.ends_with(&a_key) {
            Method::GET
        } else {
            Method::POST
        };
        let (status, _, answer) = relay.admin(method.clone(), &path, &owner_b, None).await?;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (status, _, _) = relay
        .admin(
            Method::PATCH,
            &format!("/admin/v1/keys/{a_key}"),
            &owner_b,
            Some(json!({"role": "viewer"})),
        )
        .await?;
    assert_eq!(status, 404);
    let (_, _, org) = relay
        .admin(Method::GET, "/admin/v1/organisation", &owner_b, None)
        .await?;
    assert_eq!(org["name"], "globex");
    let (_, _, keys) = relay
        .admin(Method::GET, "/admin/v1/keys", &owner_b, None)
        .await?;
    let text = keys.to_string();
    assert!(
        !text.contains(&a_key) && !text.contains("a-secret-project"),
        "{text}"
    );
    let (_, _, agents) = relay
        .admin(Method::GET, "/admin/v1/agents", &owner_b, None)
        .await?;
    assert_eq!(agents["agents"], json!([]), "{agents}");
    let (_, _, usage) = relay
        .admin(
            Method::GET,
            "/admin/v1/usage?since=1h&by=agent",
            &owner_b,
            None,
        )
        .await?;
    assert_eq!(usage["rows"], json!([]), "{usage}");
    let (_, _, audit) = relay
        .admin(
            Method::GET,
            "/admin/v1/audit?after=0&limit=1000",
            &owner_b,
            None,
        )
        .await?;
    for event in audit["events"].as_array().unwrap() {
        assert_eq!(event["org_id"], json!(org_b), "{event}");
    }
    // And org A does see its own.
    let (_, _, agents) = relay
        .admin(Method::GET, "/admin/v1/agents", &owner_a, None)
        .await?;
    assert_eq!(agents["agents"][0]["name"], "site");
    assert_eq!(agents["agents"][0]["connected"], true);

    // MCP: org B's key cannot reach org A's agent.
    let client_b = relay.key_with(&org_b, "member", Scopes::default()).await?;
    let mut other = relay.mcp_client(&client_b, "site", "everything");
    let err = other.initialize().await.unwrap_err().to_string();
    assert!(
        err.contains("-32010") || err.contains("not connected"),
        "{err}"
    );
    site.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle_revoke_rotate_expire() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let org = relay.org_id().to_owned();
    let owner = relay.key_with(&org, "owner", Scopes::default()).await?;
    let site = agent(&relay, "site")
        .server_everything("everything")
        .spawn()
        .await?;

    // Created: the secret once; listed: never.
    let (status, _, created) = relay
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &owner,
            Some(json!({"name": "ci", "plan": "small"})),
        )
        .await?;
    assert_eq!(status, 201);
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["key"]["rate_per_second"], 10);
    let (_, _, listed) = relay
        .admin(Method::GET, "/admin/v1/keys", &owner, None)
        .await?;
    assert!(!listed.to_string().contains(&secret[8..]));

    // Used: last use recorded.
    let mut mcp = relay.mcp_client(&secret, "site", "everything");
    mcp.initialize().await?;
    let mut last_used = Value::Null;
    for _ in 0..50 {
        let (_, _, key) = relay
            .admin(Method::GET, &format!("/admin/v1/keys/{id}"), &owner, None)
            .await?;
        last_used = key["last_used_at"].clone();
        if last_used.is_i64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last_used.is_i64(), "last use not recorded");

    // Rotated with an overlap: both work, the old one says it is going away.
    let (status, _, rotated) = relay
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{id}/rotate"),
            &owner,
            Some(json!({"overlap_seconds": 2})),
        )
        .await?;
    assert_eq!(status, 201, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let response = mcp.call_tool("echo", json!({"message": "old"})).await?;
    assert!(response.result().is_ok());
    assert!(
        response.headers.contains_key("sunset"),
        "{:?}",
        response.headers
    );
    assert_eq!(
        response.headers["outpost-key-replaced-by"],
        rotated["key"]["id"].as_str().unwrap()
    );
    let (_, _, old) = relay
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), &owner, None)
        .await?;
    assert_eq!(old["state"], "rotating");
    let mut fresh = relay.mcp_client(&new_secret, "site", "everything");
    fresh.initialize().await?;
    // After the overlap, the old key is refused.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let refused = mcp.call_tool("echo", json!({"message": "late"})).await?;
    assert_eq!(refused.status, 401);
    assert!(
        fresh
            .call_tool("echo", json!({"message": "new"}))
            .await?
            .result()
            .is_ok()
    );

    // Revoked: refused on the very next request.
    let (status, _, _) = relay
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/keys/{}/revoke",
                rotated["key"]["id"].as_str().unwrap()
            ),
            &owner,
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        fresh
            .call_tool("echo", json!({"message": "x"}))
            .await?
            .status,
        401
    );

    // Revoking an agent key closes its tunnel at once.
    let (_, _, keys) = relay
        .admin(Method::GET, "/admin/v1/keys", &owner, None)
        .await?;
    let agent_key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "agent")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut site = site;
    relay
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{agent_key}/revoke"),
            &owner,
            None,
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(2), site.wait_disconnected()).await??;

    // The trail has every step.
    let (_, _, audit) = relay
        .admin(
            Method::GET,
            "/admin/v1/audit?after=0&limit=1000",
            &owner,
            None,
        )
        .await?;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "key.created",
        "key.rotated",
        "key.revoked",
        "agent.connected",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let (_, _, verified) = relay
        .admin(Method::GET, "/admin/v1/audit/verify", &owner, None)
        .await?;
    assert_eq!(verified["intact"], true, "{verified}");
    site.stop().await;
    relay.stop().await;
    Ok(())
}

/// A new key names at most as many patterns as the OpenAPI document's `maxItems` allow,
/// through the API as well as in `check_counts`' unit test
/// (`a_keys_patterns_are_bounded_as_the_openapi_document_says`); the refusal is a 400 that
/// says why, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_naming_more_patterns_than_the_document_allows_is_refused() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let owner = relay
        .key_with(relay.org_id(), "owner", Scopes::default())
        .await?;
    let scopes = |n: usize| (0..n).map(|i| format!("site/s{i}")).collect::<Vec<_>>();
    let tools = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
    let keys_before = relay
        .admin(Method::GET, "/admin/v1/keys", &owner, None)
        .await?
        .2["keys"]
        .as_array()
        .map_or(0, Vec::len);
    for (body, limit) in [
        (json!({"scopes": scopes(65)}), "at most 64 scopes"),
        (
            json!({"scopes": scopes(1), "tools": tools(257)}),
            "256 tool patterns",
        ),
    ] {
        let (status, _, refused) = relay
            .admin(Method::POST, "/admin/v1/keys", &owner, Some(body))
            .await?;
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(limit),
            "{refused}"
        );
    }
    let (_, _, listed) = relay
        .admin(Method::GET, "/admin/v1/keys", &owner, None)
        .await?;
    assert_eq!(listed["keys"].as_array().map_or(0, Vec::len), keys_before);
    key_id(
        &relay,
        &owner,
        json!({"scopes": scopes(64), "tools": tools(256)}),
    )
    .await;
    relay.stop().await;
    Ok(())
}
