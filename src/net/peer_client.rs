//! The peer API as typed calls: one method per request a node makes to another (hello, a
//! session round, a journal batch, the journal position, a body), each with a typed reply and
//! a [`PeerError`] that says how the exchange failed, so callers match variants instead of
//! reading messages.

use super::client::{Client, ClientConfig, ClientError};
use super::peer::{Hello, JournalAck};
use super::routes::{self, BODY_PREFIX, JOURNAL_CONTENT_TYPE, NODE_HEADER, SYNC_CONTENT_TYPE};
use super::server::JournalPosition;
use crate::model::Digest;
use bytes::Bytes;
use hyper::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;
use thiserror::Error;

/// Why a request to a peer got no usable answer. Each message starts with the URL asked and
/// reads exactly as [`ClientError`]'s did, since `/status` and the CLI show it.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Nothing was sent: the URL, token or node id cannot be used, the CAs could not be
    /// loaded, or the blocking runtime did not start.
    #[error(transparent)]
    Setup(ClientError),
    /// No connection could be made (refused, unreachable, the connect timeout, a TLS
    /// handshake that failed).
    #[error("{url}: cannot connect: {reason}")]
    Unreachable { url: String, reason: String },
    /// The whole answer did not arrive within the request timeout.
    #[error("{url}: no complete answer within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The connection broke during the exchange, or what came back was not HTTP.
    #[error("{url}: {reason}")]
    Broken { url: String, reason: String },
    /// The answer's body is larger than the client accepts.
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    /// The peer answered with an error status; `message` is its JSON `error` (or the start of
    /// the body, or the status's reason when the body is empty).
    #[error("{url}: HTTP {}: {message}", status_line(*.status))]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// The peer answered 2xx with something that is not what the route promises. Said the way
    /// a gateway reports a bad upstream (502), as merkmail always has.
    #[error("{url}: HTTP 502 Bad Gateway: {what}: {reason}")]
    BadAnswer {
        url: String,
        what: &'static str,
        reason: String,
    },
}

impl PeerError {
    /// Whether the peer answered at all (an error status, or an answer it should not have
    /// given): it is up, but refuses or garbles, which is not the same as down.
    pub fn answered(&self) -> bool {
        matches!(self, PeerError::Status { .. } | PeerError::BadAnswer { .. })
    }
}

impl From<ClientError> for PeerError {
    fn from(e: ClientError) -> PeerError {
        match e {
            ClientError::Connect { url, reason } => PeerError::Unreachable { url, reason },
            ClientError::Timeout { url, after } => PeerError::Timeout { url, after },
            ClientError::Transport { url, reason } => PeerError::Broken { url, reason },
            ClientError::TooLarge { url, limit } => PeerError::TooLarge { url, limit },
            ClientError::Status {
                url,
                status,
                message,
            } => PeerError::Status {
                url,
                status: status.as_u16(),
                message,
            },
            ClientError::Decode { url, reason } => PeerError::BadAnswer {
                url,
                what: "unexpected answer",
                reason,
            },
            e @ (ClientError::Url { .. } | ClientError::Runtime(_) | ClientError::Tls(_)) => {
                PeerError::Setup(e)
            }
        }
    }
}

/// `404 Not Found`, as hyper writes a status.
fn status_line(code: u16) -> String {
    match StatusCode::from_u16(code) {
        Ok(status) => status.to_string(),
        Err(_) => code.to_string(),
    }
}

/// An async client bound to one peer (`http(s)://host:port`), with the peer's token and,
/// for a daemon, this node's id in [`NODE_HEADER`] on every request. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PeerClient {
    client: Client,
}

impl PeerClient {
    /// A client for the peer at `base_url`. `node` is the asking node's id (a daemon's; the
    /// CLI's `sync` has none). Checks the URL; makes no connection yet.
    pub fn new(
        base_url: &str,
        token: Option<&str>,
        node: Option<&str>,
        config: ClientConfig,
    ) -> Result<PeerClient, ClientError> {
        let mut client = Client::new(base_url, token, config)?;
        if let Some(node) = node {
            client = client.with_header(NODE_HEADER, node)?;
        }
        Ok(PeerClient { client })
    }

    /// `GET /v1/sync/hello`: who the peer is.
    pub async fn hello(&self) -> Result<Hello, PeerError> {
        let body = self.get(routes::HELLO).await?;
        self.json(routes::HELLO, "not a merkmail hello", &body)
    }

    /// `POST /v1/sync/round`: one encoded round out, the peer's encoded answer back.
    pub async fn round(&self, round: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let answer = self.post(routes::ROUND, SYNC_CONTENT_TYPE, round).await?;
        Ok(answer.to_vec())
    }

    /// `POST /v1/journal`: an encoded journal batch out; what the peer now holds back.
    pub async fn journal(&self, batch: Vec<u8>) -> Result<JournalAck, PeerError> {
        let answer = self
            .post(routes::JOURNAL, JOURNAL_CONTENT_TYPE, batch)
            .await?;
        self.json(routes::JOURNAL, "unreadable acknowledgement", &answer)
    }

    /// `GET /v1/journal/position`: where the peer's journal toward this node stands.
    pub async fn journal_position(&self) -> Result<JournalPosition, PeerError> {
        let body = self.get(routes::JOURNAL_POSITION).await?;
        self.json(
            routes::JOURNAL_POSITION,
            "unreadable journal position",
            &body,
        )
    }

    /// `GET /v1/sync/body/{digest}`: the peer's copy of one body, `None` when it holds no
    /// sound copy (404). The bytes are as the peer sent them: the caller checks the digest.
    pub async fn body(&self, digest: &Digest) -> Result<Option<Bytes>, PeerError> {
        let path = format!("{BODY_PREFIX}{digest}");
        let (status, body) = self.client.get(&path).await?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(ClientError::from_status(&self.client.url(&path), status, &body).into()),
        }
    }

    async fn get(&self, path: &str) -> Result<Bytes, PeerError> {
        let answer = self.client.get(path).await?;
        Ok(super::client::expect_success(
            &self.client.url(path),
            answer,
        )?)
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, PeerError> {
        let answer = self.client.post(path, content_type, body).await?;
        Ok(super::client::expect_success(
            &self.client.url(path),
            answer,
        )?)
    }

    fn json<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
        body: &[u8],
    ) -> Result<T, PeerError> {
        serde_json::from_slice(body).map_err(|e| PeerError::BadAnswer {
            url: self.client.url(path),
            what,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/status` and the CLI show these messages: they read as the HTTP client's always did.
    #[test]
    fn messages_read_as_the_clients_did() {
        let check = |e: ClientError| {
            let before = e.to_string();
            assert_eq!(PeerError::from(e).to_string(), before);
        };
        let url = || "http://h:1/v1/sync/round".to_string();
        check(ClientError::Connect {
            url: url(),
            reason: "Connection refused (os error 111)".into(),
        });
        check(ClientError::Timeout {
            url: url(),
            after: Duration::from_millis(1500),
        });
        check(ClientError::Transport {
            url: url(),
            reason: "connection closed before message completed".into(),
        });
        check(ClientError::TooLarge {
            url: url(),
            limit: 16,
        });
        check(ClientError::from_status(
            &url(),
            StatusCode::CONFLICT,
            br#"{"error":"a is in a session with b already; retry later"}"#,
        ));
        check(ClientError::from_status(
            &url(),
            StatusCode::BAD_GATEWAY,
            b"",
        ));
        check(ClientError::Url {
            url: url(),
            reason: "the URL has no host".into(),
        });
    }

    /// A hello that is not JSON reads as it did when it was reported as a 502.
    #[test]
    fn a_bad_hello_reads_as_a_bad_gateway() {
        let peer =
            PeerClient::new("http://h:1", None, None, ClientConfig::default()).expect("client");
        let e = peer
            .json::<Hello>(routes::HELLO, "not a merkmail hello", b"nope")
            .expect_err("not JSON");
        let reason = serde_json::from_slice::<Hello>(b"nope")
            .expect_err("not JSON")
            .to_string();
        let before = ClientError::from_status(
            "http://h:1/v1/sync/hello",
            StatusCode::BAD_GATEWAY,
            format!("not a merkmail hello: {reason}").as_bytes(),
        );
        assert_eq!(e.to_string(), before.to_string());
        assert!(e.answered());
    }

    #[test]
    fn only_an_answer_counts_as_answered() {
        let url = "http://h:1/x".to_string();
        let down = PeerError::Unreachable {
            url: url.clone(),
            reason: "refused".into(),
        };
        let slow = PeerError::Timeout {
            url: url.clone(),
            after: Duration::from_secs(1),
        };
        let refused = PeerError::Status {
            url,
            status: 500,
            message: "oops".into(),
        };
        assert!(!down.answered() && !slow.answered());
        assert!(refused.answered());
    }
}
