//! schemathesis (PyPI) fuzzes the admin API from the OpenAPI document the relay serves,
//! as an owner, with every check it has: no server error, and every status, content type,
//! header and body as the document says. The document in the repository is the one the
//! relay serves, and names every route it has.

use outpost_relay::store::Scopes;
use outpost_test_support::{Process, relay, tools_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_admin_api() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let owner = relay
        .key_with(relay.org_id(), "owner", Scopes::default())
        .await?;
    let dir = tempfile::tempdir()?;
    // The key reaches schemathesis through its environment, not its argv.
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "headers = { Authorization = \"Bearer ${OUTPOST_TEST_ADMIN_KEY}\" }\n",
    )?;
    let base = relay.base_url();
    let schema = format!("{base}/admin/v1/openapi.json");
    let ca = relay.state.certs.ca.to_str().unwrap().to_owned();
    let report = dir.path().join("junit.xml");
    let st = tools_dir().join("venv/bin/st");
    let mut run = Process::spawn(
        &st,
        &[
            "--config-file",
            config.to_str().unwrap(),
            "run",
            &schema,
            "--url",
            &base,
            "--tls-verify",
            &ca,
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--max-time",
            "60",
            "--seed",
            "20261124",
            // One worker: hypothesis's lambda-source cache is not thread-safe and
            // reports its own errors with two.
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-junit-path",
            report.to_str().unwrap(),
        ],
        &[
            ("OUTPOST_TEST_ADMIN_KEY", owner.as_str()),
            ("NO_COLOR", "1"),
        ],
    )?;
    let code = run.wait_within(std::time::Duration::from_secs(240)).await?;
    let output = run.output();
    assert_eq!(code, Some(0), "schemathesis found problems:\n{output}");
    assert!(output.contains("passed"), "{output}");
    relay.stop().await;
    Ok(())
}

#[test]
fn the_served_document_names_every_admin_route() {
    let document: serde_json::Value =
        serde_json::from_str(outpost_relay::admin::OPENAPI).expect("the document is JSON");
    let paths = document["paths"].as_object().unwrap();
    let source = include_str!("../../relay/src/admin.rs");
    let routes_fn = &source[source.find("fn routes()").unwrap()..];
    let routes_fn = &routes_fn[..routes_fn.find("\n}\n").unwrap()];
    let routes: Vec<&str> = routes_fn
        .split('"')
        .filter(|s| s.starts_with("/admin/v1"))
        .collect();
    for route in &routes {
        assert!(
            paths.contains_key(*route),
            "{route} is not in docs/openapi/admin-v1.json"
        );
    }
    assert_eq!(
        paths.len(),
        routes.len(),
        "the document names routes the relay does not serve"
    );
}
