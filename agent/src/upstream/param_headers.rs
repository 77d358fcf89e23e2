//! `Mcp-Param-*` headers (MCP 2026-07-28, SEP-2243) checked on a stdio server's behalf: a
//! tool argument whose schema carries `x-mcp-header: "<Name>"` must arrive in header
//! `Mcp-Param-<Name>` too, with the same value (plain, or `=?base64?<b64>?=`). An HTTP
//! server checks this itself; a stdio server cannot see headers, so the agent does. Pure
//! functions: the tool list comes from the shared process (see `shared.rs`), the headers
//! from the stream's open metadata.

use std::collections::HashMap;

use base64::Engine;
use serde_json::Value;

/// For each tool with annotated arguments: (argument, header name) pairs.
#[derive(Debug, Default)]
pub(super) struct ToolHeaders {
    tools: HashMap<String, Vec<(String, String)>>,
}

impl ToolHeaders {
    /// Adds the annotated arguments of one `tools/list` page's `tools`.
    pub(super) fn add_page(&mut self, tools: &[Value]) {
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let Some(properties) = tool
                .pointer("/inputSchema/properties")
                .and_then(Value::as_object)
            else {
                continue;
            };
            let headers: Vec<(String, String)> = properties
                .iter()
                .filter_map(|(argument, schema)| {
                    let header = schema.get("x-mcp-header")?.as_str()?;
                    Some((argument.clone(), header.to_owned()))
                })
                .collect();
            if !headers.is_empty() && self.tools.len() < MAX_TOOLS {
                self.tools.insert(name.to_owned(), headers);
            }
        }
    }

    /// Checks a `tools/call` of `tool` with `arguments` against the request's headers
    /// (`meta`, lower-case names). `Err` says what does not match.
    pub(super) fn check(
        &self,
        tool: &str,
        arguments: Option<&serde_json::Map<String, Value>>,
        meta: &[(String, String)],
    ) -> Result<(), String> {
        let Some(annotated) = self.tools.get(tool) else {
            return Ok(());
        };
        for (argument, name) in annotated {
            let wanted = format!("mcp-param-{}", name.to_ascii_lowercase());
            let header = meta
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(&wanted))
                .map(|(_, value)| value.trim());
            let value = arguments
                .and_then(|a| a.get(argument))
                .filter(|v| !v.is_null());
            let Some(value) = value else {
                if header.is_some() {
                    return Err(format!(
                        "Header mismatch: Mcp-Param-{name} present but argument absent"
                    ));
                }
                continue;
            };
            let Some(header) = header else {
                return Err(format!("Header mismatch: missing Mcp-Param-{name} header"));
            };
            let Some(decoded) = decode(header) else {
                return Err(format!(
                    "Header mismatch: invalid Base64 in Mcp-Param-{name}"
                ));
            };
            if decoded != as_text(value) {
                return Err(format!(
                    "Header mismatch: Mcp-Param-{name} does not match argument {argument}"
                ));
            }
        }
        Ok(())
    }
}

/// A header value: `=?base64?<b64>?=` decoded (`None` when the Base64 is invalid), any
/// other value literally.
fn decode(value: &str) -> Option<String> {
    let Some(encoded) = value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    else {
        return Some(value.to_owned());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// An argument as the client mirrors it into a header: strings as they are, other values
/// as JavaScript's `String()` writes them.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Tools with annotated arguments remembered per process.
const MAX_TOOLS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> ToolHeaders {
        let mut headers = ToolHeaders::default();
        headers.add_page(&[
            serde_json::json!({"name": "t", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "other": {"type": "string"}
            }}}),
            serde_json::json!({"name": "plain", "inputSchema": {"type": "object"}}),
        ]);
        headers
    }

    fn check(arguments: Value, meta: &[(&str, &str)]) -> Result<(), String> {
        let meta: Vec<(String, String)> = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        headers().check("t", arguments.as_object(), &meta)
    }

    #[test]
    fn the_rules_of_sep_2243() {
        let hello = serde_json::json!({"region": "Hello"});
        assert!(check(hello.clone(), &[("mcp-param-region", "Hello")]).is_ok());
        assert!(
            check(
                hello.clone(),
                &[("mcp-param-region", "=?base64?SGVsbG8=?=")]
            )
            .is_ok()
        );
        assert!(check(hello.clone(), &[("mcp-param-region", "=?base64?SGVsbG8?=")]).is_err());
        assert!(
            check(
                hello.clone(),
                &[("mcp-param-region", "=?base64?SGVs!!!bG8=?=")]
            )
            .is_err()
        );
        assert!(check(hello.clone(), &[]).is_err());
        assert!(check(hello, &[("mcp-param-region", "Bye")]).is_err());
        // Without the whole wrapper, a value is literal.
        let literal = serde_json::json!({"region": "=?base64?SGVsbG8="});
        assert!(check(literal, &[("mcp-param-region", "=?base64?SGVsbG8=")]).is_ok());
        // An absent argument must not come with a header.
        assert!(check(serde_json::json!({}), &[]).is_ok());
        assert!(check(serde_json::json!({}), &[("mcp-param-region", "x")]).is_err());
        // Tools without annotations are not checked.
        assert!(headers().check("plain", None, &[]).is_ok());
        assert_eq!(as_text(&serde_json::json!(3.0)), "3");
        assert_eq!(as_text(&serde_json::json!(true)), "true");
    }
}
