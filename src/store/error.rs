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
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
                StoreError::io(format!("cannot open the store in {}", dir.display()), io)
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
                | StoreError::MailboxExists { .. }
                | StoreError::Name(_)
                | StoreError::Flag(_)
                | StoreError::Invalid(_)
                | StoreError::UidsExhausted { .. }
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
