//! The reconciliation wire format: one postcard-encoded request per round trip, holding every
//! question the initiator has for that round; one reply holding every answer, in order.
//! docs/PROTOCOL.md describes it byte by byte.

use crate::model::{
    Digest, MailboxGuid, MailboxRecord, MailboxTombstone, MessageRecord, Tombstone,
};
use crate::store::ChangeGroup;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bumped on any incompatible change; a peer answers another version with 400.
pub const WIRE_VERSION: u8 = 1;
/// At most this many questions in one round.
pub const MAX_REQUESTS: usize = 100_000;
/// Bodies travel in batches of about this many bytes (at least one body per batch), well
/// under the peer's 64 MiB request limit.
pub const BODY_BATCH_BYTES: u64 = 8 << 20;
/// At most this many UIDs, digests or changes in one question (memory is bounded by the
/// 64 MiB body limit anyway; this stops a tiny body from announcing a huge list).
pub const MAX_ITEMS: usize = 1_000_000;

/// A tree node, as the wire names it (the same places as `merkle::NodeKey`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WireKey {
    Top {
        level: u8,
        index: u16,
    },
    User {
        user: String,
    },
    Mailbox {
        user: String,
        guid: MailboxGuid,
    },
    Uid {
        user: String,
        guid: MailboxGuid,
        level: u8,
        index: u32,
    },
}

/// A child, named relative to its parent: slot for fan-out nodes, name or GUID otherwise.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChildId {
    Slot(u8),
    User(String),
    Mailbox(MailboxGuid),
    UidRoot,
}

/// A user with its summary and its mailboxes' summaries (the answer to `Request::Users`).
pub type UserListing = (String, Summary, Vec<(MailboxGuid, Summary)>);

/// A node's summary: truncated hash and the number of messages below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub hash: [u8; 4],
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Compare roots. The reply carries the root's children too when the roots differ.
    Root { root: [u8; 32] },
    /// The children of a node.
    Children { node: WireKey },
    /// A mailbox's record or tombstone, and its node summary.
    Mailbox { user: String, guid: MailboxGuid },
    /// Every non-empty node of one level of a mailbox's UID tree.
    UidLevel {
        user: String,
        guid: MailboxGuid,
        level: u8,
    },
    /// The entries of one bucket: UID and truncated entry hash.
    Entries {
        user: String,
        guid: MailboxGuid,
        bucket: u32,
    },
    /// Full records and tombstones at these UIDs.
    Records {
        user: String,
        guid: MailboxGuid,
        uids: Vec<u32>,
    },
    /// Every message and tombstone of a mailbox.
    Full { user: String, guid: MailboxGuid },
    /// Message bodies by digest.
    Bodies { digests: Vec<Digest> },
    /// Apply change groups (each re-checks that its mailbox is as the session saw it).
    Apply { groups: Vec<ChangeGroup> },
    /// Bodies sent ahead of the Apply that uses them (staged under their digests).
    PutBodies { bodies: Vec<Vec<u8>> },
    /// The users of a user bucket, each with its mailboxes' summaries: two levels in one
    /// round (a differing bucket nearly always means a differing user).
    Users { bucket: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Root {
        equal: bool,
        count: u64,
        children: Vec<(ChildId, Summary)>,
    },
    Children {
        children: Vec<(ChildId, Summary)>,
    },
    Mailbox {
        record: Option<MailboxRecord>,
        tombstone: Option<MailboxTombstone>,
        node: Option<Summary>,
    },
    UidLevel {
        nodes: Vec<(u32, Summary)>,
    },
    Entries {
        entries: Vec<(u32, [u8; 4])>,
    },
    Records {
        messages: Vec<(u32, MessageRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    },
    Full {
        messages: Vec<(u32, MessageRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    },
    Bodies {
        bodies: Vec<Option<Vec<u8>>>,
    },
    Applied {
        applied: Vec<bool>,
        root: [u8; 32],
    },
    Staged {
        count: u64,
    },
    Users {
        users: Vec<UserListing>,
    },
}

/// One round: the session's questions, with the hash window of this session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRequest {
    pub version: u8,
    /// Which 4 bytes of each hash are compared (rotates per session).
    pub window: u8,
    pub requests: Vec<Request>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReply {
    pub version: u8,
    pub replies: Vec<Reply>,
}

/// Why a body could not be decoded. The peer answers 400 and changes nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("wire version {0} is not supported (this merkmail speaks version {WIRE_VERSION})")]
    Version(u8),
    #[error("too many items: {0}")]
    TooMany(String),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain data types cannot fail; an empty body would be refused loudly.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub fn decode_request(bytes: &[u8]) -> Result<RoundRequest, WireError> {
    let round: RoundRequest =
        postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if round.version != WIRE_VERSION {
        return Err(WireError::Version(round.version));
    }
    if round.requests.len() > MAX_REQUESTS {
        return Err(WireError::TooMany(format!(
            "{} requests in one round (at most {MAX_REQUESTS})",
            round.requests.len()
        )));
    }
    for r in &round.requests {
        let n = match r {
            Request::Records { uids, .. } => uids.len(),
            Request::Bodies { digests } => digests.len(),
            Request::PutBodies { bodies } => bodies.len(),
            Request::Apply { groups } => groups.iter().map(|g| g.changes.len()).sum(),
            _ => 0,
        };
        if n > MAX_ITEMS {
            return Err(WireError::TooMany(format!(
                "{n} items in one request (at most {MAX_ITEMS})"
            )));
        }
    }
    Ok(round)
}

pub fn decode_reply(bytes: &[u8]) -> Result<RoundReply, WireError> {
    let reply: RoundReply =
        postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if reply.version != WIRE_VERSION {
        return Err(WireError::Version(reply.version));
    }
    Ok(reply)
}
