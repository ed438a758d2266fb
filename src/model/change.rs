//! A replicated change and a guarded group of them: what a session or the journal hands the
//! store to apply verbatim. Their postcard encodings are part of the wire protocol
//! (docs/PROTOCOL.md): change them only with a wire version bump.

use super::{MailboxGuid, MailboxRecord, MailboxTombstone, MessageRecord, Stamp, Tombstone};

/// One replicated change, to be applied verbatim.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Create or overwrite a mailbox record.
    Mailbox { user: String, record: MailboxRecord },
    /// Create or overwrite a message. `body` is needed when the store does not hold the
    /// digest yet; it is checked against the digest before anything is stored.
    Message {
        user: String,
        guid: MailboxGuid,
        uid: u32,
        record: MessageRecord,
        body: Option<Vec<u8>>,
    },
    /// Remove a message (if present) and keep its tombstone.
    Expunge {
        user: String,
        guid: MailboxGuid,
        uid: u32,
        tombstone: Tombstone,
    },
    /// Remove a mailbox with its messages and keep its tombstone.
    DeleteMailbox {
        user: String,
        tombstone: MailboxTombstone,
    },
    /// Remove a message without a tombstone (its UID lost its meaning: UIDVALIDITY changed).
    Remove {
        user: String,
        guid: MailboxGuid,
        uid: u32,
    },
}

impl Change {
    /// The user and mailbox the change touches.
    pub fn mailbox(&self) -> (&str, MailboxGuid) {
        match self {
            Change::Mailbox { user, record } => (user, record.guid),
            Change::Message { user, guid, .. }
            | Change::Expunge { user, guid, .. }
            | Change::Remove { user, guid, .. } => (user, *guid),
            Change::DeleteMailbox { user, tombstone } => (user, tombstone.guid),
        }
    }

    /// Every stamp the change would store: the record's name, subscription and last change;
    /// a message's append and flag stamps; a tombstone's stamp and origin. What a peer's clock
    /// put into it, checked against this node's before it is applied ([`super::first_ahead`]).
    pub fn stamps(&self) -> Vec<Stamp> {
        match self {
            Change::Mailbox { record, .. } => vec![
                record.name_stamp,
                record.subscribed_stamp,
                record.last_change,
            ],
            Change::Message { record, .. } => std::iter::once(record.appended)
                .chain(record.flags.entries().map(|(_, state)| state.stamp))
                .collect(),
            Change::Expunge { tombstone, .. } => std::iter::once(tombstone.stamp)
                .chain(tombstone.origin)
                .collect(),
            Change::DeleteMailbox { tombstone, .. } => vec![tombstone.stamp],
            Change::Remove { .. } => Vec::new(),
        }
    }

    /// Body bytes carried by the change (reported apart from metadata).
    pub fn body_len(&self) -> u64 {
        match self {
            Change::Message { body: Some(b), .. } => b.len() as u64,
            _ => 0,
        }
    }
}

/// Changes to one mailbox, applied only if the mailbox is still as the session saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeGroup {
    pub user: String,
    pub guid: MailboxGuid,
    /// The mailbox node's hash as the session saw it, truncated with `window`
    /// (`NodeHash::EMPTY` truncated when the mailbox was absent).
    pub window: u8,
    pub expect: [u8; 4],
    pub changes: Vec<Change>,
}
