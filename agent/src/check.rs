//! `outpost-agent check`: walks the path to the relay one step at a time (name lookup,
//! TCP, the proxy's CONNECT, the TLS 1.3 handshake, the pin, the key) and stops at the
//! first failure with the rule that would fix it. The key check upgrades the WebSocket and
//! closes it before the hello, so the relay registers nothing and a running agent with the
//! same key keeps its tunnel.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::config::Config;
use crate::tunnel::dial::{self, DialError, Target};

/// The result of one step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Short name of the step.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// What would fix a failure.
    pub fix: Option<String>,
}

/// Runs every step until one fails; `report` sees each as it completes. Returns whether
/// all passed.
pub async fn run(config: &Config, tls: Arc<ClientConfig>, mut report: impl FnMut(&Step)) -> bool {
    let timeout = config.tunnel.connect_timeout;
    let target = Target::of(&config.relay_url);
    let mut ok = |step: &'static str, detail: String| {
        report(&Step {
            name: step,
            ok: true,
            detail,
            fix: None,
        });
    };
    // Which host this machine must reach itself: the proxy, or else the relay.
    let (first_host, first_port) = match &config.proxy {
        Some(proxy) => (proxy.host.clone(), proxy.port),
        None => (target.host.clone(), target.port),
    };
    let what = if config.proxy.is_some() {
        "the proxy"
    } else {
        "the relay"
    };

    // 1. Name lookup.
    let addrs = match within(
        timeout,
        tokio::net::lookup_host((first_host.as_str(), first_port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(err)) => {
            return fail(
                &mut report,
                "resolve",
                format!("cannot resolve {first_host}: {err}"),
                format!(
                    "Allow DNS (UDP and TCP port 53) from this host to its resolver, or check the name of {what} `{first_host}`."
                ),
            );
        }
        Err(()) => {
            return fail(
                &mut report,
                "resolve",
                format!("no answer for {first_host} within {timeout:?}"),
                "Allow DNS (UDP and TCP port 53) from this host to its resolver.".into(),
            );
        }
    };
    let listed = addrs
        .iter()
        .map(|a| a.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    ok("resolve", format!("{first_host} is {listed}"));

    // 2. TCP.
    let mut tcp = match within(timeout, dial::connect_tcp(&first_host, first_port)).await {
        Ok(Ok(tcp)) => tcp,
        outcome => {
            let seen = match outcome {
                Ok(Err(err)) => err.to_string(),
                _ => format!("no TCP answer from {first_host}:{first_port} within {timeout:?}"),
            };
            let rules = addrs
                .iter()
                .map(|a| {
                    let table = if a.is_ipv6() { "ip6tables" } else { "iptables" };
                    format!(
                        "{table} -A OUTPUT -p tcp -d {} --dport {first_port} -j ACCEPT",
                        a.ip()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let alternative = if config.proxy.is_some() {
                ""
            } else {
                " If this network allows the web only through a proxy, set `proxy` (or HTTPS_PROXY)."
            };
            return fail(
                &mut report,
                "tcp",
                seen,
                format!(
                    "Allow egress TCP from this host to {what} {first_host} port {first_port}: {rules}.{alternative}"
                ),
            );
        }
    };
    ok(
        "tcp",
        format!(
            "connected to {}",
            tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default()
        ),
    );

    // 3. The proxy's CONNECT.
    if let Some(proxy) = &config.proxy {
        match within(timeout, dial::proxy_connect(&mut tcp, proxy, &target)).await {
            Ok(Ok(())) => ok(
                "proxy",
                format!(
                    "{}:{} (from {}) opened a tunnel to {target}",
                    proxy.host, proxy.port, proxy.source
                ),
            ),
            Ok(Err(err)) => {
                let fix = match &err {
                    DialError::ProxyRefused { status: 407, .. } => format!(
                        "The proxy wants credentials: put the user in `proxy` (http://USER@{}:{}) and the password in `proxy_password` (a ${{env:}} or ${{file:}} reference).",
                        proxy.host, proxy.port
                    ),
                    DialError::ProxyRefused { status: 403, .. } => format!(
                        "The proxy's policy forbids {target}. Ask its admin to allow CONNECT to {} port {}; for squid: `acl outpost_relay dstdomain {}` and `http_access allow CONNECT outpost_relay` before the deny rules.",
                        target.host, target.port, target.host
                    ),
                    _ => "Check that the proxy speaks HTTP CONNECT on this port.".into(),
                };
                return fail(&mut report, "proxy", err.to_string(), fix);
            }
            Err(()) => {
                return fail(
                    &mut report,
                    "proxy",
                    format!("the proxy did not answer CONNECT within {timeout:?}"),
                    "Check that the proxy speaks HTTP CONNECT on this port and can reach the relay.".into(),
                );
            }
        }
    }

    // 4. TLS and the pin.
    let tls_stream = match within(timeout, dial::tls_handshake(tcp, tls, &target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            let text = err.to_string();
            return fail(&mut report, "tls", text.clone(), tls_fix(&text, &target));
        }
        Err(()) => {
            return fail(
                &mut report,
                "tls",
                format!("no TLS answer within {timeout:?}"),
                format!(
                    "Something between here and {target} accepts TCP but does not answer TLS: check for a transparent proxy."
                ),
            );
        }
    };
    let (_, session) = tls_stream.get_ref();
    let pin = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| dial::spki_pin(cert))
        .map(|pin| dial::pin_text(&pin))
        .unwrap_or_default();
    let suite = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let leaf_pinned = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| dial::spki_pin(cert))
        .is_some_and(|leaf| config.relay_pins.contains(&leaf));
    let pinned = if config.relay_pins.is_empty() {
        "not pinned"
    } else if leaf_pinned {
        "matches a configured pin"
    } else {
        "no pin matched"
    };
    ok(
        "tls",
        format!("TLS 1.3 ({suite}); relay key pin {pin} ({pinned})"),
    );

    // 5. The key.
    match within(
        timeout,
        dial::upgrade(tls_stream, &config.relay_url, &config.key),
    )
    .await
    {
        Ok(Ok(mut socket)) => {
            let _ = socket.close(None).await;
            ok("key", "the relay accepted the agent key".into());
            true
        }
        Ok(Err(err)) => {
            let fix = match &err {
                DialError::Refused { status: 401 } => {
                    "The relay refused the key: check OUTPOST_AGENT_KEY or key_file. It may be revoked or expired; an admin can list keys with `outpost-relay keys list`.".to_owned()
                }
                _ => format!("Check that {target} is an Outpost relay and that nothing between here and it rewrites HTTP."),
            };
            fail(&mut report, "key", err.to_string(), fix)
        }
        Err(()) => fail(
            &mut report,
            "key",
            format!("the relay did not answer the upgrade within {timeout:?}"),
            "Check that the relay is healthy (its /readyz).".into(),
        ),
    }
}

fn tls_fix(error: &str, target: &Target) -> String {
    let host = &target.host;
    if error.contains("matches no pin") {
        format!(
            "The key {host} presented is not the pinned one. If a TLS-inspecting proxy or firewall sits in the path, exempt {host} from inspection; if the relay's key was rotated, add its new pin to relay_spki_sha256."
        )
    } else if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        format!(
            "The relay's certificate is not signed by a trusted CA. If a middlebox inspects TLS, exempt {host} from inspection; otherwise set ca_file to the CA that issued the relay's certificate."
        )
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        format!(
            "The certificate does not name {host}: set relay_url to a name the certificate covers, or reissue it."
        )
    } else if error.contains("Expired")
        || error.contains("expired")
        || error.contains("NotValidYet")
    {
        "The relay's certificate is expired or not yet valid, or this host's clock is wrong (check NTP).".into()
    } else if error.contains("ProtocolVersion") || error.contains("protocol version") {
        format!(
            "The server at {target} does not offer TLS 1.3, which the agent requires. Upgrade it, or check that a middlebox is not downgrading TLS."
        )
    } else {
        format!("Check that {target} is the relay and serves TLS 1.3.")
    }
}

fn fail(report: &mut impl FnMut(&Step), name: &'static str, detail: String, fix: String) -> bool {
    report(&Step {
        name,
        ok: false,
        detail,
        fix: Some(fix),
    });
    false
}

async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Result<T, ()> {
    tokio::time::timeout(limit, future).await.map_err(|_| ())
}
