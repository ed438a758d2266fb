//! The peer API under `/v1/sync/`: the routes the reconciliation session talks to.
//!
//! The router calls [`handle`] only after the bearer token has been checked and the whole body
//! has been read under `limits.max_sync_body`; the call runs under the request deadline
//! (past it the caller gets 503). An `Err` becomes a JSON error answer.
//!
//! - `POST /v1/sync/round`: one round of a session (postcard `RoundRequest` → `RoundReply`).
//! - `POST /v1/sync/start`: reconcile this server with another one now (JSON in and out).

use super::error::{reply, ApiError, Reply};
use super::server::ServerState;
use super::sync::sync_with_peer;
use crate::sync::wire::{decode_request, encode};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;

/// The content type of session rounds.
pub const SYNC_CONTENT_TYPE: &str = "application/x-merkmail-sync";

/// What `POST /v1/sync/start` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The peer to reconcile with, e.g. `http://127.0.0.1:8026`.
    pub peer: String,
    /// The token that peer wants, if any.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Answers one request under `/v1/sync/`.
pub async fn handle(
    state: &ServerState,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Result<Reply, ApiError> {
    match path {
        "/v1/sync/round" => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let round = decode_request(&body).map_err(|e| match e {
                crate::sync::wire::WireError::TooMany(_) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
                }
                _ => ApiError::bad_request(e.to_string()),
            })?;
            let answer = state
                .with_store(move |store| crate::sync::responder::answer(store, &round))
                .await?;
            Ok(reply::bytes(
                StatusCode::OK,
                SYNC_CONTENT_TYPE,
                encode(&answer),
            ))
        }
        "/v1/sync/start" => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let start: StartRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
            let store = std::sync::Arc::clone(&state.store);
            // The session is synchronous (store reads, a blocking client): run it off the workers.
            let report = tokio::task::spawn_blocking(move || {
                sync_with_peer(&store, &start.peer, start.token.as_deref(), start.dry_run)
            })
            .await
            .map_err(|e| ApiError::internal(format!("the session task failed: {e}")))?
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
            Ok(reply::json(StatusCode::OK, &report))
        }
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}
