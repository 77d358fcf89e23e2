//! The agent's side of the tunnel: dialing (`dial.rs`), one session from hello to close
//! (`session.rs`), and reconnecting with backoff (`reconnect.rs`). Owns the connection to
//! the relay; does not own upstreams (see `upstream/`).

pub mod dial;
pub mod reconnect;
pub(crate) mod session;
