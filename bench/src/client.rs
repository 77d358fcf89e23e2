//! The load generator's MCP client, in both protocol eras:
//!
//! - 2025 (MCP 2025-06-18): `initialize` and the `Mcp-Session-Id` header, then `tools/call`
//!   POSTs; sessions end with DELETE.
//! - 2026 (MCP 2026-07-28): stateless POSTs, no session. Every request carries the `_meta`
//!   envelope (protocol version, client capabilities, client info) and the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers that repeat the body; a
//!   caller starts with `server/discover`, which must name 2026-07-28.
//!
//! JSON-RPC ids are unique per endpoint; answers are read as JSON or as an SSE stream and
//! checked (matching id, a result that is not a tool error, and in the 2026 era
//! `resultType: "complete"`). Owns the HTTP client of one target; does not time anything
//! (see `load.rs`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

/// One MCP endpoint and the HTTP client that reaches it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    http: reqwest::Client,
    url: Arc<str>,
    /// `Authorization: Bearer` value, for the relay.
    key: Option<Arc<str>>,
    /// Which protocol era the target is spoken to in.
    era: Era,
    /// The next JSON-RPC id: shared by every caller, so ids never repeat on one endpoint.
    next_id: Arc<AtomicU64>,
}

/// The MCP protocol era a target is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Era {
    /// MCP 2025-06-18: initialize, then requests in an `Mcp-Session-Id` session.
    Sessions,
    /// MCP 2026-07-28: stateless requests, each with its `_meta` envelope.
    Stateless,
}

impl Era {
    /// The era's name in tables and JSON: the year of its revisions.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Era::Sessions => "2025",
            Era::Stateless => "2026",
        }
    }
}

/// The tool call a load runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    /// `echo` with a 16-byte message.
    Echo,
    /// `big`, returning this many bytes.
    Big(usize),
}

/// One caller on an endpoint: in the 2025 era an initialized MCP session, in the 2026 era a
/// caller that has discovered the server (the server keeps nothing for it).
#[derive(Debug)]
pub(crate) struct Session {
    endpoint: Endpoint,
    /// Sent with every request: the session id and protocol version (2025), the protocol
    /// version (2026).
    headers: HeaderMap,
}

impl Endpoint {
    /// An endpoint at `url`; trusts `ca` (PEM) in addition to nothing else when given.
    pub(crate) fn new(
        url: String,
        key: Option<String>,
        ca: Option<&Path>,
        era: Era,
    ) -> anyhow::Result<Self> {
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
            era,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// The era this endpoint is spoken to in.
    pub(crate) fn era(&self) -> Era {
        self.era
    }

    /// Opens a caller: initializes a session (2025), or discovers the server (2026).
    pub(crate) async fn session(&self) -> anyhow::Result<Session> {
        let mut session = Session {
            endpoint: self.clone(),
            headers: HeaderMap::new(),
        };
        match self.era {
            Era::Sessions => session.initialize().await?,
            Era::Stateless => session.discover().await?,
        }
        Ok(session)
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

impl Session {
    /// Calls the tool once; returns the size of the HTTP body received.
    pub(crate) async fn call(&mut self, call: Call) -> anyhow::Result<usize> {
        let id = self.endpoint.id();
        let (name, arguments) = match call {
            Call::Echo => ("echo", r#"{"message":"sixteen bytes!!!"}"#.to_owned()),
            Call::Big(bytes) => ("big", format!(r#"{{"bytes":{bytes}}}"#)),
        };
        let meta = self.meta();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{arguments}{meta}}}}}"#
        );
        let (body, sse) = self.post(body, "tools/call", Some(name)).await?;
        let tool: ToolResult = answer(&body, sse, id)?;
        ensure!(
            !tool.is_error.unwrap_or(false),
            "the tool reported an error"
        );
        if self.endpoint.era == Era::Stateless {
            ensure!(
                tool.result_type.as_deref() == Some("complete"),
                "resultType {:?}, not \"complete\"",
                tool.result_type
            );
        }
        Ok(body.len())
    }

    /// Ends the session (DELETE; nothing in the 2026 era); errors are ignored, the target
    /// may not support it.
    pub(crate) async fn close(self) {
        if self.endpoint.era == Era::Stateless {
            return;
        }
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
        let _: IgnoredAny = answer(&body, sse, 0).context("initialize")?;
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

    /// The 2026 era's first request: `server/discover`, which must name 2026-07-28.
    async fn discover(&mut self) -> anyhow::Result<()> {
        self.headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static(STATELESS_VERSION),
        );
        let id = self.endpoint.id();
        let meta = self.meta();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"server/discover","params":{{{}}}}}"#,
            meta.trim_start_matches(',')
        );
        let (body, sse) = self.post(body, "server/discover", None).await?;
        let discovery: Discovery = answer(&body, sse, id).context("server/discover")?;
        ensure!(
            discovery
                .supported_versions
                .iter()
                .any(|v| v == STATELESS_VERSION),
            "the server does not speak {STATELESS_VERSION}: {:?}",
            discovery.supported_versions
        );
        Ok(())
    }

    /// What the request's params carry besides their own fields: the 2026 era's `_meta`.
    fn meta(&self) -> &'static str {
        match self.endpoint.era {
            Era::Sessions => "",
            Era::Stateless => STATELESS_META,
        }
    }

    /// POSTs one request; in the 2026 era with the headers that repeat its method and name.
    async fn post(
        &self,
        body: String,
        method: &'static str,
        name: Option<&'static str>,
    ) -> anyhow::Result<(bytes::Bytes, bool)> {
        let mut headers = HeaderMap::new();
        if self.endpoint.era == Era::Stateless {
            headers.insert("mcp-method", HeaderValue::from_static(method));
            if let Some(name) = name {
                headers.insert("mcp-name", HeaderValue::from_static(name));
            }
        }
        let response = self.send_with(body, headers).await?;
        let sse = is_sse(response.headers());
        Ok((response.bytes().await?, sse))
    }

    async fn send(&self, body: String) -> anyhow::Result<reqwest::Response> {
        self.send_with(body, HeaderMap::new()).await
    }

    async fn send_with(&self, body: String, extra: HeaderMap) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .endpoint
            .http
            .post(&*self.endpoint.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .headers(self.headers.clone())
            .headers(extra)
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

/// Finds the message answering `id`, from a JSON body or an SSE stream, and reads its
/// result as `T`; a JSON-RPC error, or an answer to another id, is an error.
fn answer<T: DeserializeOwned>(body: &[u8], sse: bool, id: u64) -> anyhow::Result<T> {
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

fn check<T: DeserializeOwned>(message: Message<'_>, id: u64) -> anyhow::Result<T> {
    ensure!(
        message.id.as_ref().and_then(serde_json::Value::as_u64) == Some(id),
        "answer to another id: {:?}",
        message.id
    );
    match (message.result, message.error) {
        (Some(result), _) => serde_json::from_str(result.get()).context("result"),
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

/// What the load generator checks of a tool's result; the content is skipped.
#[derive(Deserialize)]
struct ToolResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
    /// 2026 era: `complete`, or `input_required` for a Multi Round-Trip Request.
    #[serde(rename = "resultType")]
    result_type: Option<String>,
}

/// What the load generator checks of `server/discover`'s result.
#[derive(Deserialize)]
struct Discovery {
    #[serde(rename = "supportedVersions", default)]
    supported_versions: Vec<String>,
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
/// The stateless revision.
pub(crate) const STATELESS_VERSION: &str = "2026-07-28";
/// The 2026 era's per-request envelope, appended to a request's params: the revision, the
/// client's capabilities (none: the bench answers no input requests) and its info.
const STATELESS_META: &str = r#","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"outpost-bench","version":"1"}}"#;
/// No single call may take longer; a stuck target fails the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
