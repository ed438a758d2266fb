//! The replicated data model: users, mailboxes, messages, flags and change stamps.
//!
//! Pure: no I/O, no clock, no randomness. The store feeds it times and GUIDs; the
//! merkle module hashes what it defines; the clash rules (a later issue) live here too.

mod change;
mod clash;
mod flags;
mod ids;
mod inbound;
mod journal;
mod names;
mod plan;
mod progress;
mod record;
mod stamp;
mod uidset;

pub use change::{Change, ChangeGroup};
pub use clash::{
    absorb, merge_into, merge_mailbox, same_name_rank, same_name_winner, ClashStats, Forward,
    MailboxOutcome, MailboxSide,
};
pub use flags::{parse_flag_list, FlagError, FlagName, FlagOp, FlagSet, FlagState, SYSTEM_FLAGS};
pub use ids::{inbox_guid, CheckedBody, Digest, MailboxGuid, Md5};
pub use inbound::{decide_entry, EntryClash, EntryDecision};
pub use journal::{
    BatchError, JournalBatch, ShippedEntry, JOURNAL_WIRE_VERSION, MAX_BATCH_BODIES,
    MAX_BATCH_ENTRIES, MAX_ENTRY_ITEMS,
};
pub use names::{is_node_id, validate_user, MailboxName, NameError, INBOX};
pub use plan::{changes_for, ChangeCounts};
pub use progress::{no_progress, Progress};
pub use record::{MailboxRecord, MailboxTombstone, MessageRecord, Tombstone, UserRecord};
pub use stamp::{first_ahead, Hlc, Stamp, StampAhead, DEFAULT_MAX_CLOCK_SKEW_MS};
pub use uidset::{UidBound, UidSelection, UidSet, UidSetError};
