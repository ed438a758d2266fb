//! Status snapshots shared by the renderer tests (tests/render.rs) and the golden files
//! (tests/status_fixture.rs): the clock they are seen at, the store counts, and the healthy
//! peer both describe. Included by `#[path]` rather than through `common/mod.rs`, because
//! those two crates need nothing else from there.

use merkmail::status::{CountsView, Direction, JournalView, PeerView, RepairedView, RunView};
use merkmail::status::{Outcome, SessionView, Trigger};

/// The node's clock in every snapshot.
pub const NOW: u64 = 1_700_000_000_000;

/// A store with a little of everything, tombstones included.
pub fn counts() -> CountsView {
    CountsView {
        users: 3,
        mailboxes: 11,
        messages: 1234,
        message_bytes: 1_258_291,
        bodies: 1200,
        body_bytes: 1_100_000,
        tombstones: 4,
    }
}

/// A reachable peer `bravo` at `url` with `runs`, repair totals of every kind, a busy
/// journal, and an outgoing session started by `session_trigger` in progress.
pub fn healthy_peer(url: &str, runs: Vec<RunView>, session_trigger: Trigger) -> PeerView {
    PeerView {
        url: url.into(),
        node: Some("bravo".into()),
        reachable: true,
        last_contact_ms: Some(NOW - 3_000),
        failures_in_a_row: 0,
        next_check_ms: Some(NOW + 57_000),
        runs,
        repaired: RepairedView {
            copied_to_peer: 30,
            copied_from_peer: 20,
            expunged: 5,
            flag_updates: 8,
            uid_clashes_renumbered: 2,
            mailboxes_changed: 1,
            bodies_repaired: 3,
        },
        sessions_total: 17,
        sessions_failed_total: 2,
        checks_total: 40,
        journal: JournalView {
            depth: 7,
            oldest_unshipped_age_ms: Some(2_500),
            overflowed: false,
            shipped_total: 500,
            ship_failures_total: 3,
            sync_fallbacks_total: 4,
            last_sync_fallback_ms: Some(NOW - 60_000),
        },
        session: Some(SessionView {
            started_ms: NOW - 2_000,
            direction: Direction::Outgoing,
            trigger: session_trigger,
            rounds: 3,
            bytes: 900,
        }),
        bytes_sent_total: 123_456,
        bytes_received_total: 654_321,
        tombstones_held_back: 0,
        holding_since_ms: None,
    }
}

/// A run `at_ago_ms` before [`NOW`] of one round that moved a few bytes and no bodies.
pub fn run(at_ago_ms: u64, duration_ms: u64, trigger: Trigger, outcome: Outcome) -> RunView {
    RunView {
        at_ms: NOW - at_ago_ms,
        duration_ms,
        trigger,
        outcome,
        error: None,
        rounds: 1,
        bytes_sent: 120,
        bytes_received: 130,
        body_bytes_sent: 0,
        body_bytes_received: 0,
        differences: RepairedView::default(),
    }
}

/// A four-round run after the peer came back that copied three messages to it, expunged one
/// and sent a body's worth of bytes.
pub fn repaired_after_peer_back() -> RunView {
    RunView {
        rounds: 4,
        bytes_sent: 4096,
        bytes_received: 2048,
        body_bytes_sent: 1_258_291,
        body_bytes_received: 0,
        differences: RepairedView {
            copied_to_peer: 3,
            expunged: 1,
            ..Default::default()
        },
        ..run(125_000, 2_450, Trigger::PeerBack, Outcome::Repaired)
    }
}

/// A peer at `url` never reached: five failures in a row, the next check in 30 s, and
/// nothing else known about it.
pub fn unreachable_peer(url: &str) -> PeerView {
    PeerView {
        url: url.into(),
        node: None,
        reachable: false,
        last_contact_ms: None,
        failures_in_a_row: 5,
        next_check_ms: Some(NOW + 30_000),
        ..Default::default()
    }
}
