//! How far a long piece of work has come: what the layers below the command line report
//! (import, export, verify, a sync session, a scan of a Maildir store) and the command line
//! renders on stderr. Pure: it carries counts, never a time or a place to print to.

/// One report of progress. The worker calls its observer as often as it likes (after every
/// message, batch or round); the observer decides what to show and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Items finished so far (messages; bodies for `verify --bodies`).
    pub done: u64,
    /// How many items the work holds in all, once known: an import or an export knows it
    /// before it starts; a sync only once it has compared the trees and made its plan.
    pub total: Option<u64>,
    /// Bytes of the items finished so far (for a sync: everything moved both ways so far,
    /// bodies and metadata).
    pub bytes: u64,
}

impl Progress {
    /// Progress of `done` of a known `total`.
    pub fn of(done: u64, total: u64, bytes: u64) -> Progress {
        Progress {
            done,
            total: Some(total),
            bytes,
        }
    }
}

/// An observer that ignores every report, for callers that show none.
pub fn no_progress(_: Progress) {}
