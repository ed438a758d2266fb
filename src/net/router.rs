//! Every request passes here: `/healthz`, then the bearer token for everything under `/v1/`,
//! then the route's body limit and the request deadline, then the mail API or the peer hook.

use super::error::{reply, ApiError, Reply};
use super::request::read_body;
use super::server::ServerState;
use super::{mail, peer};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode};
use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::debug;

/// Answers one request. Never fails: every problem becomes a 4xx or 5xx with a JSON body.
pub(crate) async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Reply {
    let start = Instant::now();
    let method = req.method().clone();
    // The path only: a query could one day carry something private, and tokens travel in a
    // header that is never logged.
    let path = req.uri().path().to_string();
    let reply = route(&state, req)
        .await
        .unwrap_or_else(ApiError::into_reply);
    debug!(
        %method,
        %path,
        status = reply.status().as_u16(),
        ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    reply
}

async fn route(state: &ServerState, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let deadline = Instant::now() + state.limits.request_timeout;
    let path = req.uri().path();
    if path == "/healthz" {
        return match *req.method() {
            Method::GET | Method::HEAD => Ok(reply::text(StatusCode::OK, "ok")),
            _ => Err(ApiError::method_not_allowed("GET, HEAD")),
        };
    }
    if path != "/v1" && !path.starts_with("/v1/") {
        return Err(ApiError::not_found(format!("no route {path}")));
    }
    // Auth before anything else under /v1/, so a caller without the token learns nothing,
    // not even which routes exist.
    if let Some(token) = state.token() {
        if !token.admits(req.headers()) {
            return Err(ApiError::unauthorized());
        }
    }
    if path.starts_with("/v1/sync/") {
        let (parts, body) = req.into_parts();
        let body = read_within(body, &parts.headers, state.limits.max_sync_body, deadline).await?;
        return within(
            deadline,
            peer::handle(state, &parts.method, parts.uri.path(), body),
        )
        .await;
    }
    if path.starts_with("/v1/mail/") {
        return mail::handle(state, req, deadline).await;
    }
    Err(ApiError::not_found(format!("no route {path}")))
}

/// Reads a body under `limit` bytes, answering 408 if it has not all arrived by `deadline`.
pub(crate) async fn read_within(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout_at(deadline, read_body(body, headers, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
        })?
}

/// Runs the work of a request, answering 503 if it is not done by `deadline`. The store's
/// work runs to its end on the blocking pool all the same (a transaction either commits or
/// not), so after a 503 the outcome is unknown: look before retrying.
pub(crate) async fn within(
    deadline: Instant,
    work: impl Future<Output = Result<Reply, ApiError>>,
) -> Result<Reply, ApiError> {
    tokio::time::timeout_at(deadline, work).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request did not finish in time; its effect, if any, is unknown",
        )
    })?
}
