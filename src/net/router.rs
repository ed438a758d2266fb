//! Every request passes here: `/healthz`, then the bearer token for everything under `/v1/`,
//! then the route's body limit and the request deadline, then the mail API or the peer hook.

use super::error::{reply, ApiError, Reply};
use super::request::read_body;
use super::server::{counts_view, AdminAuth, ServerState};
use super::{mail, peer, routes};
use crate::status;
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
    match path {
        "/healthz" | "/status" | "/metrics" | "/" => {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return Err(ApiError::method_not_allowed("GET, HEAD"));
            }
            let path = path.to_string();
            return within(deadline, operator(state, path)).await;
        }
        _ => {}
    }
    if path != "/v1" && !path.starts_with("/v1/") {
        return Err(ApiError::not_found(format!("no route {path}")));
    }
    // Auth before anything else under /v1/, so a caller without the token learns nothing,
    // not even which routes exist. Peers present the peer token on the peer API; the mail
    // API and `/v1/sync/start` (an operator's action) want the admin token.
    let journal = routes::is_journal(path);
    let peer_route = path.starts_with("/v1/sync/") && path != routes::START || journal;
    let token = if peer_route {
        state.token()
    } else {
        match state.admin() {
            AdminAuth::Open => None,
            AdminAuth::Token(t) => Some(t),
            AdminAuth::Unset => return Err(ApiError::no_admin_token()),
        }
    };
    if let Some(token) = token {
        if !token.admits(req.headers()) {
            return Err(ApiError::unauthorized());
        }
    }
    if path.starts_with("/v1/sync/") || journal {
        let (parts, body) = req.into_parts();
        let body = read_within(body, &parts.headers, state.limits.max_sync_body, deadline).await?;
        return within(
            deadline,
            peer::handle(state, &parts.method, &parts.headers, parts.uri.path(), body),
        )
        .await;
    }
    if path.starts_with("/v1/mail/") {
        let write = req.method() != Method::GET && req.method() != Method::HEAD;
        let reply = mail::handle(state, req, deadline).await?;
        if write && reply.status().is_success() {
            if let Some(hooks) = &state.hooks {
                // `sync` mode: the writer hears back once a peer stored the change (or the
                // sync timeout passed); `async`: this only wakes the journal's shippers.
                hooks.wrote().await;
            }
        }
        return Ok(reply);
    }
    Err(ApiError::not_found(format!("no route {path}")))
}

/// The operator's routes: `/healthz`, `/status` (JSON), `/metrics` (Prometheus text) and `/`
/// (an HTML page). None shows mail or user names, so none needs a token.
async fn operator(state: &ServerState, path: String) -> Result<Reply, ApiError> {
    if path == "/healthz" {
        return Ok(reply::text(StatusCode::OK, "ok"));
    }
    let view = match &state.hooks {
        Some(hooks) => hooks.status(),
        None => {
            let store =
                state.with_store(|s| Ok((s.node_id().to_string(), s.root()?, s.counters()?)));
            let (node, root, counts) = store.await?;
            status::StatusView {
                node,
                version: env!("CARGO_PKG_VERSION").to_string(),
                root: root.hash.to_hex(),
                counts: counts_view(&counts),
                mode: status::Mode::Async,
                ..Default::default()
            }
        }
    };
    Ok(match path.as_str() {
        "/status" => reply::json(StatusCode::OK, &view),
        "/metrics" => reply::bytes(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            status::metrics(&view).into_bytes(),
        ),
        _ => reply::bytes(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status::page(&view).into_bytes(),
        ),
    })
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
