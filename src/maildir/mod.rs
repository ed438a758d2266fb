//! Maildir++ as Dovecot lays it out: scan a tree on import, write one on export.
//!
//! The submodules other than `import` and `export` are pure filesystem code that knows nothing
//! of merkmail's store: scanning hands the caller a list of folders and message *paths* (bodies are read by the caller, one at a time,
//! so memory stays bounded), and export takes messages one at a time from the caller.
//!
//! Map:
//! - [`utf7`]: IMAP modified UTF-7, the on-disk encoding of folder names;
//! - [`folder`]: mailbox name ⇄ `.Folder.Sub` directory name, and the `subscriptions` file;
//! - [`name`]: message file names (`<base>:2,<flags>`) and the `dovecot-keywords` file;
//! - [`uidlist`]: the `dovecot-uidlist` file (UID ⇄ base name, UIDVALIDITY, UIDNEXT);
//! - [`scan`]: walks a Maildir++ root into [`ScannedFolder`]s;
//! - [`write`]: [`MaildirWriter`], which exports into an empty directory;
//! - [`lock`]: Dovecot's dotlocks (`dovecot-uidlist.lock`), taken and judged as Dovecot does;
//! - [`live`]: writing into a Maildir Dovecot serves: numbering and delivery under that lock;
//! - [`fault`]: named points inside a pass, where a test crashes the process or acts;
//! - [`import`](mod@import) and [`export`](mod@export): the glue between these and the store.
//!
//! **Invariant**: nothing read from disk (file names, uidlist, keyword and subscription files)
//! can make this module panic; bad input is an error naming the path, or is skipped and reported
//! to the caller with a reason.
//!
//! **Boundary**: no message body is ever parsed; bytes are written and stat'ed, never rewritten.

pub mod backend;
pub mod export;
pub mod fault;
pub mod folder;
pub mod import;
pub mod inotify;
pub mod live;
pub mod lock;
pub mod name;
pub mod scan;
pub mod uidlist;
pub mod utf7;
pub mod watch;
pub mod write;

use std::path::PathBuf;

pub use export::{export, ExportError, ExportReport};
pub use folder::{folder_dir_name, mailbox_name_from_dir};
pub use import::{import, ImportError, ImportReport};
pub use live::{LiveError, LiveFolder, LockedFolder, Numbered, NumberingReport};
pub use lock::{DotLock, LockError, LockSettings};
pub use name::{parse_filename, parse_keywords_file, ParsedName};
pub use scan::{scan, ScannedFolder, ScannedMessage};
pub use uidlist::{format_uidlist, parse_uidlist, UidList};
pub use write::{DroppedFlag, ExportSummary, MaildirWriter};

/// The name merkmail (and IMAP) gives the inbox; in Maildir++ it is the root directory itself.
pub const INBOX: &str = "INBOX";

/// The five IMAP system flags that Maildir stores as upper-case letters, with their letters,
/// in the ASCII order the Maildir specification asks file names to use.
pub const SYSTEM_FLAGS: [(char, &str); 5] = [
    ('D', "\\Draft"),
    ('F', "\\Flagged"),
    ('R', "\\Answered"),
    ('S', "\\Seen"),
    ('T', "\\Deleted"),
];

/// Maildir keyword letters run from 'a' to 'z', so a folder can name at most 26 keywords.
pub const MAX_KEYWORDS: usize = 26;

/// Everything that can go wrong in this module. Each variant names what it is about (a path, a
/// mailbox name, a line) and the problem. None leaves a half-written message behind: export
/// writes into tmp/ and renames, so a failure leaves at worst a stray file in tmp/.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// A filesystem call failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A mailbox name cannot be stored as a Maildir++ folder (it would escape the root, collide
    /// with the separator, or cannot be represented).
    #[error("mailbox name {name:?} cannot be stored in Maildir++: {problem}")]
    InvalidMailboxName { name: String, problem: String },
    /// A directory name is not a well-formed Maildir++ folder name.
    #[error("directory {dir:?} is not a valid Maildir++ folder name: {problem}")]
    InvalidFolderDir { dir: String, problem: String },
    /// The text of a dovecot-uidlist file is malformed.
    #[error("dovecot-uidlist line {line}: {problem}")]
    Uidlist { line: usize, problem: String },
    /// The scan root does not exist or does not look like a Maildir.
    #[error("{}: not a Maildir: {problem}", path.display())]
    NotMaildir { path: PathBuf, problem: String },
    /// Export refuses to touch a directory that already holds something.
    #[error("{}: refusing to export: {problem}", path.display())]
    TargetNotEmpty { path: PathBuf, problem: String },
    /// The caller used [`MaildirWriter`] out of order or with inconsistent values (a bug in the
    /// caller, not in the data on disk). Nothing is written for the refused call.
    #[error("export of mailbox {mailbox:?}: {problem}")]
    Export { mailbox: String, problem: String },
}

impl MaildirError {
    /// Shorthand for [`MaildirError::Io`], used with `map_err`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> MaildirError {
        let path = path.into();
        move |source| MaildirError::Io { path, op, source }
    }
}
