//! What an auditor's TLS scanner finds at the relay's listener. `sslyze` (installed by
//! `scripts/setup-tools.sh`) scans the `outpost-relay` binary, which serves a full chain
//! (leaf and intermediate) as a public CA issues it, and the test asserts on its JSON report:
//! SSL 2.0, SSL 3.0, TLS 1.0, 1.1 and 1.2 are refused, TLS 1.3 is accepted with exactly the
//! three AEAD suites (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305) and an ephemeral ECDH key
//! exchange, and the certificates sent are the configured chain, in order, which a strict
//! verifier validates up to the root.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use outpost_test_support::{Certs, Process, binary, python};
use serde_json::Value;

/// The TLS 1.3 suites the relay must offer: all AEAD, none of the CCM ones.
const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// sslyze's scan commands for the protocol versions that must be refused, by JSON key.
const REFUSED: [(&str, &str); 5] = [
    ("ssl_2_0_cipher_suites", "SSL 2.0"),
    ("ssl_3_0_cipher_suites", "SSL 3.0"),
    ("tls_1_0_cipher_suites", "TLS 1.0"),
    ("tls_1_1_cipher_suites", "TLS 1.1"),
    ("tls_1_2_cipher_suites", "TLS 1.2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslyze_finds_only_tls13_aead_suites_and_the_full_chain() -> anyhow::Result<()> {
    let certs = Certs::with_intermediate()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            dir.path().join("data"),
            certs.cert,
            certs.key
        ),
    )?;
    let pepper = "p".repeat(40);
    let mut relay = Process::spawn(
        &binary("outpost-relay"),
        &["--config", config.to_str().unwrap(), "serve"],
        &[("OUTPOST_PEPPER", pepper.as_str())],
    )?;
    let line = relay.wait_for("listening on").await?;
    let port = line.rsplit(':').next().unwrap().trim().to_owned();

    let report = dir.path().join("sslyze.json");
    let scan = sslyze(&report, &certs.ca, &port).await?;
    let json: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let server = &json["server_scan_results"][0];
    assert_eq!(
        server["connectivity_status"], "COMPLETED",
        "sslyze could not connect: {}\n{scan}",
        server["connectivity_error_trace"]
    );
    assert_eq!(server["scan_status"], "COMPLETED", "{scan}");
    let results = &server["scan_result"];
    let check = |key: &str| -> &Value {
        let attempt = &results[key];
        assert_eq!(
            attempt["status"], "COMPLETED",
            "sslyze's {key} scan did not complete: {}",
            attempt["error_trace"]
        );
        &attempt["result"]
    };

    // Every old version is refused, and sslyze really tried: it lists suites it offered.
    for (key, version) in REFUSED {
        let result = check(key);
        assert_eq!(result["is_tls_version_supported"], false, "{version}");
        assert_eq!(
            result["accepted_cipher_suites"].as_array().map(Vec::len),
            Some(0),
            "{version} suites accepted: {}",
            result["accepted_cipher_suites"]
        );
        let tried = result["rejected_cipher_suites"]
            .as_array()
            .map_or(0, Vec::len);
        assert!(tried > 0, "sslyze offered no {version} suite");
        println!("refused: {version} ({tried} suites offered, none accepted)");
    }

    // TLS 1.3 with exactly the AEAD suites, each with an ephemeral ECDH key exchange.
    let tls13 = check("tls_1_3_cipher_suites");
    assert_eq!(tls13["is_tls_version_supported"], true);
    let accepted = tls13["accepted_cipher_suites"].as_array().unwrap();
    let names: BTreeSet<&str> = accepted
        .iter()
        .map(|s| s["cipher_suite"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(TLS13_SUITES),
        "TLS 1.3 suites accepted"
    );
    for suite in accepted {
        let name = suite["cipher_suite"]["name"].as_str().unwrap();
        assert!(
            name.contains("_GCM_") || name.contains("_CHACHA20_POLY1305_"),
            "{name} is not an AEAD suite"
        );
        assert_eq!(suite["ephemeral_key"]["type_name"], "ECDH", "{name}");
    }
    println!("accepted: TLS 1.3 only, suites {names:?}, all AEAD with ephemeral ECDH");

    // The chain served is the configured one, leaf first, and validates up to the root.
    let info = check("certificate_info");
    let deployment = &info["certificate_deployments"][0];
    let served: Vec<String> = deployment["received_certificate_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| normalise_pem(c["as_pem"].as_str().unwrap()))
        .collect();
    let configured = pem_blocks(&std::fs::read_to_string(&certs.cert)?);
    assert_eq!(
        configured.len(),
        2,
        "the test's chain is leaf + intermediate"
    );
    assert_eq!(
        served, configured,
        "the relay must send its whole configured chain, in order"
    );
    assert_eq!(deployment["received_chain_has_valid_order"], true);
    assert_eq!(
        deployment["received_chain_contains_anchor_certificate"],
        false
    );
    let leaf = &deployment["received_certificate_chain"][0];
    assert_eq!(
        leaf["subject_alternative_name"]["dns_names"],
        serde_json::json!(["localhost"])
    );
    assert_eq!(
        leaf["subject_alternative_name"]["ip_addresses"],
        serde_json::json!(["127.0.0.1", "::1"])
    );
    let ours = deployment["path_validation_results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trust_store"]["name"] == "Supplied CA file")
        .expect("a validation against --certinfo_ca_file");
    assert_eq!(
        ours["was_validation_successful"], true,
        "strict validation against the root failed: {}",
        ours["validation_error"]
    );
    assert_eq!(
        ours["verified_certificate_chain"].as_array().map(Vec::len),
        Some(3),
        "leaf, intermediate, root"
    );
    println!(
        "certificate: chain of {} sent in order (leaf for localhost, 127.0.0.1, ::1; intermediate), \
         validates strictly to the root",
        served.len()
    );

    assert_eq!(relay.terminate().await?, Some(0));
    Ok(())
}

/// Runs sslyze against `localhost:PORT` on 127.0.0.1 (so SNI carries the name an agent
/// uses) with every protocol scan and the certificate scan; returns its console output.
async fn sslyze(report: &Path, ca: &Path, port: &str) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(python());
    command
        .args(["-m", "sslyze", "--quiet"])
        .arg(format!("--json_out={}", report.display()))
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--certinfo",
        ])
        .arg(format!("--certinfo_ca_file={}", ca.display()))
        .arg(format!("localhost:{port}{{127.0.0.1}}"))
        // cryptography warns about certificates in sslyze's bundled trust stores.
        .env("PYTHONWARNINGS", "ignore")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("sslyze took longer than 90 s"))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "sslyze failed ({}): {text}\n(is it installed? scripts/setup-tools.sh installs tools/requirements.txt)",
        output.status
    );
    Ok(text)
}

/// The certificates of a PEM file, each normalised.
fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .map(normalise_pem)
        .collect()
}

/// One certificate's base64 body, without headers or line breaks.
fn normalise_pem(pem: &str) -> String {
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect()
}
