//! The records the store keeps: what a user, a mailbox, a message and a tombstone hold.

use super::flags::FlagSet;
use super::ids::{Digest, MailboxGuid, Md5};
use super::stamp::Stamp;
use serde::{Deserialize, Serialize};

/// A user exists once it has an INBOX; the record only says when it came into being.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub created: Stamp,
}

/// A mailbox, identified by its GUID; the name can change, the GUID cannot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub guid: MailboxGuid,
    pub name: String,
    pub uidvalidity: u32,
    /// The next UID this mailbox will assign; never decreases.
    pub uidnext: u32,
    pub subscribed: bool,
    /// Stamp of the last rename (or of the creation).
    pub name_stamp: Stamp,
    /// Stamp of the last subscription change (or of the creation).
    pub subscribed_stamp: Stamp,
    /// Stamp of the latest change of any kind inside the mailbox. Local bookkeeping for the
    /// delete-versus-change rule; not hashed, because histories that end in the same state
    /// may have passed through different changes.
    pub last_change: Stamp,
}

/// A live message: its content ids, size, date and flags. The body is stored once per digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub md5: Md5,
    pub digest: Digest,
    pub size: u64,
    /// IMAP INTERNALDATE as seconds since the Unix epoch.
    pub internal_date: i64,
    pub flags: FlagSet,
    /// Stamp of the append (or of the copy that put it under this UID).
    pub appended: Stamp,
}

/// What remains of an expunged message: enough to tell "expunged" from "never received".
///
/// A message's identity is its digest and its `appended` stamp (one append, wherever a UID
/// clash has moved it). A tombstone with an `origin` is a writer's expunge: it names the
/// identity it removed, and kills that identity at every UID of the mailbox (a copy a clash
/// renumbered elsewhere included). A tombstone without one only says that the message left
/// this UID for a higher one (a UID clash, or a duplicate dropped): it never kills the
/// message where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub digest: Digest,
    pub stamp: Stamp,
    /// The expunged message's `appended` stamp, for a writer's expunge; `None` for a move.
    pub origin: Option<Stamp>,
}

impl Tombstone {
    /// The tombstone a writer's expunge of `message` leaves.
    pub fn expunge(message: &MessageRecord, stamp: Stamp) -> Tombstone {
        Tombstone {
            digest: message.digest,
            stamp,
            origin: Some(message.appended),
        }
    }

    /// The tombstone a message leaves at a UID it moved away from.
    pub fn moved(digest: Digest, stamp: Stamp) -> Tombstone {
        Tombstone {
            digest,
            stamp,
            origin: None,
        }
    }
}

impl MessageRecord {
    /// The message's identity: one append, whatever UID it ends up under.
    pub fn identity(&self) -> (Digest, Stamp) {
        (self.digest, self.appended)
    }
}

/// What remains of a deleted mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxTombstone {
    pub guid: MailboxGuid,
    pub name: String,
    pub stamp: Stamp,
    /// Set when the mailbox was not deleted by a writer but merged into another (two GUIDs
    /// with one name): a replica that still holds it moves its messages there.
    pub merged_into: Option<MailboxGuid>,
}
