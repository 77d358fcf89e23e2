//! The agent's local policy for each server: which tools exist for the relay (allow and
//! deny globs), how many calls may run at once, and how long one may take. The agent's
//! policy is the ceiling: the relay may narrow it, never widen it. Pure functions of the
//! configuration; holds no secrets, so resolved values never enter it or its digest.

use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

use crate::config::{ServerConfig, Transport};

/// What a server exposes and how hard it may be driven.
#[derive(Debug, Clone, Default)]
pub struct ToolPolicy {
    allow: Option<Patterns>,
    deny: Option<Patterns>,
    /// Calls in flight at once, over all sessions of the server; `None` is unlimited.
    pub max_concurrent_calls: Option<usize>,
    /// How long one call may run before the agent answers it with a timeout.
    pub call_timeout: Option<Duration>,
    /// Client sessions open at once (for stdio, child processes); `None` leaves only
    /// the tunnel's `max_streams`.
    pub max_sessions: Option<usize>,
}

#[derive(Debug, Clone)]
struct Patterns {
    source: Vec<String>,
    set: GlobSet,
}

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("`{pattern}` is not a valid glob: {reason}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub reason: String,
}

impl ToolPolicy {
    /// Builds a policy. An empty allow list allows every tool; deny wins over allow.
    pub fn new(
        allow_tools: Vec<String>,
        deny_tools: Vec<String>,
        max_concurrent_calls: Option<usize>,
        call_timeout: Option<Duration>,
    ) -> Result<Self, PatternError> {
        Ok(Self {
            allow: Patterns::new(allow_tools)?,
            deny: Patterns::new(deny_tools)?,
            max_concurrent_calls,
            call_timeout,
            max_sessions: None,
        })
    }

    /// The same policy with a cap on open sessions.
    pub fn with_max_sessions(self, max_sessions: Option<usize>) -> Self {
        Self {
            max_sessions,
            ..self
        }
    }

    /// Whether the tool exists for the relay: listed and callable.
    pub fn permits(&self, tool: &str) -> bool {
        let allowed = self.allow.as_ref().is_none_or(|p| p.set.is_match(tool));
        let denied = self.deny.as_ref().is_some_and(|p| p.set.is_match(tool));
        allowed && !denied
    }

    /// Whether some tool may be hidden, so lists must be filtered.
    pub fn filters_tools(&self) -> bool {
        self.allow.is_some() || self.deny.is_some()
    }

    fn hash_into(&self, hash: &mut Sha256) {
        for (label, patterns) in [("allow", &self.allow), ("deny", &self.deny)] {
            for pattern in patterns.iter().flat_map(|p| &p.source) {
                hash.update(format!("\0{label}:{pattern}").as_bytes());
            }
        }
        if let Some(max) = self.max_concurrent_calls {
            hash.update(format!("\0max:{max}").as_bytes());
        }
        if let Some(timeout) = self.call_timeout {
            hash.update(format!("\0timeout:{}", timeout.as_millis()).as_bytes());
        }
        if let Some(max) = self.max_sessions {
            hash.update(format!("\0sessions:{max}").as_bytes());
        }
    }
}

impl Patterns {
    fn new(source: Vec<String>) -> Result<Option<Self>, PatternError> {
        if source.is_empty() {
            return Ok(None);
        }
        let mut set = GlobSetBuilder::new();
        for pattern in &source {
            let glob = Glob::new(pattern).map_err(|e| PatternError {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
            set.add(glob);
        }
        let set = set.build().map_err(|e| PatternError {
            pattern: source.join(", "),
            reason: e.to_string(),
        })?;
        Ok(Some(Self { source, set }))
    }
}

/// A hex SHA-256 over the server's non-secret shape: its name, transport, the program and
/// arguments or URL, and its policy. Secret values (env, headers) are represented by
/// their names only. Sent in the hello, so the relay can tell when what a server exposes
/// changed.
pub fn digest(server: &ServerConfig) -> String {
    let mut hash = Sha256::new();
    hash.update(b"outpost-policy-v2\0");
    hash.update(server.name.as_bytes());
    hash.update(b"\0");
    match &server.transport {
        Transport::Stdio(stdio) => {
            hash.update(b"stdio\0");
            hash.update(stdio.command.as_bytes());
            for arg in &stdio.args {
                hash.update(b"\0");
                hash.update(arg.as_bytes());
            }
            for (name, _) in &stdio.env {
                hash.update(b"\0env:");
                hash.update(name.as_bytes());
            }
        }
        Transport::Http(http) => {
            hash.update(b"http\0");
            hash.update(http.url.as_str().as_bytes());
            for (name, _) in &http.headers {
                hash.update(b"\0header:");
                hash.update(name.as_str().as_bytes());
            }
        }
    }
    server.policy.hash_into(&mut hash);
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> ToolPolicy {
        let strings = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect();
        ToolPolicy::new(strings(allow), strings(deny), None, None).unwrap()
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let open = policy(&[], &[]);
        assert!(open.permits("anything") && !open.filters_tools());
        let p = policy(&["get-*", "echo"], &["get-env"]);
        assert!(p.permits("echo"));
        assert!(p.permits("get-sum"));
        assert!(!p.permits("get-env"));
        assert!(!p.permits("delete-all"));
        let p = policy(&[], &["*env*"]);
        assert!(!p.permits("get-env") && p.permits("echo"));
    }

    #[test]
    fn bad_globs_are_refused() {
        let err = ToolPolicy::new(vec!["[a-".into()], vec![], None, None).unwrap_err();
        assert!(err.to_string().contains("[a-"), "{err}");
    }
}
