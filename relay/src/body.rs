//! Request bodies read within a bound, and the rest of a refused body read and dropped so
//! the client sees its answer. Owns no parsing: callers get bytes.
//!
//! hyper reads at most one more chunk of a body the handler left unread, then closes the
//! connection; a client still sending (TLS puts headers and body in separate records)
//! then finds the connection reset under its answer. Every early refusal discards first.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;

/// How long, and how many bytes, a refused body is read before the connection is given up.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the body exceeds the limit")]
    TooLarge,
    #[error("the body could not be read")]
    Unreadable,
}

/// Reads the whole body if it fits in `limit` bytes. A body over the limit (declared or
/// found) is discarded.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        discard(&mut body).await;
        return Err(BodyError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            tracing::info!(%err, "client body could not be read");
            BodyError::Unreadable
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                discard(&mut body).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what the client is still sending of a refused body, within a bound, so
/// that it reads the refusal instead of finding the connection reset under its unsent
/// bytes. Nothing is kept: the bound is on time and bytes read, not memory.
pub(crate) async fn discard(body: &mut Body) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}
