//! The reconciliation wire format: one postcard-encoded request per round trip, holding every
//! question the initiator has for that round; one reply holding every answer, in order.
//! docs/PROTOCOL.md describes it byte by byte.

use crate::merkle::{list_hash, NodeHash};
use crate::model::{
    Change, ChangeGroup, Digest, FlagSet, MailboxGuid, MailboxRecord, MailboxTombstone, Md5,
    MessageRecord, Stamp, Tombstone,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Message bodies as serde byte strings rather than sequences of `u8`: postcard writes both
/// the same way (a varint length, then the bytes), so the wire is unchanged, but a byte string
/// is copied whole where a sequence went through the serializer byte by byte (5 % of a
/// receiving side's CPU in an initial copy, docs/PERFORMANCE.md).
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;
    use serde::{Deserialize, Serialize};

    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Buf(Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Buf, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a message body")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Buf, E> {
                    Ok(Buf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(Buf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    pub mod one {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            Ok(Buf::deserialize(d)?.0)
        }
    }

    pub mod maybe {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            v.as_deref().map(Bytes).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Ok(Option::<Buf>::deserialize(d)?.map(|b| b.0))
        }
    }

    pub mod many {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|b| Bytes(b)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            Ok(Vec::<Buf>::deserialize(d)?
                .into_iter()
                .map(|b| b.0)
                .collect())
        }
    }

    pub mod many_maybe {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|b| b.as_deref().map(Bytes)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
            Ok(Vec::<Option<Buf>>::deserialize(d)?
                .into_iter()
                .map(|b| b.map(|b| b.0))
                .collect())
        }
    }
}

/// Bumped on any incompatible change; a peer answers another version with 400.
pub const WIRE_VERSION: u8 = 4;
/// At most this many questions in one round.
pub const MAX_REQUESTS: usize = 100_000;
/// Bodies travel in batches of about this many bytes (at least one body per batch), well
/// under the peer's 64 MiB request limit.
pub const BODY_BATCH_BYTES: u64 = 8 << 20;
/// At most this many UIDs, ranges, users, hashes, digests or changes in one question (memory
/// is bounded by the 64 MiB body limit anyway; this stops a tiny body from announcing a huge
/// list).
pub const MAX_ITEMS: usize = 1_000_000;
/// A bucket of 64 UIDs is compared as 8 runs of 8 UIDs.
pub const RUN_SHIFT: u32 = 3;
pub const RUNS_PER_BUCKET: u32 = 8;

/// A truncated hash as peers compare it: 3 bytes of a 32-byte hash, starting at the session's
/// window. A false match (2⁻²⁴ per differing comparison) is caught by the final 32-byte root
/// comparison; the next session uses another window.
pub type Fp = [u8; 3];

/// Three bytes of `h` starting at `window` (wrapping).
pub fn fp(h: &NodeHash, window: u8) -> Fp {
    let t = h.truncated(window);
    [t[0], t[1], t[2]]
}

/// A mailbox of a user, named by its whole GUID or by the first 4 bytes of it. The asker uses a
/// prefix only for a mailbox both sides hold whose prefix is unique among the user's GUIDs on
/// both sides; the responder resolves it among the user's mailboxes, and refuses a prefix that
/// names none or several (an Apply group is then stale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GuidRef {
    Prefix([u8; 4]),
    Full(MailboxGuid),
}

impl GuidRef {
    pub fn prefix_of(guid: &MailboxGuid) -> [u8; 4] {
        [guid.0[0], guid.0[1], guid.0[2], guid.0[3]]
    }

    /// Whether this names `guid`.
    pub fn names(&self, guid: &MailboxGuid) -> bool {
        match self {
            GuidRef::Prefix(p) => *p == GuidRef::prefix_of(guid),
            GuidRef::Full(g) => g == guid,
        }
    }
}

/// A message record with the body it belongs to: MD5, digest and size are the body's.
pub fn record_with_body(
    internal_date: i64,
    flags: FlagSet,
    appended: Stamp,
    body: &[u8],
) -> MessageRecord {
    MessageRecord {
        md5: Md5::of(body),
        digest: Digest::of(body),
        size: body.len() as u64,
        internal_date,
        flags,
        appended,
    }
}

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

/// A node's 4-byte truncated hash and the number of messages below it (the Mailbox answer's
/// node, which an Apply `expect`s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub hash: [u8; 4],
    pub count: u64,
}

/// The non-empty children of a fan-out-16 node: a bitmap of slots (bit i = slot i) and one
/// truncated hash per set bit, in slot order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    pub present: u16,
    pub hashes: Vec<Fp>,
}

impl Slots {
    /// (slot, hash) pairs; `None` if the bitmap and the hashes disagree.
    pub fn pairs(&self) -> Option<Vec<(u8, Fp)>> {
        if self.present.count_ones() as usize != self.hashes.len() {
            return None;
        }
        Some(
            (0..16u8)
                .filter(|s| self.present & (1 << s) != 0)
                .zip(self.hashes.iter().copied())
                .collect(),
        )
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (u8, Fp)>) -> Slots {
        let mut s = Slots::default();
        for (slot, h) in pairs {
            s.present |= 1 << (slot & 15);
            s.hashes.push(h);
        }
        s
    }
}

/// One of the asker's users in a differing user bucket: its name, a digest of its mailbox
/// GUIDs (in GUID order) and each mailbox's truncated hash in that order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserHashes {
    pub name: String,
    pub guids: Fp,
    pub mailboxes: Vec<Fp>,
}

/// A user the responder sees differently from the asker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDiff {
    pub user: UserRef,
    /// The responder's mailbox GUIDs, in order, when they differ from the asker's (or the
    /// asker did not list the user); `None` means the same GUIDs as the asker's, so
    /// positions name mailboxes.
    pub listing: Option<Vec<MailboxGuid>>,
    /// The responder's mailboxes whose hash matches none of the asker's for this user.
    pub mailboxes: Vec<MailboxDiff>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserRef {
    /// The asker's user at this position of the question.
    Asked(u32),
    /// A user the asker did not list.
    New(String),
}

/// A differing mailbox: enough to compare its UID tree at once, without another round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxDiff {
    /// Position in the asker's list (or in `listing` when present).
    pub at: u32,
    /// The mailbox node's 4-byte truncated hash: what an Apply to it must `expect`.
    pub node: [u8; 4],
    pub state: MailboxState,
    /// The UID-tree level of `nodes`: the lowest with at most 16 non-empty nodes.
    pub level: u8,
    /// The non-empty nodes of that level: (index, hash).
    pub nodes: Vec<(u32, Fp)>,
}

/// A mailbox record, as a delta when the asker holds the same GUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxState {
    /// The fields that move with mail, and a truncated hash of the rest (name, subscribed,
    /// their stamps) for the asker to compare with its own record.
    Delta {
        uidvalidity: u32,
        uidnext: u32,
        last_change: Stamp,
        rest: Fp,
    },
    Full(MailboxRecord),
}

/// The truncated hash of a mailbox record's slow-moving fields (name, subscription, stamps).
pub fn record_rest(r: &MailboxRecord, window: u8) -> Fp {
    let mut h = blake3::Hasher::new();
    h.update(b"R");
    h.update(&r.guid.0);
    h.update(&(r.name.len() as u32).to_be_bytes());
    h.update(r.name.as_bytes());
    h.update(&[r.subscribed as u8]);
    h.update(&r.name_stamp.to_bytes());
    h.update(&r.subscribed_stamp.to_bytes());
    fp(&NodeHash(*h.finalize().as_bytes()), window)
}

/// The digest of a user's mailbox GUIDs, in order.
pub fn guid_digest<'a>(guids: impl IntoIterator<Item = &'a MailboxGuid>, window: u8) -> Fp {
    fp(
        &list_hash(b'G', guids.into_iter().map(|g| &g.0[..])),
        window,
    )
}

/// The hash of a run of entries (their entry hashes in UID order).
pub fn run_hash<'a>(entries: impl IntoIterator<Item = &'a NodeHash>, window: u8) -> Fp {
    fp(
        &list_hash(b'N', entries.into_iter().map(|e| &e.0[..])),
        window,
    )
}

/// One bucket of the asker's, as 8 runs of 8 UIDs: which runs hold messages below the
/// limit (bitmap) and their hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRuns {
    pub bucket: u32,
    pub present: u8,
    pub hashes: Vec<Fp>,
}

/// A message record, or only its flags when the asker holds the same digest at that UID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireRecord {
    Full(MessageRecord),
    Flags(FlagSet),
    /// A message new to the asker, with its body (MD5, digest and size are the body's).
    New {
        internal_date: i64,
        flags: FlagSet,
        appended: Stamp,
        #[serde(with = "bytes::one")]
        body: Vec<u8>,
    },
}

impl WireRecord {
    pub fn body_len(&self) -> u64 {
        match self {
            WireRecord::New { body, .. } => body.len() as u64,
            _ => 0,
        }
    }
}

/// The first 4 bytes of a digest (which message the asker holds at a UID).
pub fn digest_prefix(d: &Digest) -> [u8; 4] {
    [d.0[0], d.0[1], d.0[2], d.0[3]]
}

/// A run of up to 8 UIDs: which are live (bit i = first UID + i) and their entry hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub run: u8,
    pub present: u8,
    pub hashes: Vec<Fp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Compare roots. The reply carries the root's children too when the roots differ.
    Root { root: [u8; 32] },
    /// The children of a top node above the user buckets, or of a UID-tree interior node.
    Children { node: WireKey },
    /// A mailbox's record or tombstone, and its node summary.
    Mailbox { user: String, guid: GuidRef },
    /// A differing user bucket, with the asker's users in it and their mailboxes' hashes.
    /// The answer names only what differs, with each differing mailbox's state and UID tree.
    Users { bucket: u16, users: Vec<UserHashes> },
    /// What the asker still needs to compare of one mailbox: records at `uids` (gap-coded;
    /// with the first 4 bytes of the digest the asker holds there, so a message whose digest
    /// matches comes back as its flags alone), records in inclusive `ranges` and, when
    /// `tail`, from `limit` (the smaller UIDNEXT) on; and differing buckets compared below
    /// `limit` as 8 runs of 8 UIDs each.
    Records {
        user: String,
        guid: GuidRef,
        uids: Vec<(u32, Option<[u8; 4]>)>,
        ranges: Vec<(u32, u32)>,
        limit: Option<u32>,
        tail: bool,
        buckets: Vec<BucketRuns>,
    },
    /// Every message and tombstone of a mailbox.
    Full { user: String, guid: GuidRef },
    /// Message bodies by digest.
    Bodies { digests: Vec<Digest> },
    /// Apply change groups (each re-checks that its mailbox is as the session saw it).
    Apply { groups: Vec<ApplyGroup> },
    /// Bodies sent ahead of the Apply that uses them (staged under their digests).
    PutBodies {
        #[serde(with = "bytes::many")]
        bodies: Vec<Vec<u8>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Root {
        equal: bool,
        children: Slots,
    },
    Children {
        children: Slots,
    },
    Mailbox {
        record: Option<MailboxRecord>,
        tombstone: Option<MailboxTombstone>,
        node: Option<Summary>,
    },
    Users {
        users: Vec<UserDiff>,
    },
    /// Per bucket asked, the responder's runs that differ (a run the asker sent and that
    /// is not here is equal); then records with gap-coded UIDs.
    Records {
        runs: Vec<Vec<Run>>,
        messages: Vec<(u32, WireRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    },
    Full {
        messages: Vec<(u32, WireRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    },
    Bodies {
        #[serde(with = "bytes::many_maybe")]
        bodies: Vec<Option<Vec<u8>>>,
    },
    Applied {
        applied: Vec<bool>,
        root: [u8; 32],
    },
    Staged {
        count: u64,
    },
}

/// Changes to one mailbox, applied only if its node hash (truncated with the round's window)
/// is still `expect`. Changes do not repeat the user and GUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyGroup {
    pub user: String,
    pub guid: GuidRef,
    pub expect: [u8; 4],
    pub changes: Vec<WireChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireChange {
    /// Create or overwrite the mailbox record.
    Mailbox(MailboxRecord),
    /// The peer's own record with UIDNEXT and `last_change` moved (nothing else differs);
    /// `last_change` `None` is the largest stamp the group's changes carry ([`group_stamp`]).
    Next {
        uidnext: u32,
        last_change: Option<Stamp>,
    },
    Message {
        uid: u32,
        record: MessageRecord,
        #[serde(with = "bytes::maybe")]
        body: Option<Vec<u8>>,
    },
    /// The message the peer holds at `uid` (same digest) takes these flag entries.
    Flags {
        uid: u32,
        flags: FlagSet,
    },
    /// A message with its body; MD5, digest and size are the body's.
    New {
        uid: u32,
        internal_date: i64,
        flags: FlagSet,
        appended: Stamp,
        #[serde(with = "bytes::one")]
        body: Vec<u8>,
    },
    /// The message the peer holds at `from` (same MD5, digest, size and date), also at `uid`
    /// with these flags and append stamp (a message renumbered by a UID clash).
    Move {
        uid: u32,
        from: u32,
        flags: FlagSet,
        appended: Stamp,
    },
    /// Expunge `uid`; the tombstone's digest is `digest`, or when `None` the digest of the
    /// message the peer holds there; `origin` as in [`Tombstone`] (a writer's expunge names
    /// the append stamp of what it removed).
    Expunge {
        uid: u32,
        digest: Option<Digest>,
        stamp: Stamp,
        origin: Option<Stamp>,
    },
    DeleteMailbox(MailboxTombstone),
    Remove {
        uid: u32,
    },
}

impl From<ChangeGroup> for ApplyGroup {
    /// Every change verbatim (no deltas): what a peer with nothing to compare against sends.
    fn from(g: ChangeGroup) -> ApplyGroup {
        ApplyGroup {
            user: g.user,
            guid: GuidRef::Full(g.guid),
            expect: g.expect,
            changes: g.changes.into_iter().map(WireChange::verbatim).collect(),
        }
    }
}

impl WireChange {
    /// A store change as it is, without its user and GUID (the group names them).
    pub fn verbatim(c: Change) -> WireChange {
        match c {
            Change::Mailbox { record, .. } => WireChange::Mailbox(record),
            Change::Message {
                uid, record, body, ..
            } => WireChange::Message { uid, record, body },
            Change::Expunge { uid, tombstone, .. } => WireChange::Expunge {
                uid,
                digest: Some(tombstone.digest),
                stamp: tombstone.stamp,
                origin: tombstone.origin,
            },
            Change::DeleteMailbox { tombstone, .. } => WireChange::DeleteMailbox(tombstone),
            Change::Remove { uid, .. } => WireChange::Remove { uid },
        }
    }

    /// Body bytes carried by the change (reported apart from metadata).
    pub fn body_len(&self) -> u64 {
        match self {
            WireChange::Message { body: Some(b), .. } | WireChange::New { body: b, .. } => b_len(b),
            _ => 0,
        }
    }
}

/// The largest stamp a group's changes carry (appends, flag entries, expunges, deletion): what
/// a `Next` without `last_change` stands for.
pub fn group_stamp(changes: &[WireChange]) -> Option<Stamp> {
    changes
        .iter()
        .flat_map(|c| match c {
            WireChange::Message { record, .. } => [Some(record.appended), record.flags.latest()],
            WireChange::New {
                appended, flags, ..
            } => [Some(*appended), flags.latest()],
            WireChange::Move {
                appended, flags, ..
            } => [Some(*appended), flags.latest()],
            WireChange::Flags { flags, .. } => [flags.latest(), None],
            WireChange::Expunge { stamp, .. } => [Some(*stamp), None],
            WireChange::DeleteMailbox(t) => [Some(t.stamp), None],
            WireChange::Mailbox(_) | WireChange::Next { .. } | WireChange::Remove { .. } => {
                [None, None]
            }
        })
        .flatten()
        .max()
}

fn b_len(b: &[u8]) -> u64 {
    b.len() as u64
}

impl Request {
    /// Message body bytes carried by the question (reported apart from metadata).
    pub fn body_len(&self) -> u64 {
        match self {
            Request::Apply { groups } => groups
                .iter()
                .flat_map(|g| &g.changes)
                .map(WireChange::body_len)
                .sum(),
            Request::PutBodies { bodies } => bodies.iter().map(|b| b_len(b)).sum(),
            _ => 0,
        }
    }
}

impl Reply {
    /// Message body bytes carried by the answer (reported apart from metadata).
    pub fn body_len(&self) -> u64 {
        match self {
            Reply::Bodies { bodies } => bodies.iter().flatten().map(|b| b_len(b)).sum(),
            Reply::Records { messages, .. } | Reply::Full { messages, .. } => {
                messages.iter().map(|(_, r)| r.body_len()).sum()
            }
            _ => 0,
        }
    }
}

/// One round: the session's questions, with the hash window of this session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRequest {
    pub version: u8,
    /// Where each compared hash's bytes start (rotates per session).
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
    // Sized first (a count, no bytes copied), so that a request carrying megabytes of bodies
    // is written into one allocation instead of one grown by doubling (13 % of a sender's
    // time in an initial copy went to the regrowing).
    let size =
        postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(0);
    // Serialising our own plain data types cannot fail; an empty body would be refused loudly.
    postcard::to_extend(value, Vec::with_capacity(size)).unwrap_or_default()
}

/// UIDs in increasing order as gaps (the first from 0), so that each takes one or two bytes.
pub fn to_gaps(uids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut prev = 0u32;
    uids.into_iter()
        .map(|u| {
            let gap = u.wrapping_sub(prev);
            prev = u;
            gap
        })
        .collect()
}

/// The UIDs back from gaps; `None` if they overflow 32 bits.
pub fn from_gaps(gaps: &[u32]) -> Option<Vec<u32>> {
    let mut prev = 0u32;
    gaps.iter()
        .map(|g| {
            prev = prev.checked_add(*g)?;
            Some(prev)
        })
        .collect()
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
    let mut total = 0usize;
    for r in &round.requests {
        let n = match r {
            Request::Records {
                uids,
                ranges,
                buckets,
                ..
            } => {
                uids.len()
                    + ranges.len()
                    + buckets.len()
                    + buckets.iter().map(|b| b.hashes.len()).sum::<usize>()
            }
            Request::Bodies { digests } => digests.len(),
            Request::PutBodies { bodies } => bodies.len(),
            Request::Apply { groups } => groups.iter().map(|g| g.changes.len()).sum(),
            Request::Users { users, .. } => {
                users.len() + users.iter().map(|u| u.mailboxes.len()).sum::<usize>()
            }
            _ => 0,
        };
        if n > MAX_ITEMS {
            return Err(WireError::TooMany(format!(
                "{n} items in one request (at most {MAX_ITEMS})"
            )));
        }
        total = total.saturating_add(n);
    }
    if total > 4 * MAX_ITEMS {
        return Err(WireError::TooMany(format!(
            "{total} items in one round (at most {})",
            4 * MAX_ITEMS
        )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_invert() {
        let uids = vec![1, 2, 64, 65, 1000, u32::MAX];
        assert_eq!(from_gaps(&to_gaps(uids.clone())), Some(uids));
        assert_eq!(from_gaps(&[u32::MAX, 1]), None);
    }

    #[test]
    fn slots_pairs_invert_and_refuse_a_mismatch() {
        let pairs = vec![(0u8, [1, 2, 3]), (5, [4, 5, 6]), (15, [7, 8, 9])];
        let s = Slots::from_pairs(pairs.clone());
        assert_eq!(s.pairs(), Some(pairs));
        let bad = Slots {
            present: 3,
            hashes: vec![[0; 3]],
        };
        assert_eq!(bad.pairs(), None);
    }

    /// Bodies as byte strings encode exactly as the sequences of `u8` they were before (the
    /// wire stays v4), and each decodes the other.
    #[test]
    fn bodies_as_byte_strings_keep_the_wire_bytes() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Plain(Vec<u8>, Option<Vec<u8>>, Vec<Vec<u8>>, Vec<Option<Vec<u8>>>);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Strings(
            #[serde(with = "bytes::one")] Vec<u8>,
            #[serde(with = "bytes::maybe")] Option<Vec<u8>>,
            #[serde(with = "bytes::many")] Vec<Vec<u8>>,
            #[serde(with = "bytes::many_maybe")] Vec<Option<Vec<u8>>>,
        );
        let long: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for (a, b, c, d) in [
            (vec![], None, vec![], vec![]),
            (
                b"abc".to_vec(),
                Some(long.clone()),
                vec![vec![], long.clone(), b"x".to_vec()],
                vec![None, Some(long.clone()), Some(vec![])],
            ),
        ] {
            let plain = Plain(a.clone(), b.clone(), c.clone(), d.clone());
            let strings = Strings(a, b, c, d);
            let bytes = postcard::to_allocvec(&plain).expect("encode");
            assert_eq!(postcard::to_allocvec(&strings).expect("encode"), bytes);
            assert_eq!(
                postcard::from_bytes::<Strings>(&bytes).expect("decode"),
                strings
            );
            assert_eq!(
                postcard::from_bytes::<Plain>(&bytes).expect("decode"),
                plain
            );
        }
    }
}
