//! The peer API's routes, content types and header, named once: the router and the peer
//! handler match on them, and the peer client sends them. Nothing outside `net` names a route.

/// `GET`: the node's id and version (JSON, [`super::peer::Hello`]).
pub const HELLO: &str = "/v1/sync/hello";
/// `POST`: one round of a session (postcard in and out, [`SYNC_CONTENT_TYPE`]).
pub const ROUND: &str = "/v1/sync/round";
/// `POST`: reconcile the server with another one now (an operator's action, JSON).
pub const START: &str = "/v1/sync/start";
/// `GET /v1/sync/body/{digest}`: one body's bytes; 64 hex digits follow this prefix.
pub const BODY_PREFIX: &str = "/v1/sync/body/";
/// `POST`: a batch of a peer's replication journal ([`JOURNAL_CONTENT_TYPE`]).
pub const JOURNAL: &str = "/v1/journal";
/// `GET`: where this node's journal toward the asking node stands (JSON).
pub const JOURNAL_POSITION: &str = "/v1/journal/position";

/// `GET`: the operator's status snapshot (JSON, `status::StatusView`); `/metrics` and `/`
/// render the same snapshot.
pub const STATUS: &str = "/status";

/// The header a daemon's requests carry: the asking node's id.
pub const NODE_HEADER: &str = "x-merkmail-node";
/// The content type of session rounds.
pub const SYNC_CONTENT_TYPE: &str = "application/x-merkmail-sync";
/// The content type of a journal batch.
pub const JOURNAL_CONTENT_TYPE: &str = "application/x-merkmail-journal";

/// Whether `path` is one of the journal's routes (they are peer routes outside `/v1/sync/`).
pub fn is_journal(path: &str) -> bool {
    path == JOURNAL || path == JOURNAL_POSITION
}
