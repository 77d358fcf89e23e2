//! Which client requests an upstream has not answered yet, per stream and in total, so that
//! shutdown can wait for in-flight calls. Reads only `id` and `method` of each message.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

/// The agent-wide count of calls in flight.
#[derive(Debug, Clone)]
pub(crate) struct InFlight(watch::Sender<usize>);

/// One stream's unanswered client requests. Dropping it releases them from the count.
/// Shared by a stream's two directions, which run concurrently.
#[derive(Debug)]
pub(crate) struct Calls {
    open: Mutex<HashSet<String>>,
    total: InFlight,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

impl InFlight {
    pub(crate) fn new() -> Self {
        Self(watch::Sender::new(0))
    }

    /// Calls in flight now.
    pub(crate) fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves when no call is in flight.
    pub(crate) async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn add(&self, n: usize) {
        self.0.send_modify(|count| *count += n);
    }

    fn sub(&self, n: usize) {
        self.0.send_modify(|count| *count = count.saturating_sub(n));
    }
}

impl Calls {
    pub(crate) fn new(total: InFlight) -> Self {
        Self {
            open: Mutex::new(HashSet::new()),
            total,
        }
    }

    /// Notes a message from the client: a request opens a call; a cancellation closes
    /// one, since a server does not answer a cancelled request.
    pub(crate) fn on_client_message(&self, message: &[u8]) {
        if let Some(id) = cancelled_request(message) {
            self.answered(&id);
        } else if let Some((id, true)) = peek(message)
            && self.lock().insert(id)
        {
            self.total.add(1);
        }
    }

    /// Notes a message from the upstream: a response closes a call.
    pub(crate) fn on_upstream_message(&self, message: &[u8]) {
        if let Some((id, false)) = peek(message) {
            self.answered(&id);
        }
    }

    /// Closes a call answered by the agent itself (an error in the upstream's place).
    pub(crate) fn answered(&self, id: &str) {
        if self.lock().remove(id) {
            self.total.sub(1);
        }
    }

    /// The one unanswered request, if exactly one is open: the only call a nameless
    /// failure can belong to.
    pub(crate) fn only_open(&self) -> Option<String> {
        let open = self.lock();
        if open.len() == 1 {
            open.iter().next().cloned()
        } else {
            None
        }
    }

    /// Whether request `id` is still unanswered.
    pub(crate) fn is_open(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // One set operation per critical section: a poisoned set is still consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        let open = self.lock().len();
        self.total.sub(open);
    }
}

/// The request a `notifications/cancelled` names, as canonical JSON text.
fn cancelled_request(message: &[u8]) -> Option<String> {
    let peek: Peek<'_> = serde_json::from_slice(message).ok()?;
    if peek.id.is_some() || peek.method?.get() != "\"notifications/cancelled\"" {
        return None;
    }
    let params: CancelledParams<'_> = serde_json::from_str(peek.params?.get()).ok()?;
    Some(params.request_id?.get().to_owned())
}

/// The message's id (canonical JSON text) and whether it has a method.
pub(crate) fn peek(message: &[u8]) -> Option<(String, bool)> {
    let peek: Peek<'_> = serde_json::from_slice(message).ok()?;
    let id = peek.id.filter(|id| id.get() != "null")?;
    Some((id.get().to_owned(), peek.method.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_open_calls_and_responses_close_them() {
        let total = InFlight::new();
        let calls = Calls::new(total.clone());
        calls.on_client_message(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        calls.on_client_message(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        calls.on_client_message(br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#);
        assert_eq!(total.get(), 2);
        // A server-to-client request with the same id is not an answer.
        calls.on_upstream_message(br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#);
        assert_eq!(total.get(), 2);
        calls.on_upstream_message(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert_eq!(total.get(), 1);
        // A cancelled request will not be answered: it no longer counts.
        calls.on_client_message(
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a"}}"#,
        );
        assert_eq!(total.get(), 0);
        calls.on_client_message(br#"{"jsonrpc":"2.0","id":"b","method":"ping"}"#);
        assert_eq!(total.get(), 1);
        drop(calls);
        assert_eq!(total.get(), 0);
    }
}
