//! The peer API under `/v1/sync/`: the routes the reconciliation session talks to.
//!
//! The router calls [`handle`] only after the bearer token has been checked and the whole body
//! has been read under `limits.max_sync_body`; the call runs under the request deadline
//! (past it the caller gets 503). An `Err` becomes a JSON error answer.

use super::error::{ApiError, Reply};
use super::server::ServerState;
use bytes::Bytes;
use hyper::Method;

/// Answers one request under `/v1/sync/`. `path` is the whole path (e.g. `/v1/sync/root`),
/// still percent-encoded; `body` is the whole request body. Use [`ServerState::with_store`]
/// to reach the store and [`super::reply`] to build an answer.
pub async fn handle(
    state: &ServerState,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Result<Reply, ApiError> {
    let _ = (state, method, body);
    Err(ApiError::not_found(format!("no route {path}")))
}
