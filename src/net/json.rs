//! The JSON shapes of the mail API, shared with the CLI: `merkmail list --json` prints
//! [`MessageView`]s whether it read a data directory or asked a server, so the two cannot
//! drift. Field order is the key order the CLI has always printed (alphabetical where the
//! CLI once built the objects with `serde_json::json!`).

use crate::merkle::DEPTH;
use crate::model::{Digest, MailboxGuid, Md5};
use crate::store::{MailboxInfo, MessageInfo, Store, StoreError};
use serde::{Deserialize, Serialize};

/// One message, as `list --json` and `GET …/messages` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub digest: Digest,
    /// System flags that are set, in name order.
    pub flags: Vec<String>,
    /// INTERNALDATE, seconds since the Unix epoch.
    pub internal_date: i64,
    /// Keywords that are set, in name order.
    pub keywords: Vec<String>,
    pub mailbox: String,
    pub mailbox_guid: MailboxGuid,
    pub md5: Md5,
    pub size: u64,
    pub uid: u32,
}

impl MessageView {
    pub fn of(m: &MessageInfo) -> MessageView {
        let (flags, keywords): (Vec<_>, Vec<_>) =
            m.record.flags.live().partition(|f| f.is_system());
        MessageView {
            digest: m.record.digest,
            flags: flags.iter().map(|f| f.as_str().to_string()).collect(),
            internal_date: m.record.internal_date,
            keywords: keywords.iter().map(|f| f.as_str().to_string()).collect(),
            mailbox: m.mailbox.clone(),
            mailbox_guid: m.guid,
            md5: m.record.md5,
            size: m.record.size,
            uid: m.uid,
        }
    }

    /// Flags and keywords together in name order, as the store keeps them (the table shows
    /// them so).
    pub fn all_flags(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .flags
            .iter()
            .chain(&self.keywords)
            .map(String::as_str)
            .collect();
        all.sort_unstable();
        all
    }
}

/// One mailbox, as `mailbox list --json` and `GET …/mailboxes` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxView {
    pub guid: MailboxGuid,
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub subscribed: bool,
    pub messages: u64,
}

impl From<MailboxInfo> for MailboxView {
    fn from(m: MailboxInfo) -> MailboxView {
        MailboxView {
            guid: m.guid,
            name: m.name,
            uidvalidity: m.uidvalidity,
            uidnext: m.uidnext,
            subscribed: m.subscribed,
            messages: m.messages,
        }
    }
}

/// The store's counts, as `stats --json` and `GET /v1/mail/stats` show them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    /// Distinct bodies held (single-instance storage), and their bytes.
    pub bodies: u64,
    pub body_bytes: u64,
    /// Sum of live messages' sizes.
    pub bytes: u64,
    /// Levels of the tree from the root to a message entry.
    pub depth: u32,
    pub mailbox_tombstones: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub node_id: String,
    /// The server root, hex.
    pub root: String,
    pub tombstones: u64,
    pub users: u64,
    /// The size of the store's file in bytes, beside `bytes` (what the mail takes); absent
    /// for an in-memory store and from servers older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

impl StatsView {
    pub fn of(store: &Store) -> Result<StatsView, StoreError> {
        let c = store.counters()?;
        Ok(StatsView {
            bodies: c.bodies,
            body_bytes: c.body_bytes,
            bytes: c.message_bytes,
            depth: DEPTH,
            mailbox_tombstones: c.mailbox_tombstones,
            mailboxes: c.mailboxes,
            messages: c.messages,
            node_id: store.node_id().to_string(),
            root: store.root()?.hash.to_hex(),
            tombstones: c.tombstones,
            users: c.users,
            file_bytes: store.file_size()?,
        })
    }
}

/// `GET /v1/mail/root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootView {
    /// The server root, hex; equal roots mean equal stores.
    pub root: String,
    /// Messages under the root.
    pub messages: u64,
}

/// The answer to creating a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub guid: MailboxGuid,
}

/// The answer to an append: one UID per message, in the order sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub uids: Vec<u32>,
}

/// The answer to a flag change: the flags and keywords set afterwards, in name order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub flags: Vec<String>,
}

/// The body of an expunge, or of a flag change on many messages: exactly one of `uids`
/// (plain UIDs, each of which must exist) and `uid_set` (an IMAP UID set such as
/// `"1:5,7,9:*"`, which names the existing messages among its UIDs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpungeRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_set: Option<String>,
}

/// One message's flags after a flag change on many messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFlags {
    pub uid: u32,
    pub flags: Vec<String>,
}

/// The answer to a flag change on many messages: each message changed, in UID order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagsChanged {
    pub messages: Vec<MessageFlags>,
}

/// The answer to an expunge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expunged {
    pub expunged: usize,
}

/// Renames, deletes: nothing to say but that it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
}
