//! A small MCP Streamable HTTP client for asserting on the wire: it sends exactly the
//! bytes a test gives it and returns every message of the answer, SSE or JSON. The SDK
//! clients (Python, TypeScript) are tested separately; this one shows what the relay does.

use std::time::Duration;

use serde_json::{Value, json};

/// A client of one MCP endpoint, holding its session id once initialized.
#[derive(Debug, Clone)]
pub struct McpClient {
    http: reqwest::Client,
    url: String,
    key: String,
    /// The session id, once `initialize` returned one.
    pub session: Option<String>,
    next_id: u64,
}

/// One HTTP answer: its status, headers and the JSON-RPC messages it carried.
#[derive(Debug)]
pub struct McpResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Messages, in order (SSE events or the JSON body).
    pub messages: Vec<Value>,
    /// SSE comment lines (keep-alives) seen.
    pub comments: usize,
    /// SSE event ids, in order (a priming event's too).
    pub event_ids: Vec<String>,
}

impl McpClient {
    /// A client for `url` using `key`.
    pub fn new(http: reqwest::Client, url: String, key: &str) -> Self {
        Self {
            http,
            url,
            key: key.to_owned(),
            session: None,
            next_id: 1,
        }
    }

    /// Initializes a session and sends `notifications/initialized`.
    pub async fn initialize(&mut self) -> anyhow::Result<Value> {
        let response = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "outpost-tests", "version": "1"}
                }),
            )
            .await?;
        let session = response
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let result = response.result()?;
        self.session = session;
        let notified = self
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        anyhow::ensure!(
            notified.status == 202,
            "initialized notification answered {}",
            notified.status
        );
        Ok(result)
    }

    /// Sends a request and returns the whole answer.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<McpResponse> {
        let id = self.next_id;
        self.next_id += 1;
        self.post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await
    }

    /// Calls a tool and returns the whole answer.
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> anyhow::Result<McpResponse> {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// POSTs one JSON body with the session header, if any.
    pub async fn post(&self, body: Value) -> anyhow::Result<McpResponse> {
        self.post_raw(body.to_string().into_bytes(), &[]).await
    }

    /// POSTs raw bytes; `headers` replace the defaults of the same name.
    pub async fn post_raw(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<McpResponse> {
        McpResponse::read(self.post_open(body, headers).await?).await
    }

    /// As [`Self::post_raw`], but hands back the response as soon as its headers are
    /// here, for a test to read its body as it comes ([`McpResponse::parse`] then).
    pub async fn post_open(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut map = reqwest::header::HeaderMap::new();
        map.insert("content-type", "application/json".parse()?);
        map.insert("accept", "application/json, text/event-stream".parse()?);
        if let Some(session) = &self.session {
            map.insert("mcp-session-id", session.parse()?);
        }
        for (name, value) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
                value.parse()?,
            );
        }
        let request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .headers(map)
            .timeout(REQUEST_TIMEOUT)
            .body(body);
        Ok(request.send().await?)
    }

    /// Resumes a stream of the session with `GET` and `Last-Event-ID`, and reads the
    /// answer to its end (a POST's stream ends after its last answer).
    pub async fn resume(&self, last_event_id: &str) -> anyhow::Result<McpResponse> {
        let mut request = self
            .http
            .get(&self.url)
            .bearer_auth(&self.key)
            .header("accept", "text/event-stream")
            .header("last-event-id", last_event_id)
            .timeout(REQUEST_TIMEOUT);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        McpResponse::read(request.send().await?).await
    }

    /// DELETEs the session.
    pub async fn delete(&self) -> anyhow::Result<u16> {
        let mut request = self
            .http
            .delete(&self.url)
            .bearer_auth(&self.key)
            .timeout(REQUEST_TIMEOUT);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        Ok(request.send().await?.status().as_u16())
    }
}

impl McpResponse {
    async fn read(response: reqwest::Response) -> anyhow::Result<Self> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Self::parse(status, headers, &body)
    }

    /// A response from its status, headers and whole body.
    pub fn parse(
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: &str,
    ) -> anyhow::Result<Self> {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let comments = body.lines().filter(|l| l.starts_with(':')).count();
        let event_ids = body
            .lines()
            .filter_map(|l| l.strip_prefix("id:"))
            .map(|id| id.trim().to_owned())
            .collect();
        let messages = if content_type.starts_with("text/event-stream") {
            parse_sse(body)?
        } else if body.trim().is_empty() {
            Vec::new()
        } else {
            match serde_json::from_str::<Value>(body)? {
                Value::Array(items) => items,
                other => vec![other],
            }
        };
        Ok(Self {
            status,
            headers,
            messages,
            comments,
            event_ids,
        })
    }

    /// The last message, which answers the request.
    pub fn answer(&self) -> anyhow::Result<&Value> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .ok_or_else(|| {
                anyhow::anyhow!("no answer in {:?} (HTTP {})", self.messages, self.status)
            })
    }

    /// The answer's result, or an error describing the JSON-RPC error.
    pub fn result(&self) -> anyhow::Result<Value> {
        let answer = self.answer()?;
        match answer.get("result") {
            Some(result) => Ok(result.clone()),
            None => anyhow::bail!("JSON-RPC error: {}", answer["error"]),
        }
    }

    /// The answer's JSON-RPC error code, if it is an error.
    pub fn error_code(&self) -> Option<i64> {
        self.answer().ok()?.get("error")?.get("code")?.as_i64()
    }

    /// The notifications that came before the answer.
    pub fn notifications(&self, method: &str) -> Vec<&Value> {
        self.messages
            .iter()
            .filter(|m| m.get("method").and_then(Value::as_str) == Some(method))
            .collect()
    }
}

/// Parses SSE into JSON messages as a client's event source does: an event's `data:`
/// lines join with LF, its type is its last `event:` line's, and only events of type
/// `message` (or none) are messages. Comments and other fields are skipped, and so is an
/// event the body ends in the middle of.
fn parse_sse(body: &str) -> anyhow::Result<Vec<Value>> {
    let mut messages = Vec::new();
    let mut data = String::new();
    let mut event = String::new();
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if !data.is_empty() && (event.is_empty() || event == "message") {
                messages.push(serde_json::from_str(&data)?);
            }
            data.clear();
            event.clear();
        } else if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else if let Some(rest) = line.strip_prefix("event:") {
            event = rest.strip_prefix(' ').unwrap_or(rest).to_owned();
        }
    }
    Ok(messages)
}

/// No single request in the tests may take longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
