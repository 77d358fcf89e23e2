//! What the agent exposes of each server, as pure functions of its configuration. For now
//! every configured server is exposed whole; the digest lets the relay tell when a
//! server's exposed shape changes. Holds no secrets: resolved values never enter it.

use sha2::{Digest, Sha256};

use crate::config::{ServerConfig, Transport};

/// A hex SHA-256 over the server's non-secret shape: its name, transport, and the program
/// and arguments or URL. Secret values (env, headers) are represented by their names only.
pub fn digest(server: &ServerConfig) -> String {
    let mut hash = Sha256::new();
    hash.update(b"outpost-policy-v1\0");
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
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
