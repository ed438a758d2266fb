//! The status snapshot: what the daemon shows its operator of the node and its peers, as plain
//! data. The daemon builds it under its locks; `GET /status` serializes it, and the renderings
//! read it without them.

use serde::{Deserialize, Serialize};

use super::{Direction, Mode, Outcome, Trigger};

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// This node's id (its name among its peers).
    pub node: String,
    /// merkmail's version.
    pub version: String,
    /// Milliseconds since the Unix epoch when this snapshot was taken.
    pub now_ms: u64,
    pub uptime_s: u64,
    /// The store's root hash, hex.
    pub root: String,
    pub counts: CountsView,
    pub mode: Mode,
    /// Milliseconds a `sync`-mode write waits for a peer before falling back to async.
    pub sync_timeout_ms: u64,
    /// Seconds between background checks of one peer (before jitter).
    pub check_interval_s: u64,
    /// This node's replication journal: the last sequence number written.
    pub journal_head: u64,
    /// Entries received from peers, stored, not yet applied.
    pub inbound_pending: u64,
    /// `sync` mode: writes that waited `sync_timeout` for every peer and fell back to async.
    #[serde(default)]
    pub sync_fallbacks_total: u64,
    pub peers: Vec<PeerView>,
    /// A live-Maildir store's passes over the Maildirs (absent for a store that holds its
    /// own mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maildir: Option<MaildirView>,
}

/// The live Maildir beside a server: how its passes went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaildirView {
    /// Where the users' Maildirs are (`/srv/vmail/%u/Maildir`).
    pub template: String,
    pub passes_total: u64,
    pub failed_passes_total: u64,
    /// When the last pass ended, ms since the Unix epoch.
    pub last_pass_ms: Option<u64>,
    /// Messages taken in from the Maildirs, and delivered into them, since the start.
    pub imported_total: u64,
    pub delivered_total: u64,
    /// Mailboxes whose folders still owe changes to the disk.
    pub owed_mailboxes: u64,
    /// What the last passes could not do (at most 20, newest last): a keyword beyond 26, a
    /// folder whose UIDVALIDITY differs, a file that could not be read, a failed pass.
    pub problems: Vec<String>,
}

/// The store's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsView {
    pub users: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub message_bytes: u64,
    pub bodies: u64,
    pub body_bytes: u64,
    pub tombstones: u64,
}

/// One configured peer, as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub url: String,
    /// The peer's node id, once it has answered.
    pub node: Option<String>,
    /// Whether the last attempt to reach it succeeded.
    pub reachable: bool,
    /// Last successful contact (any request), ms since the epoch.
    pub last_contact_ms: Option<u64>,
    /// Failed attempts in a row (drives the backoff).
    pub failures_in_a_row: u32,
    /// When the next background check is due, ms since the epoch.
    pub next_check_ms: Option<u64>,
    /// The most recent check and reconciliation runs, newest first (at most 10).
    pub runs: Vec<RunView>,
    /// Sums over every run since start.
    pub repaired: RepairedView,
    pub sessions_total: u64,
    pub sessions_failed_total: u64,
    pub checks_total: u64,
    pub journal: JournalView,
    /// The session with this peer in progress, if any.
    pub session: Option<SessionView>,
    /// Reconciliation metadata bytes sent to this peer since start (every run, not only the
    /// runs kept in `runs`): the counter behind `merkmail_reconcile_bytes_total`.
    #[serde(default)]
    pub bytes_sent_total: u64,
    /// Reconciliation metadata bytes received from this peer since start.
    #[serde(default)]
    pub bytes_received_total: u64,
    /// Tombstones past their retention that this node keeps because this peer is not known to
    /// have them yet (daemon/tombstones.rs). Left out of the JSON while 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tombstones_held_back: u64,
    /// Since when (ms since the epoch) the oldest of them would have gone but for this peer.
    /// Left out of the JSON while nothing is held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_since_ms: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a run found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    /// When it started, ms since the epoch.
    pub at_ms: u64,
    pub duration_ms: u64,
    /// Why it ran.
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub rounds: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub body_bytes_sent: u64,
    pub body_bytes_received: u64,
    pub differences: RepairedView,
}

/// Differences repaired, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairedView {
    pub copied_to_peer: u64,
    pub copied_from_peer: u64,
    pub expunged: u64,
    pub flag_updates: u64,
    pub uid_clashes_renumbered: u64,
    pub mailboxes_changed: u64,
    /// Bodies that had rotted here, replaced by the peer's good copy (daemon/repair.rs).
    #[serde(default)]
    pub bodies_repaired: u64,
}

/// This node's outbound journal toward one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalView {
    /// Entries written here and not yet acknowledged by the peer.
    pub depth: u64,
    /// Age of the oldest of them, ms.
    pub oldest_unshipped_age_ms: Option<u64>,
    /// The peer fell more than the bound behind: its journal was dropped and a Merkle
    /// reconciliation replaces it.
    pub overflowed: bool,
    /// Entries the peer acknowledged since start.
    pub shipped_total: u64,
    /// Batches that failed to ship since start.
    pub ship_failures_total: u64,
    /// `sync` mode only: writes that waited `sync_timeout` for this peer in vain and fell back.
    pub sync_fallbacks_total: u64,
    /// When the last fall-back happened, ms since the epoch.
    pub last_sync_fallback_ms: Option<u64>,
}

/// A reconciliation in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub started_ms: u64,
    pub direction: Direction,
    pub trigger: Trigger,
    /// Round trips so far.
    pub rounds: u64,
    /// Metadata bytes so far, both ways.
    pub bytes: u64,
}
