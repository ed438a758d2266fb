//! The answers the server gives: [`Reply`], the helpers that build one, and [`ApiError`], the
//! 4xx/5xx answer with a JSON body `{"error": "..."}` that names the problem.

use crate::store::StoreError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use std::fmt;

/// Every answer the server sends: the whole body is in memory.
pub type Reply = Response<Full<Bytes>>;

/// A request that failed: the status to answer with and a sentence for the caller. Building
/// one has no side effects; a handler that returns one has changed nothing (the store's
/// operations are single transactions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// For 405: the methods the route does take.
    allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    /// 400: the request is malformed; the message says how.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such route, or no such user, mailbox or message.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 405, with an `Allow` header listing `allow` (e.g. "GET, POST").
    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("method not allowed here; use {allow}"),
            allow: Some(allow),
        }
    }

    /// 413: the body is over the route's limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than this route's limit of {limit} bytes"),
        )
    }

    /// 500: the server's fault (a damaged store, a failed task); logged where it is built.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(error = %message, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 401. One body for a missing and a wrong token, so a caller learns nothing from it.
    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer TOKEN",
        )
    }

    /// An admin route (the mail API, `/v1/sync/start`) on a server that has a peer token but
    /// no admin token: the peer token must not open them, and nothing else would.
    pub(crate) fn no_admin_token() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "no admin token configured: the mail API and /v1/sync/start need admin_token \
             (--admin-token), which must differ from peer_token",
        )
    }

    /// The JSON answer.
    pub fn into_reply(self) -> Reply {
        let mut reply = reply::json(self.status, &serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            reply
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.allow {
            reply
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        reply
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The store says whose fault an error is: unknown user, mailbox or UID → 404, a mailbox that
/// exists → 409, other bad input → 400, a full disk → 507, anything else → 500.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if let StoreError::StorageFull(_) = e {
            // 507: nothing was written; the same request succeeds once space is freed.
            tracing::warn!(error = %e, "write refused: the disk is full");
            return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string());
        }
        if !e.is_client_error() {
            return ApiError::internal(e.to_string());
        }
        let status = match e {
            StoreError::UnknownUser(_)
            | StoreError::UnknownMailbox { .. }
            | StoreError::UnknownUid { .. }
            | StoreError::EmptyUidSet { .. } => StatusCode::NOT_FOUND,
            StoreError::MailboxExists { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Builders for successful answers.
pub mod reply {
    use super::*;

    /// A body of any type, e.g. `application/octet-stream` or a postcard type of ours.
    pub fn bytes(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        let mut reply = Response::new(Full::new(body.into()));
        *reply.status_mut() = status;
        reply
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        reply
    }

    /// A JSON body. Serialising our own types cannot fail; if it somehow did, the answer is a
    /// 500 rather than a panic.
    pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => bytes(status, "application/json", body),
            Err(e) => bytes(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot encode the answer: {e}"),
            ),
        }
    }

    /// Plain text (`/healthz`).
    pub fn text(status: StatusCode, body: &'static str) -> Reply {
        bytes(
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        )
    }
}
