//! The daemon: what `merkmail serve` runs beside the HTTP server — the background consistency
//! checker, the replication journal's shippers and applier, fast resync after failures — and
//! what it shows its operator.
//!
//! - [`config`]: the TOML configuration and its flags.
//! - [`node`]: the shared state (peers, sessions in progress, signals); the HTTP side's hooks.
//! - [`schedule`]: when checks run (interval ± jitter, backoff, wake-ups).
//! - [`checker`]: one check = one Merkle session with a peer.
//! - [`repair`]: before a check's session, bodies that rotted here are fetched from the peer.
//! - [`journal`]: shipping the journal to peers, applying what peers shipped here.
//! - [`tombstones`]: when a tombstone may be forgotten (retention and every peer), the purge.
//!
//! The status snapshot's types and renderings live in [`crate::status`]; [`node`] fills it.

pub mod checker;
pub mod config;
pub mod journal;
pub mod maildir;
pub mod node;
pub mod repair;
pub mod schedule;
pub mod tombstones;

use node::{lock, Node};
use schedule::{run_checks, Schedule};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// The daemon's tasks, running.
pub struct Daemon {
    pub node: Arc<Node>,
    tasks: JoinSet<()>,
}

impl Daemon {
    /// Registers the peers with the journal and starts, per peer, a checker (its first check
    /// runs at once: a node that starts catches up without waiting for the interval) and a
    /// journal shipper, and the applier of inbound journal entries.
    pub fn start(node: Arc<Node>) -> Result<Daemon, crate::store::StoreError> {
        let urls: Vec<String> = node.peers.iter().map(|p| p.url().to_string()).collect();
        node.store
            .journal_register_peers(&urls, node.config.journal_bound)?;
        let mut tasks = JoinSet::new();
        let schedule = Schedule {
            interval: node.config.check_interval(),
            jitter: node.config.check_jitter,
            backoff_max: Duration::from_secs(node.config.backoff_max_s),
        };
        for peer in &node.peers {
            let (n, p) = (Arc::clone(&node), Arc::clone(peer));
            tasks.spawn(async move {
                let wake = Arc::clone(&p.wake_check);
                let shutdown = n.shutdown.subscribe();
                let next_peer = Arc::clone(&p);
                run_checks(
                    schedule,
                    wake,
                    shutdown,
                    move |wait| {
                        lock(&next_peer.view).next_check_ms =
                            Some(node::now_ms() + wait.as_millis() as u64);
                    },
                    |trigger| {
                        let (n, p) = (Arc::clone(&n), Arc::clone(&p));
                        async move { checker::check(&n, &p, trigger).await }
                    },
                )
                .await;
            });
            tasks.spawn(journal::ship(Arc::clone(&node), Arc::clone(peer)));
        }
        tasks.spawn(journal::apply(Arc::clone(&node)));
        tasks.spawn(tombstones::run(Arc::clone(&node)));
        match crate::maildir::backend::template_of(&node.store) {
            Ok(Some(template)) => {
                tasks.spawn(maildir::run(Arc::clone(&node), template));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "the store's Maildir template is unusable; the Maildirs are not kept in step");
                node.set_disk_ready();
            }
        }
        Ok(Daemon { node, tasks })
    }

    /// Tells every task to stop and waits up to `timeout` for them: a session in progress
    /// stops at its next round (its applied groups are whole transactions; the rest is left
    /// for the next session), shippers stop between batches (the journal keeps what was not
    /// acknowledged).
    pub async fn stop(mut self, timeout: Duration) {
        let _ = self.node.shutdown.send(true);
        if tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                ?timeout,
                "daemon tasks still busy at the shutdown deadline; abandoning them"
            );
            self.tasks.abort_all();
        }
    }
}
