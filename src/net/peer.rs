//! The peer API under `/v1/sync/`: the routes the reconciliation session talks to.
//!
//! The router calls [`handle`] only after the bearer token has been checked and the whole body
//! has been read under `limits.max_sync_body`; the call runs under the request deadline
//! (past it the caller gets 503). An `Err` becomes a JSON error answer.
//!
//! - `POST /v1/sync/round`: one round of a session (postcard `RoundRequest` → `RoundReply`).
//! - `POST /v1/sync/start`: reconcile this server with another one now (JSON in and out);
//!   only with a configured peer when peers are configured. Wants the admin token.
//! - `GET /v1/sync/hello`: this node's id and version (JSON), how a peer learns who we are.
//! - `POST /v1/journal`: a batch of a peer's replication journal (postcard), stored durably
//!   before the answer (the acknowledged sequence number), applied soon after.
//! - `GET /v1/sync/body/{digest}`: one body's raw bytes, only if held here and still matching
//!   its digest (a peer repairing a body that rotted there asks for it).

use super::client::ClientConfig;
use super::error::{reply, ApiError, Reply};
use super::routes::{self, BODY_PREFIX, NODE_HEADER, SYNC_CONTENT_TYPE};
use super::server::{RoundRefused, ServerState};
use super::sync::sync_with_peer_using;
use crate::sync::journal_wire::{decode_batch, JournalWireError};
use crate::sync::wire::{decode_request, encode};
use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

/// `GET /v1/sync/hello`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub version: String,
}

/// What `POST /v1/journal` answers: the last seq now stored here.
#[derive(Debug, Serialize, Deserialize)]
pub struct JournalAck {
    pub node: String,
    pub acked: u64,
}

fn node_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| crate::store::validate_node_id(v).is_ok())
        .map(str::to_string)
}

/// `POST /v1/journal`: decodes a peer's batch (a bad one changes nothing), stores it durably,
/// then answers what it acknowledges.
async fn journal(state: &ServerState, body: Bytes) -> Result<Reply, ApiError> {
    let store = std::sync::Arc::clone(&state.store);
    // Decoding a large batch is CPU work too: off the workers with the store call.
    let (from, acked) = tokio::task::spawn_blocking(move || {
        let batch = decode_batch(&body).map_err(|e| match e {
            JournalWireError::TooMany(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            _ => ApiError::bad_request(e.to_string()),
        })?;
        drop(body); // the batch holds its own copy of the bodies
        let acked = store.journal_receive(&batch)?;
        Ok::<_, ApiError>((batch.from, acked))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the journal task failed: {e}")))??;
    if let Some(hooks) = &state.hooks {
        hooks.journal_received(&from);
    }
    let ack = JournalAck {
        node: state.store.node_id().to_string(),
        acked,
    };
    Ok(reply::json(StatusCode::OK, &ack))
}

/// `GET /v1/sync/body/{digest}`: the body's bytes if held here and sound, else 404.
async fn body_by_digest(
    state: &ServerState,
    method: &Method,
    path: &str,
) -> Result<Reply, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    let hex = path.get(BODY_PREFIX.len()..).unwrap_or_default();
    let digest: crate::model::Digest = hex
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("{path}: {e}")))?;
    let found = state.with_store(move |s| s.sound_body(&digest)).await?;
    match found {
        Some(bytes) => Ok(reply::bytes(
            StatusCode::OK,
            "application/octet-stream",
            bytes,
        )),
        None => Err(ApiError::not_found(format!(
            "no sound copy of body {digest} here"
        ))),
    }
}

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
    headers: &HeaderMap,
    path: &str,
    body: Bytes,
) -> Result<Reply, ApiError> {
    match path {
        routes::HELLO => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            let node = match &state.hooks {
                Some(h) => h.node_id(),
                None => state.store.node_id().to_string(),
            };
            Ok(reply::json(
                StatusCode::OK,
                &Hello {
                    node,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
            ))
        }
        routes::JOURNAL_POSITION => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            let from = node_header(headers).ok_or_else(|| {
                ApiError::bad_request(format!("send the asking node's id in {NODE_HEADER}"))
            })?;
            let position = match &state.hooks {
                Some(h) => {
                    let hooks = std::sync::Arc::clone(h);
                    tokio::task::spawn_blocking(move || hooks.journal_position(&from))
                        .await
                        .map_err(|e| ApiError::internal(format!("the journal task failed: {e}")))?
                }
                None => None,
            };
            Ok(reply::json(StatusCode::OK, &position.unwrap_or_default()))
        }
        routes::JOURNAL => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            journal(state, body).await
        }
        routes::ROUND => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            if let (Some(hooks), Some(from)) = (&state.hooks, node_header(headers)) {
                hooks.session_round(&from).map_err(|e| {
                    let status = match e {
                        RoundRefused::InSession { .. } => StatusCode::CONFLICT,
                        RoundRefused::Starting { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    ApiError::new(status, e.to_string())
                })?;
            }
            let round = decode_request(&body).map_err(|e| match e {
                crate::sync::wire::WireError::TooMany(_) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
                }
                _ => ApiError::bad_request(e.to_string()),
            })?;
            drop(body); // the round holds its own copy of the bodies
            let at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let answer = state
                .with_store(move |store| crate::sync::responder::answer(store, &round))
                .await?;
            let equal = answer
                .replies
                .iter()
                .any(|r| matches!(r, crate::sync::wire::Reply::Root { equal: true, .. }));
            if let (true, Some(hooks), Some(from)) = (equal, &state.hooks, node_header(headers)) {
                hooks.roots_equal(&from, at_ms);
            }
            let applied = answer.replies.iter().any(|r| {
                matches!(r, crate::sync::wire::Reply::Applied { applied, .. } if applied.contains(&true))
            });
            if let (true, Some(hooks)) = (applied, &state.hooks) {
                hooks.session_applied();
            }
            Ok(reply::bytes(
                StatusCode::OK,
                SYNC_CONTENT_TYPE,
                encode(&answer),
            ))
        }
        routes::START => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let start: StartRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
            if let Some(hooks) = &state.hooks {
                if hooks.starting() {
                    let refused = RoundRefused::Starting {
                        node: hooks.node_id(),
                    };
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        refused.to_string(),
                    ));
                }
                if hooks.is_peer(&start.peer) == Some(false) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "{} is not one of this server's configured peers",
                            start.peer
                        ),
                    ));
                }
            }
            let store = std::sync::Arc::clone(&state.store);
            let config = ClientConfig {
                tls: state.client_tls().cloned(),
                ..ClientConfig::default()
            };
            // The session is synchronous (store reads, a blocking client): run it off the workers.
            let report = tokio::task::spawn_blocking(move || {
                let token = start.token.as_deref();
                sync_with_peer_using(&store, &start.peer, token, start.dry_run, config)
            })
            .await
            .map_err(|e| ApiError::internal(format!("the session task failed: {e}")))?
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
            Ok(reply::json(StatusCode::OK, &report))
        }
        _ if path.starts_with(BODY_PREFIX) => body_by_digest(state, method, path).await,
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}
