//! The load generator's MCP client, 2025 protocol era (MCP 2025-06-18): `initialize` and the
//! `Mcp-Session-Id` header, then `tools/call` POSTs with unique JSON-RPC ids, answers read as
//! JSON or as an SSE stream, checked (matching id, a result that is not an error). Owns the
//! HTTP client of one target; does not time anything (see `load.rs`).
//!
//! The 2026-07-28 era (stateless requests with `_meta` and `Mcp-Method`/`Mcp-Name` headers)
//! is not served by the relay yet, so it is not generated here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One MCP endpoint and the HTTP client that reaches it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    http: reqwest::Client,
    url: Arc<str>,
    /// `Authorization: Bearer` value, for the relay.
    key: Option<Arc<str>>,
}

/// The tool call a load runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    /// `echo` with a 16-byte message.
    Echo,
    /// `big`, returning this many bytes.
    Big(usize),
}

/// An initialized MCP session on one endpoint.
#[derive(Debug)]
pub(crate) struct Session {
    endpoint: Endpoint,
    headers: HeaderMap,
    next_id: u64,
}

impl Endpoint {
    /// An endpoint at `url`; trusts `ca` (PEM) in addition to nothing else when given.
    pub(crate) fn new(url: String, key: Option<String>, ca: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(None)
            .timeout(REQUEST_TIMEOUT);
        if let Some(ca) = ca {
            builder = builder.use_preconfigured_tls(tls_client_config(ca)?);
        }
        Ok(Self {
            http: builder.build()?,
            url: url.into(),
            key: key.map(Into::into),
        })
    }

    /// Opens and initializes a session.
    pub(crate) async fn session(&self) -> anyhow::Result<Session> {
        let mut session = Session {
            endpoint: self.clone(),
            headers: HeaderMap::new(),
            next_id: 1,
        };
        session.initialize().await?;
        Ok(session)
    }
}

impl Session {
    /// Calls the tool once; returns the size of the HTTP body received.
    pub(crate) async fn call(&mut self, call: Call) -> anyhow::Result<usize> {
        let id = self.next_id;
        self.next_id += 1;
        let body = match call {
            Call::Echo => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"sixteen bytes!!!"}}}}}}"#
            ),
            Call::Big(bytes) => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"big","arguments":{{"bytes":{bytes}}}}}}}"#
            ),
        };
        let (body, sse) = self.post(body).await?;
        answer(&body, sse, id)?;
        Ok(body.len())
    }

    /// Ends the session (DELETE); errors are ignored, the target may not support it.
    pub(crate) async fn close(self) {
        let mut request = self
            .endpoint
            .http
            .delete(&*self.endpoint.url)
            .headers(self.headers.clone());
        if let Some(key) = &self.endpoint.key {
            request = request.bearer_auth(key);
        }
        let _ = request.send().await;
    }

    async fn initialize(&mut self) -> anyhow::Result<()> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"outpost-bench","version":"1"}}}}}}"#
        );
        let response = self.send(body).await?;
        if let Some(session) = response.headers().get("mcp-session-id") {
            self.headers.insert("mcp-session-id", session.clone());
        }
        let sse = is_sse(response.headers());
        let body = response.bytes().await?;
        answer(&body, sse, 0).context("initialize")?;
        self.headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static(PROTOCOL_VERSION),
        );
        let response = self
            .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned())
            .await?;
        ensure!(
            response.status().is_success(),
            "notifications/initialized answered {}",
            response.status()
        );
        Ok(())
    }

    async fn post(&self, body: String) -> anyhow::Result<(bytes::Bytes, bool)> {
        let response = self.send(body).await?;
        let sse = is_sse(response.headers());
        Ok((response.bytes().await?, sse))
    }

    async fn send(&self, body: String) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .endpoint
            .http
            .post(&*self.endpoint.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .headers(self.headers.clone())
            .body(body);
        if let Some(key) = &self.endpoint.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
        }
        Ok(response)
    }
}

/// Checks the message answering `id`, from a JSON body or an SSE stream: a result that is
/// not a tool error.
fn answer(body: &[u8], sse: bool, id: u64) -> anyhow::Result<()> {
    if !sse {
        return check(serde_json::from_slice(body)?, id);
    }
    let mut data: Vec<u8> = Vec::new();
    // Events end with a blank line; `data:` lines of one event join with '\n'.
    for line in body.split(|b| *b == b'\n').chain(std::iter::once(&b""[..])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !data.is_empty() {
                let message: Message<'_> = serde_json::from_slice(&data)?;
                if message.id.is_some() {
                    return check(message, id);
                }
                data.clear();
            }
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    bail!("no answer in the SSE stream")
}

fn check(message: Message<'_>, id: u64) -> anyhow::Result<()> {
    ensure!(
        message.id.as_ref().and_then(serde_json::Value::as_u64) == Some(id),
        "answer to another id: {:?}",
        message.id
    );
    match (message.result, message.error) {
        (Some(result), _) => {
            let tool: ToolResult = serde_json::from_str(result.get()).context("result")?;
            ensure!(
                !tool.is_error.unwrap_or(false),
                "the tool reported an error"
            );
            Ok(())
        }
        (None, Some(error)) => bail!("JSON-RPC error: {error}"),
        (None, None) => bail!("neither result nor error"),
    }
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A JSON-RPC message, with its result left unparsed.
#[derive(Deserialize)]
struct Message<'a> {
    id: Option<serde_json::Value>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

/// TLS 1.3 only, trusting exactly the certificates in `ca`.
pub(crate) fn tls_client_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

const PROTOCOL_VERSION: &str = "2025-06-18";
/// No single call may take longer; a stuck target fails the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
