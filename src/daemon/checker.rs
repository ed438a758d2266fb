//! The background consistency checker: one Merkle session with a peer per check. A session
//! whose roots match ends after one round trip (the check); one that finds differences
//! repairs them both ways (the reconciliation).

use super::node::{lock, now_ms, run_view, Node, Peer};
use crate::net::peer_client::PeerError;
use crate::status::{Direction, Outcome, RepairedView, RunView, SessionView, Trigger};
use crate::sync::DriveError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// One check of `peer`; returns whether the peer answered.
pub async fn check(node: &Arc<Node>, peer: &Arc<Peer>, trigger: Trigger) -> bool {
    // A live Maildir's mail is compared once the index has taken it in (Node::disk_ready).
    if !node.wait_disk_ready().await {
        return false;
    }
    let at_ms = now_ms();
    let started = Instant::now();
    let other = match peer.node_id().await {
        Ok(id) => id,
        Err(e) => {
            let first = lock(&peer.view).failures_in_a_row == 0;
            peer.contact(false);
            if first {
                warn!(peer = %peer.url(), error = %e, "peer unreachable; retrying with backoff");
            }
            peer.record(run_view(
                at_ms,
                started.elapsed(),
                trigger,
                &Err::<crate::sync::SyncReport, _>(CheckError::Hello(e)),
            ));
            return false;
        }
    };
    // Bodies that rotted here first: the session cannot see them (bodies are not in the tree).
    let bodies = super::repair::repair_bodies(&node.store, peer).await;
    if trigger != Trigger::Interval {
        journal_first(node, peer).await;
    }
    let overflowed = || {
        node.store
            .journal_peer(peer.url())
            .is_ok_and(|j| j.overflowed)
    };
    let mut claimed = node.begin_outgoing(&other);
    if claimed.is_none() && overflowed() {
        // Only a session this node runs clears an overflowed journal: wait (a little) for
        // the peer's session to end rather than skip, or a peer that checks often would keep
        // the overflow set for ever.
        let until = Instant::now() + Duration::from_secs(10);
        while claimed.is_none() && Instant::now() < until && !node.stopping() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            claimed = node.begin_outgoing(&other);
        }
    }
    let Some(cancel) = claimed else {
        peer.contact(true);
        if retry_after_skip(trigger, overflowed()) {
            retry_soon(peer);
        }
        peer.record(RunView {
            at_ms,
            trigger,
            outcome: Outcome::Skipped,
            error: Some(format!("{other} is in a session with this node")),
            differences: RepairedView {
                bodies_repaired: bodies.repaired,
                ..Default::default()
            },
            ..RunView::default()
        });
        return true;
    };
    let head_at_start = node.store.journal_head().unwrap_or(0);
    node.show_session(
        peer,
        Some(SessionView {
            started_ms: at_ms,
            direction: Direction::Outgoing,
            trigger,
            rounds: 0,
            bytes: 0,
        }),
    );
    let store = Arc::clone(&node.store);
    let session_peer = Arc::clone(peer);
    let session_cancel = Arc::clone(&cancel);
    let handle = tokio::runtime::Handle::current();
    let session_node = Arc::clone(node);
    // The session reads and writes the store synchronously: run it off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        let client = session_peer.client.clone();
        let send = |bytes: Vec<u8>| -> Result<Vec<u8>, RoundError> {
            if session_cancel.load(Ordering::SeqCst) {
                return Err(RoundError::Yielded);
            }
            if session_node.stopping() {
                return Err(RoundError::ShuttingDown);
            }
            let out = bytes.len() as u64;
            let body = handle.block_on(client.round(bytes))?;
            if let Some(s) = &mut lock(&session_peer.view).session {
                s.rounds += 1;
                s.bytes += out + body.len() as u64;
            }
            Ok(body)
        };
        crate::net::sync::sync_over(&store, false, send).map_err(CheckError::Session)
    })
    .await
    .unwrap_or_else(|e| Err(CheckError::Task(e)));
    node.end_outgoing(&other);
    node.show_session(peer, None);
    let yielded = cancel.load(Ordering::SeqCst);
    let reachable = yielded || result.as_ref().err().is_none_or(CheckError::peer_answered);
    let came_back = peer.contact(reachable);
    let mut run = run_view(at_ms, started.elapsed(), trigger, &result);
    if yielded && result.is_err() {
        run.outcome = Outcome::Skipped;
    }
    run.differences.bodies_repaired = bodies.repaired;
    if bodies.repaired > 0 && run.outcome == Outcome::Equal {
        run.outcome = Outcome::Repaired;
    }
    if matches!(run.outcome, Outcome::Skipped | Outcome::Unequal) {
        // The peer's own session, or a change during ours: look again shortly rather than
        // after a whole interval (an overflowed journal waits for this check).
        retry_soon(peer);
    }
    match &result {
        Ok(r) if r.equal_after => {
            // The peer now holds every expunge this node held when the check began (at_ms is
            // no later than the session's start): the tombstone rule's horizon moves there.
            peer.saw_equal_roots(at_ms);
            // Whatever the journal missed before this session started is covered now.
            if let Err(e) = node.store.journal_merkle_done(peer.url(), head_at_start) {
                warn!(peer = %peer.url(), error = %e, "cannot record the Merkle session in the journal");
            }
        }
        _ => {}
    }
    if matches!(run.outcome, Outcome::Repaired | Outcome::Unequal) {
        info!(
            peer = %peer.url(),
            trigger = trigger.as_str(),
            outcome = %run.outcome,
            rounds = run.rounds,
            copied_to_peer = run.differences.copied_to_peer,
            copied_from_peer = run.differences.copied_from_peer,
            expunged = run.differences.expunged,
            flag_updates = run.differences.flag_updates,
            uid_clashes = run.differences.uid_clashes_renumbered,
            ms = run.duration_ms,
            "reconciled"
        );
    } else if let Some(e) = &run.error {
        if run.outcome == Outcome::Error {
            warn!(peer = %peer.url(), trigger = trigger.as_str(), error = %e, "check failed");
        }
    }
    peer.record(run);
    if came_back {
        info!(peer = %peer.url(), "peer is back");
        peer.wake_ship.notify_one();
    }
    reachable
}

/// After a start or an outage, let the journals go first: ask where the peer's journal toward
/// this node stands (which also wakes the peer's shipper) and wait while it drains and this
/// node applies it, and while this node's own journal toward the peer drains — as long as it keeps shrinking, at most a minute. Then the Merkle session that
/// follows finds little or nothing left. A journal the peer no longer holds (overflowed, or a
/// peer that cannot place this node) means Merkle at once.
async fn journal_first(node: &Arc<Node>, peer: &Arc<Peer>) {
    const POLL: Duration = Duration::from_millis(100);
    const STALL: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let mut last_depth = u64::MAX;
    let mut last_progress = Instant::now();
    let mut waited_for = None;
    peer.wake_ship.notify_one();
    while started.elapsed() < Duration::from_secs(60) && !node.stopping() {
        let Ok(position) = peer.client.journal_position().await else {
            return;
        };
        if !position.known || position.overflowed {
            return;
        }
        let pending = node
            .store
            .journal_senders()
            .map(|s| s.iter().map(|(_, j)| j.pending).sum::<u64>())
            .unwrap_or(0);
        // Our own journal toward the peer too: a session now would repair by Merkle what the
        // shipper is about to deliver.
        let ours = match node.store.journal_peer(peer.url()) {
            Ok(j) if !j.overflowed => j.depth,
            _ => 0,
        };
        waited_for.get_or_insert(position.depth + ours);
        // What the peer received from us and has not applied yet counts too.
        let left = position.depth + pending + ours + position.inbound_pending;
        if left == 0 {
            break;
        }
        if left < last_depth {
            last_depth = left;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            warn!(peer = %peer.url(), left, "the peer's journal stopped draining; reconciling by Merkle");
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    if let Some(n) = waited_for.filter(|n| *n > 0) {
        info!(
            peer = %peer.url(),
            entries = n,
            ms = started.elapsed().as_millis() as u64,
            "caught up through the peer's journal first"
        );
    }
}

/// Wakes the peer's checker again in a few seconds.
/// Whether a check skipped because the peer is in a session with this node is tried again
/// once that session is over. A periodic check's purpose is covered by the peer's session. A
/// check with a cause (start-up, the journal asking for the clash rules, a peer back, a
/// retry) is not: the peer's session may have begun before that cause, or end without equal
/// roots (cut off, killed). Nor is an overflowed journal's: only a session this node runs
/// clears it.
fn retry_after_skip(trigger: Trigger, overflowed: bool) -> bool {
    overflowed || trigger != Trigger::Interval
}

fn retry_soon(peer: &Arc<Peer>) {
    let wake = Arc::clone(&peer.wake_check);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        wake.notify_one();
    });
}

/// Why one of a session's rounds did not come back.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// The peer started a session with this node and won the tie: this one stops.
    #[error("yielded to the session the peer started with this node")]
    Yielded,
    #[error("abandoned: the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Why a check did not end with a session's report. `/status` shows its message.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    /// The peer did not say who it is (its hello failed).
    #[error(transparent)]
    Hello(PeerError),
    #[error(transparent)]
    Session(DriveError<RoundError>),
    #[error("the session task failed: {0}")]
    Task(tokio::task::JoinError),
}

impl CheckError {
    /// Whether the peer counts as having answered. A round that did not come back (no
    /// answer, an error status, a session abandoned at shutdown) counts as the peer not
    /// answering, as a failed hello does; a session that failed on this side or on what
    /// the peer said (a store error here, an unreadable reply) does not.
    fn peer_answered(&self) -> bool {
        match self {
            CheckError::Hello(_) | CheckError::Session(DriveError::Transport(_)) => false,
            CheckError::Session(_) | CheckError::Task(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_check_with_a_cause_is_tried_again() {
        for trigger in [
            Trigger::Startup,
            Trigger::Journal,
            Trigger::PeerBack,
            Trigger::Retry,
        ] {
            assert!(retry_after_skip(trigger, false), "{trigger:?}");
        }
        assert!(!retry_after_skip(Trigger::Interval, false));
        assert!(retry_after_skip(Trigger::Interval, true));
    }
}
