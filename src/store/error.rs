//! The store's errors. Every operation that fails leaves the store exactly as it was.

use crate::model::{FlagError, NameError};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{} is not a merkmail store (no merkmail.redb inside); create one with `merkmail init --data {} --node-id ID`", .0.display(), .0.display())]
    NotAStore(PathBuf),
    #[error("{} already holds a merkmail store", .0.display())]
    AlreadyInitialised(PathBuf),
    #[error("the store in {} is in use by another process (is `merkmail serve` running on it?)", .0.display())]
    Locked(PathBuf),
    #[error("the store in {} has format {found}, but this merkmail reads format {}", .dir.display(), super::FORMAT_VERSION)]
    Format { dir: PathBuf, found: u32 },
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("user {user:?} has no mailbox {mailbox:?}")]
    UnknownMailbox { user: String, mailbox: String },
    #[error("mailbox {mailbox:?} of user {user:?} has no message with UID {uid}")]
    UnknownUid {
        user: String,
        mailbox: String,
        uid: u32,
    },
    /// A UID set (`1:5,*`) that names no message of the mailbox; nothing was changed.
    #[error("mailbox {mailbox:?} of user {user:?} has no message in the UID set {set}")]
    EmptyUidSet {
        user: String,
        mailbox: String,
        set: String,
    },
    #[error("user {user:?} already has a mailbox {mailbox:?}")]
    MailboxExists { user: String, mailbox: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Flag(#[from] FlagError),
    /// A request that is well-formed but not allowed (deleting INBOX, say).
    #[error("{0}")]
    Invalid(String),
    #[error("mailbox {mailbox:?} of user {user:?} has no UIDs left")]
    UidsExhausted { user: String, mailbox: String },
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// A body's bytes no longer match the digest they are stored under (bit rot on disk).
    /// Nothing was changed; the body is marked for repair from a peer.
    #[error("body {0} is damaged: its bytes no longer match their digest (bit rot); `merkmail verify --bodies` lists the messages that use it, and the background checker replaces it from a peer")]
    BodyDamaged(crate::model::Digest),
    /// The disk that holds the store is full: the write was not committed (the store is as
    /// it was), and the next access reopens the store (redb refuses every access after a
    /// failed write until then).
    #[error("no space left for the store: {0}; nothing was written: free some space and retry")]
    StorageFull(String),
    /// The store's file failed an I/O operation: the write was not committed, and the next
    /// access reopens the store.
    #[error("the store's file failed: {0}; nothing was written (the store is reopened on the next access)")]
    StorageFailed(String),
    #[error("storage error: {0}")]
    Db(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn from_open(e: redb::DatabaseError, dir: &std::path::Path) -> StoreError {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(dir.to_path_buf()),
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) if is_full(&io) => {
                StoreError::StorageFull(format!(
                    "cannot open the store in {}: {io}",
                    dir.display()
                ))
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
                StoreError::io(format!("cannot open the store in {}", dir.display()), io)
            }
            // redb checks its page checksums when it opens a file that was not closed cleanly.
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)) => {
                StoreError::Corrupt(format!(
                    "redb found damaged pages in {} while recovering it ({m}); restore the data directory from a backup or a peer",
                    dir.join(super::DB_FILE).display()
                ))
            }
            other => StoreError::Db(format!(
                "cannot open the store in {}: {other}",
                dir.display()
            )),
        }
    }

    /// Whether the error is the caller's fault (bad name, unknown mailbox, …) rather than the
    /// store's: the HTTP layer answers 4xx for these and 5xx for the rest.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownUser(_)
                | StoreError::UnknownMailbox { .. }
                | StoreError::UnknownUid { .. }
                | StoreError::EmptyUidSet { .. }
                | StoreError::MailboxExists { .. }
                | StoreError::Name(_)
                | StoreError::Flag(_)
                | StoreError::Invalid(_)
                | StoreError::UidsExhausted { .. }
        )
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl StoreError {
    /// Whether redb has latched an I/O failure: it refuses every later access (reads too)
    /// until the database is opened again, which `Store` does on its next access.
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::StorageFull(_) | StoreError::StorageFailed(_)
        )
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> StoreError {
        match e {
            redb::StorageError::Io(io) if is_full(&io) => StoreError::StorageFull(io.to_string()),
            redb::StorageError::Io(io) => StoreError::StorageFailed(io.to_string()),
            redb::StorageError::PreviousIo => {
                StoreError::StorageFailed("an earlier write to it failed".into())
            }
            other => StoreError::Db(other.to_string()),
        }
    }
}

/// redb's errors wrap a `StorageError` where the disk is involved: unwrap it so a full disk
/// is told apart from the rest.
macro_rules! from_redb {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StoreError {
            fn from(e: redb::$t) -> StoreError {
                match e {
                    redb::$t::Storage(s) => StoreError::from(s),
                    other => StoreError::Db(other.to_string()),
                }
            }
        }
    )*};
}
from_redb!(
    TransactionError,
    TableError,
    CommitError,
    CompactionError,
    SavepointError
);

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> StoreError {
        match e {
            redb::Error::Io(io) => StoreError::from(redb::StorageError::Io(io)),
            redb::Error::PreviousIo => StoreError::from(redb::StorageError::PreviousIo),
            other => StoreError::Db(other.to_string()),
        }
    }
}
