//! What a client key may reach: `agent/server` globs and optional tool-name globs,
//! compiled once per authentication. `*` does not cross the `/`, so `prod-eu/*` is every
//! server of agent `prod-eu` and `*/erp` the server `erp` of every agent.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::store::Scopes;

/// Compiled scopes of one key.
#[derive(Debug, Clone)]
pub struct Scope {
    servers: GlobSet,
    tools: Option<GlobSet>,
    source: Scopes,
}

/// A scope pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("scope `{pattern}` is invalid: {reason}")]
pub struct ScopeError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub reason: String,
}

impl Scope {
    /// Compiles `scopes`. Server patterns must be `AGENT/SERVER`.
    pub fn new(scopes: &Scopes) -> Result<Self, ScopeError> {
        for pattern in &scopes.servers {
            if pattern.split('/').count() != 2 {
                return Err(ScopeError {
                    pattern: pattern.clone(),
                    reason: "must be AGENT/SERVER, e.g. prod-eu/* or */erp".into(),
                });
            }
        }
        Ok(Self {
            servers: compile(&scopes.servers)?,
            tools: if scopes.tools.is_empty() {
                None
            } else {
                Some(compile(&scopes.tools)?)
            },
            source: scopes.clone(),
        })
    }

    /// Whether the key may reach `agent`'s `server`.
    pub fn allows_server(&self, agent: &str, server: &str) -> bool {
        self.servers.is_match(format!("{agent}/{server}"))
    }

    /// Whether the key may call `tool`.
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.tools.as_ref().is_none_or(|tools| tools.is_match(tool))
    }

    /// Whether some tool may be out of scope, so lists must be filtered.
    pub fn limits_tools(&self) -> bool {
        self.tools.is_some()
    }

    /// The patterns, as stored.
    pub fn scopes(&self) -> &Scopes {
        &self.source
    }
}

fn compile(patterns: &[String]) -> Result<GlobSet, ScopeError> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| ScopeError {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| ScopeError {
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(servers: &[&str], tools: &[&str]) -> Scope {
        Scope::new(&Scopes {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            tools: tools.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn agent_and_server_patterns_do_not_cross_the_slash() {
        let s = scope(&["prod-eu/*", "*/erp"], &[]);
        assert!(s.allows_server("prod-eu", "files"));
        assert!(s.allows_server("staging", "erp"));
        assert!(!s.allows_server("staging", "files"));
        assert!(s.allows_tool("anything") && !s.limits_tools());
        let s = scope(&["*/*"], &["read_*", "search"]);
        assert!(s.allows_tool("read_file") && s.allows_tool("search"));
        assert!(!s.allows_tool("delete_file"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert!(
            Scope::new(&Scopes {
                servers: vec!["prod".into()],
                tools: vec![]
            })
            .is_err()
        );
        assert!(
            Scope::new(&Scopes {
                servers: vec!["a/b/c".into()],
                tools: vec![]
            })
            .is_err()
        );
        assert!(
            Scope::new(&Scopes {
                servers: vec!["[a/b".into()],
                tools: vec![]
            })
            .is_err()
        );
    }
}
