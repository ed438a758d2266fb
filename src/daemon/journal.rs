//! The replication journal's tasks (DESIGN §6): per peer, a shipper that sends the entries
//! after the peer's cursor and moves the cursor when the peer has stored them; one applier
//! that applies what peers shipped here, with the clash rules, in the order received.

use super::node::{lock, Node, Peer};
use crate::sync::journal_wire::encode_batch;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Bodies carried by one batch, about.
const BATCH_BYTES: usize = 8 << 20;
/// How often an idle shipper looks anyway (a write it was not told about: an import by
/// another process is impossible, but a missed wake-up must not stall a peer).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Ships this node's journal to `peer` until shutdown.
pub async fn ship(node: Arc<Node>, peer: Arc<Peer>) {
    let mut shutdown = node.shutdown.subscribe();
    let mut failures: u32 = 0;
    let mut overflow_reported = false;
    // Set when the peer comes back: once the backlog is shipped, a check confirms the roots
    // (a check earlier would repair by Merkle what the journal is about to deliver).
    let mut check_when_drained = false;
    loop {
        if node.stopping() {
            return;
        }
        let store = Arc::clone(&node.store);
        let url = peer.url().to_string();
        let max = node.config.journal_batch;
        let batch = tokio::task::spawn_blocking(move || {
            let position = store.journal_peer(&url)?;
            let batch = store.journal_batch(&url, max, BATCH_BYTES)?;
            Ok::<_, crate::store::StoreError>((position, batch))
        })
        .await;
        let (position, batch) = match batch {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                warn!(peer = %peer.url(), error = %e, "cannot read the journal");
                idle(&node, &peer, &mut shutdown, Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => {
                warn!(peer = %peer.url(), error = %e, "the journal task failed");
                idle(&node, &peer, &mut shutdown, Duration::from_secs(5)).await;
                continue;
            }
        };
        if position.overflowed && !overflow_reported {
            overflow_reported = true;
            warn!(
                peer = %peer.url(),
                bound = node.config.journal_bound,
                "the peer fell too far behind: its journal was dropped; a Merkle session replaces it"
            );
            peer.wake_check.notify_one();
        } else if !position.overflowed {
            overflow_reported = false;
        }
        if batch.entries.is_empty() {
            if check_when_drained && batch.last_seq <= position.cursor {
                check_when_drained = false;
                peer.wake_check.notify_one();
            }
            if batch.last_seq > position.cursor {
                // Records that name nothing shippable any more: move past them.
                let _ = node.store.journal_ack(peer.url(), batch.last_seq);
                continue;
            }
            idle(&node, &peer, &mut shutdown, IDLE_POLL).await;
            continue;
        }
        let entries = batch.entries.len() as u64;
        let last = batch.last_seq;
        let body = encode_batch(&batch);
        let ack = peer.client.journal(body).await;
        // A peer that answered at all (an error status, an unreadable acknowledgement) is
        // reachable: it refuses or garbles, and /status should say that, not "down".
        let answered = ack.as_ref().err().is_none_or(|e| e.answered());
        match ack {
            Ok(ack) => {
                let acked = ack.acked.min(last);
                if let Err(e) = node.store.journal_ack(peer.url(), acked) {
                    warn!(peer = %peer.url(), error = %e, "cannot record the acknowledgement");
                }
                node.acked.send_modify(|seq| *seq = (*seq).max(acked));
                let came_back = peer.contact(true);
                {
                    let mut v = lock(&peer.view);
                    v.node.get_or_insert(ack.node);
                    v.journal.shipped_total += entries;
                }
                if came_back || failures > 0 {
                    info!(peer = %peer.url(), "peer is back: shipping its journal, then a check");
                    check_when_drained = true;
                }
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                peer.contact(answered);
                lock(&peer.view).journal.ship_failures_total += 1;
                if failures == 1 {
                    warn!(peer = %peer.url(), error = %e, "cannot ship the journal; retrying with backoff");
                }
                let wait = Duration::from_millis(250u64 << failures.min(16).saturating_sub(1))
                    .min(Duration::from_secs(node.config.backoff_max_s))
                    .min(Duration::from_secs(5));
                idle(&node, &peer, &mut shutdown, wait).await;
            }
        }
    }
}

async fn idle(
    _node: &Node,
    peer: &Peer,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    wait: Duration,
) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = peer.wake_ship.notified() => {}
        _ = shutdown.changed() => {}
    }
}

/// Applies the entries peers shipped here, in order, until shutdown (and once at start:
/// entries stored before a crash are applied now).
pub async fn apply(node: Arc<Node>) {
    let mut shutdown = node.shutdown.subscribe();
    // A peer's entries are stored as they come, and applied once the index has taken in the
    // live Maildirs (Node::disk_ready).
    if !node.wait_disk_ready().await {
        return;
    }
    loop {
        loop {
            let store = Arc::clone(&node.store);
            let done =
                tokio::task::spawn_blocking(move || store.journal_apply_inbound(1_000)).await;
            match done {
                Ok(Ok(applied)) => {
                    if applied.applied > 0 {
                        node.wake_mirror.notify_one();
                    }
                    for sender in &applied.check_with {
                        match node
                            .peers
                            .iter()
                            .find(|p| lock(&p.view).node.as_deref() == Some(sender.as_str()))
                        {
                            Some(peer) => {
                                info!(peer = %peer.url(), "a journal entry needs the clash rules on both sides: checking now");
                                peer.wake_check.notify_one();
                            }
                            None => {
                                warn!(sender = %sender, "a journal entry from an unconfigured node needs a Merkle session; its own checker will run one")
                            }
                        }
                    }
                    if applied.remaining == 0 || node.stopping() {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot apply the inbound journal; retrying");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "the journal applier failed; retrying");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = node.wake_apply.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}
