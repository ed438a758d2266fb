//! The daemon's shared state: the configuration, the store, each peer's client and what this
//! node knows of it, the sessions in progress, and the signals between tasks. It implements
//! the HTTP side's [`Hooks`].

use super::config::{Config, PeerConfig};
use crate::net::client::{ClientConfig, ClientError};
use crate::net::peer_client::{PeerClient, PeerError};
use crate::net::server::{counts_view, Hooks, RoundRefused};
use crate::status::{
    Direction, Mode, Outcome, PeerView, RepairedView, RunView, SessionView, StatusView, Trigger,
};
use crate::store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// Runs kept per peer for /status.
const RUNS_KEPT: usize = 10;
/// An incoming session counts as in progress this long after its last round.
const INCOMING_IDLE: Duration = Duration::from_secs(2);

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locks a mutex, taking the data of a poisoned one (a panicking task must not stop the
/// status page or the other peers).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One configured peer.
pub struct Peer {
    pub config: PeerConfig,
    /// Talks to the peer with its token and this node's id.
    pub client: PeerClient,
    /// Wakes the background checker for this peer.
    pub wake_check: Arc<Notify>,
    /// Wakes the journal shipper for this peer.
    pub wake_ship: Notify,
    /// What /status shows of it (the journal fields are filled from the store).
    pub view: Mutex<PeerView>,
    /// Lifetime metadata bytes of sessions, for metrics.
    pub bytes: Mutex<(u64, u64)>,
    /// When this node's latest check with the peer that ended with equal roots began (ms
    /// since the epoch): the peer's horizon in the tombstone rule (daemon/tombstones.rs).
    pub tombstone_horizon: Mutex<Option<u64>>,
}

impl Peer {
    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// The peer's node id: known from an earlier answer, or asked for now.
    pub async fn node_id(&self) -> Result<String, PeerError> {
        if let Some(id) = lock(&self.view).node.clone() {
            return Ok(id);
        }
        let hello = self.client.hello().await?;
        lock(&self.view).node = Some(hello.node.clone());
        Ok(hello.node)
    }

    /// Notes that the peer answered (or did not). Returns true when it was unreachable before.
    pub fn contact(&self, ok: bool) -> bool {
        let mut v = lock(&self.view);
        let was_down = !v.reachable && v.last_contact_ms.is_some() || v.failures_in_a_row > 0;
        if ok {
            v.reachable = true;
            v.last_contact_ms = Some(now_ms());
            v.failures_in_a_row = 0;
        } else {
            v.reachable = false;
            v.failures_in_a_row = v.failures_in_a_row.saturating_add(1);
        }
        ok && was_down
    }

    /// The peer's root equalled this node's at a moment after `at_ms`: its tombstone horizon
    /// moves there (never back).
    pub fn saw_equal_roots(&self, at_ms: u64) {
        let mut h = lock(&self.tombstone_horizon);
        *h = Some(h.map_or(at_ms, |h| h.max(at_ms)));
    }

    /// Keeps a finished run for /status and adds it to the lifetime sums.
    pub fn record(&self, run: RunView) {
        {
            let mut b = lock(&self.bytes);
            b.0 += run.bytes_sent;
            b.1 += run.bytes_received;
        }
        let mut v = lock(&self.view);
        v.checks_total += 1;
        match run.outcome {
            Outcome::Repaired | Outcome::Unequal => v.sessions_total += 1,
            Outcome::Error => v.sessions_failed_total += 1,
            Outcome::Equal | Outcome::Skipped => {}
        }
        let d = &run.differences;
        let r = &mut v.repaired;
        r.copied_to_peer += d.copied_to_peer;
        r.copied_from_peer += d.copied_from_peer;
        r.expunged += d.expunged;
        r.flag_updates += d.flag_updates;
        r.uid_clashes_renumbered += d.uid_clashes_renumbered;
        r.mailboxes_changed += d.mailboxes_changed;
        r.bodies_repaired += d.bodies_repaired;
        v.runs.insert(0, run);
        v.runs.truncate(RUNS_KEPT);
    }
}

/// A session between this node and another, for the one-session-per-pair rule.
enum Active {
    /// This node started it; setting the flag makes it stop at its next round.
    Outgoing(Arc<AtomicBool>),
    /// The other node started it; its last round came at this instant.
    Incoming(Instant),
}

/// Everything the daemon's tasks share.
pub struct Node {
    pub config: Config,
    pub store: Arc<Store>,
    pub node_id: String,
    started: Instant,
    pub peers: Vec<Arc<Peer>>,
    /// Sessions by the other node's id.
    sessions: Mutex<HashMap<String, Active>>,
    /// Turns true when the process is stopping.
    pub shutdown: watch::Sender<bool>,
    /// The largest journal seq any peer has stored (what `sync` mode waits for).
    pub acked: watch::Sender<u64>,
    /// Wakes the inbound journal's applier.
    pub wake_apply: Notify,
    /// Wakes the live Maildir's writer: the index changed and owes its folders something.
    pub wake_mirror: Notify,
    /// `sync`-mode writes that timed out waiting for every peer.
    pub sync_fallbacks: AtomicU64,
    /// What the live Maildir's passes did (daemon/maildir.rs; `None` for a store that holds
    /// its own mail).
    pub maildir: Mutex<Option<crate::status::MaildirView>>,
    /// True once the index has taken in the live Maildirs (the first pass since start is
    /// done; at once for a store that holds its own mail). Until then no session runs and no
    /// peer's journal is applied: either would compare or merge the peer's mail with an index
    /// that does not yet show the mail this server's Dovecot took meanwhile, and could give
    /// the peer's messages the UIDs that mail has (a UID clash that moves the fuller side's
    /// mail, where the first pass would have seen mail on both sides).
    pub disk_ready: watch::Sender<bool>,
}

impl Node {
    pub fn new(config: Config, store: Arc<Store>) -> Result<Arc<Node>, ClientError> {
        let node_id = store.node_id().to_string();
        let holds_live_maildirs = store.maildir_template().is_some();
        let tls = config
            .tls_ca
            .as_deref()
            .map(crate::net::tls::ClientTls::from_ca_file)
            .transpose()?;
        let mut peers = Vec::new();
        for p in &config.peers {
            let client_config = peer_client_config(&config, tls.clone());
            let client =
                PeerClient::new(&p.url, config.token_for(p), Some(&node_id), client_config)?;
            peers.push(Arc::new(Peer {
                config: p.clone(),
                client,
                wake_check: Arc::new(Notify::new()),
                wake_ship: Notify::new(),
                view: Mutex::new(PeerView {
                    url: p.url.clone(),
                    ..PeerView::default()
                }),
                bytes: Mutex::new((0, 0)),
                tombstone_horizon: Mutex::new(None),
            }));
        }
        Ok(Arc::new(Node {
            config,
            store,
            node_id,
            started: Instant::now(),
            peers,
            sessions: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            acked: watch::channel(0).0,
            wake_apply: Notify::new(),
            wake_mirror: Notify::new(),
            sync_fallbacks: AtomicU64::new(0),
            maildir: Mutex::new(None),
            disk_ready: watch::channel(!holds_live_maildirs).0,
        }))
    }

    /// Marks the live Maildirs taken in (or given up on: a template that cannot be used).
    pub fn set_disk_ready(&self) {
        self.disk_ready.send_replace(true);
    }

    /// Waits until the live Maildirs are taken in; `false` if the node stops first.
    pub async fn wait_disk_ready(&self) -> bool {
        let mut ready = self.disk_ready.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *ready.borrow_and_update() {
                return true;
            }
            if *shutdown.borrow_and_update() {
                return false;
            }
            tokio::select! {
                changed = ready.changed() => if changed.is_err() { return false },
                _ = shutdown.changed() => {}
            }
        }
    }

    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn peer_by_node(&self, node: &str) -> Option<&Arc<Peer>> {
        self.peers
            .iter()
            .find(|p| lock(&p.view).node.as_deref() == Some(node))
    }

    /// A node this one cannot place yet contacted it: it may be a peer that was down since
    /// this node started (its id never learned). Wake the shippers and checkers of every peer
    /// not known to be up, so that one comes back at once rather than at its next backoff.
    fn wake_strangers(&self, from: &str) {
        for p in &self.peers {
            let v = lock(&p.view);
            if v.node.is_none() || !v.reachable {
                drop(v);
                tracing::debug!(peer = %p.url(), from, "an unplaced node contacted us: trying this peer now");
                p.wake_ship.notify_one();
                p.wake_check.notify_one();
            }
        }
    }

    /// Claims the pair for a session this node starts with `other`; `None` when `other` is in
    /// a session with us right now (ours would only get in its way).
    pub fn begin_outgoing(&self, other: &str) -> Option<Arc<AtomicBool>> {
        let mut sessions = lock(&self.sessions);
        if let Some(Active::Incoming(last)) = sessions.get(other) {
            if last.elapsed() < INCOMING_IDLE {
                return None;
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        sessions.insert(other.to_string(), Active::Outgoing(Arc::clone(&cancel)));
        Some(cancel)
    }

    pub fn end_outgoing(&self, other: &str) {
        let mut sessions = lock(&self.sessions);
        if matches!(sessions.get(other), Some(Active::Outgoing(_))) {
            sessions.remove(other);
        }
    }

    /// Sets the session shown for `peer` in /status.
    pub fn show_session(&self, peer: &Peer, session: Option<SessionView>) {
        lock(&peer.view).session = session;
    }

    /// The snapshot behind /status, /metrics and /.
    pub fn snapshot(&self) -> StatusView {
        let (root, counts) = match (self.store.root(), self.store.counters()) {
            (Ok(r), Ok(c)) => (r.hash.to_hex(), c),
            (r, c) => {
                warn!(root = ?r.err(), counts = ?c.err(), "status: cannot read the store");
                (String::new(), Default::default())
            }
        };
        let journals: HashMap<String, crate::store::PeerJournal> = self
            .store
            .journal_peers()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let inbound_pending = self
            .store
            .journal_senders()
            .map(|s| s.iter().map(|(_, j)| j.pending).sum())
            .unwrap_or(0);
        let now = now_ms();
        let incoming: HashMap<String, Instant> = lock(&self.sessions)
            .iter()
            .filter_map(|(k, a)| match a {
                Active::Incoming(t) if t.elapsed() < INCOMING_IDLE => Some((k.clone(), *t)),
                _ => None,
            })
            .collect();
        let peers = self
            .peers
            .iter()
            .map(|p| {
                let mut v = lock(&p.view).clone();
                let (sent, received) = *lock(&p.bytes);
                v.bytes_sent_total = sent;
                v.bytes_received_total = received;
                if let Some(j) = journals.get(p.url()) {
                    v.journal.depth = j.depth;
                    v.journal.overflowed = j.overflowed;
                    v.journal.oldest_unshipped_age_ms =
                        j.oldest_unshipped_ms.map(|t| now.saturating_sub(t));
                }
                if v.session
                    .as_ref()
                    .is_some_and(|s| s.direction == Direction::Incoming)
                    && !v.node.as_ref().is_some_and(|n| incoming.contains_key(n))
                {
                    v.session = None;
                }
                v
            })
            .collect();
        StatusView {
            node: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            now_ms: now,
            uptime_s: self.started.elapsed().as_secs(),
            root,
            counts: counts_view(&counts),
            mode: self.config.mode,
            sync_timeout_ms: self.config.sync_timeout_ms,
            check_interval_s: self.config.check_interval_s,
            journal_head: self.store.journal_head().unwrap_or(0),
            inbound_pending,
            sync_fallbacks_total: self.sync_fallbacks.load(Ordering::Relaxed),
            peers,
            maildir: lock(&self.maildir).clone().map(|mut m| {
                m.owed_mailboxes = self.store.owed_mailboxes().map_or(0, |o| o.len() as u64);
                m
            }),
        }
    }

    /// `sync` mode: waits until some peer stored every change up to the journal's head, or
    /// the sync timeout passes (then says so, per peer, in /status).
    async fn wait_for_a_peer(&self) {
        let Ok(head) = self.store.journal_head() else {
            return;
        };
        for p in &self.peers {
            p.wake_ship.notify_one();
        }
        if self.peers.is_empty() || *self.acked.borrow() >= head {
            return;
        }
        let mut acked = self.acked.subscribe();
        let stored = tokio::time::timeout(
            self.config.sync_timeout(),
            acked.wait_for(|seq| *seq >= head),
        )
        .await;
        if !matches!(stored, Ok(Ok(_))) {
            self.sync_fallbacks.fetch_add(1, Ordering::Relaxed);
            let now = now_ms();
            for p in &self.peers {
                let mut v = lock(&p.view);
                v.journal.sync_fallbacks_total += 1;
                v.journal.last_sync_fallback_ms = Some(now);
            }
            warn!(
                seq = head,
                timeout_ms = self.config.sync_timeout_ms,
                "sync mode: no peer stored the change in time; answered the writer anyway (async fall-back)"
            );
        }
    }
}

fn peer_client_config(config: &Config, tls: Option<crate::net::tls::ClientTls>) -> ClientConfig {
    ClientConfig {
        tls,
        connect_timeout: Duration::from_secs(5),
        // A round is answered within the peer's own request deadline.
        request_timeout: Duration::from_millis(config.limits.request_timeout_ms)
            + Duration::from_secs(5),
        max_response: 256 << 20,
    }
}

impl Hooks for Node {
    fn status(&self) -> StatusView {
        self.snapshot()
    }

    fn wrote(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            match self.config.mode {
                Mode::Sync => self.wait_for_a_peer().await,
                Mode::Async => {
                    for p in &self.peers {
                        p.wake_ship.notify_one();
                    }
                }
            }
        })
    }

    fn journal_received(&self, from: &str) {
        self.wake_apply.notify_one();
        match self.peer_by_node(from) {
            Some(peer) => {
                if peer.contact(true) {
                    info!(peer = %peer.url(), "peer is back (it shipped its journal)");
                    peer.wake_ship.notify_one();
                    peer.wake_check.notify_one();
                }
            }
            None => self.wake_strangers(from),
        }
    }

    fn journal_position(&self, from: &str) -> Option<crate::net::server::JournalPosition> {
        let Some(peer) = self.peer_by_node(from) else {
            self.wake_strangers(from);
            return None;
        };
        if peer.contact(true) {
            info!(peer = %peer.url(), "peer is back (it asked for its journal)");
        }
        peer.wake_ship.notify_one();
        let j = self.store.journal_peer(peer.url()).ok()?;
        let inbound_pending = self
            .store
            .journal_senders()
            .ok()?
            .into_iter()
            .find(|(sender, _)| sender == from)
            .map_or(0, |(_, s)| s.pending);
        Some(crate::net::server::JournalPosition {
            known: true,
            depth: j.depth,
            overflowed: j.overflowed,
            inbound_pending,
        })
    }

    fn session_applied(&self) {
        // A peer's session wrote here: the Maildir side need not wait for its owed poll.
        self.wake_mirror.notify_one();
    }

    fn roots_equal(&self, from: &str, at_ms: u64) {
        if let Some(peer) = self.peer_by_node(from) {
            peer.saw_equal_roots(at_ms);
        }
    }

    fn starting(&self) -> bool {
        !*self.disk_ready.borrow()
    }

    fn session_round(&self, from: &str) -> Result<(), RoundRefused> {
        if self.starting() {
            return Err(RoundRefused::Starting {
                node: self.node_id.clone(),
            });
        }
        {
            let mut sessions = lock(&self.sessions);
            if let Some(Active::Outgoing(cancel)) = sessions.get(from) {
                if self.node_id.as_str() < from {
                    // Both sides started a session with each other: the smaller node id
                    // keeps its own; the other yields.
                    return Err(RoundRefused::InSession {
                        node: self.node_id.clone(),
                        with: from.to_string(),
                    });
                }
                cancel.store(true, Ordering::SeqCst);
            }
            sessions.insert(from.to_string(), Active::Incoming(Instant::now()));
        }
        if self.peer_by_node(from).is_none() {
            self.wake_strangers(from);
        }
        if let Some(peer) = self.peer_by_node(from) {
            if peer.contact(true) {
                info!(peer = %peer.url(), "peer is back (it started a session)");
                peer.wake_ship.notify_one();
            }
            let mut v = lock(&peer.view);
            match &mut v.session {
                Some(s) if s.direction == Direction::Incoming => s.rounds += 1,
                _ => {
                    v.session = Some(SessionView {
                        started_ms: now_ms(),
                        direction: Direction::Incoming,
                        trigger: Trigger::Peer,
                        rounds: 1,
                        bytes: 0,
                    })
                }
            }
        }
        Ok(())
    }

    fn is_peer(&self, url: &str) -> Option<bool> {
        if self.peers.is_empty() {
            return None;
        }
        let norm = |u: &str| u.trim_end_matches('/').to_string();
        Some(self.peers.iter().any(|p| norm(p.url()) == norm(url)))
    }

    fn node_id(&self) -> String {
        self.node_id.clone()
    }
}

/// A run's outcome for /status, from a session's report or error (shown as its message).
pub(crate) fn run_view<E: std::fmt::Display>(
    at_ms: u64,
    duration: Duration,
    trigger: Trigger,
    result: &Result<crate::sync::SyncReport, E>,
) -> RunView {
    let mut run = RunView {
        at_ms,
        duration_ms: duration.as_millis() as u64,
        trigger,
        ..RunView::default()
    };
    match result {
        Ok(r) => {
            let changed = r.copied_to_peer
                + r.copied_from_peer
                + r.expunged
                + r.flag_updates
                + r.uid_clashes_renumbered
                + r.mailboxes_changed;
            run.outcome = if !r.equal_after {
                Outcome::Unequal
            } else if changed == 0 && r.differing_mailboxes == 0 {
                Outcome::Equal
            } else {
                Outcome::Repaired
            };
            run.rounds = r.rounds;
            run.bytes_sent = r.bytes_sent;
            run.bytes_received = r.bytes_received;
            run.body_bytes_sent = r.body_bytes_sent;
            run.body_bytes_received = r.body_bytes_received;
            run.differences = RepairedView {
                copied_to_peer: r.copied_to_peer,
                copied_from_peer: r.copied_from_peer,
                expunged: r.expunged,
                flag_updates: r.flag_updates,
                uid_clashes_renumbered: r.uid_clashes_renumbered,
                mailboxes_changed: r.mailboxes_changed,
                bodies_repaired: 0,
            };
        }
        Err(e) => {
            run.outcome = Outcome::Error;
            run.error = Some(e.to_string());
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Arc<Node> {
        let store = Arc::new(Store::in_memory(id).expect("store"));
        let mut config = Config::default();
        config.peers.push(PeerConfig {
            url: "http://127.0.0.1:9".into(),
            token: None,
        });
        Node::new(config, store).expect("node")
    }

    /// A peer's session round that applied something wakes the live-Maildir passes at once
    /// (a stored permit), as the journal's applier does; before it, nothing is pending.
    #[tokio::test]
    async fn a_session_apply_wakes_the_maildir_passes() {
        let n = node("a");
        let wait = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, n.wake_mirror.notified())
            .await
            .is_err());
        n.session_applied();
        let woken =
            tokio::time::timeout(std::time::Duration::from_secs(5), n.wake_mirror.notified());
        assert!(woken.await.is_ok());
    }

    /// Two nodes that start a session with each other at once: the smaller id keeps its own,
    /// the larger yields; neither waits on the other.
    #[test]
    fn one_session_per_pair_the_smaller_id_wins() {
        let a = node("a");
        let b = node("b");
        let a_out = a.begin_outgoing("b").expect("a starts");
        let b_out = b.begin_outgoing("a").expect("b starts");
        // b's round reaches a: a is smaller, keeps its session, b's round is refused.
        assert_eq!(
            a.session_round("b"),
            Err(RoundRefused::InSession {
                node: "a".into(),
                with: "b".into()
            })
        );
        assert!(!a_out.load(Ordering::SeqCst));
        // a's round reaches b: b is larger, stops its own session and serves a's.
        assert!(b.session_round("a").is_ok());
        assert!(
            b_out.load(Ordering::SeqCst),
            "b's own session was told to stop"
        );
        b.end_outgoing("a");
        // While a's session is in progress, b does not start another one with a.
        assert!(b.begin_outgoing("a").is_none());
        a.end_outgoing("b");
        // A node with no session with the caller serves it.
        let c = node("c");
        assert!(c.session_round("a").is_ok());
    }

    /// Until the live Maildirs are taken in, a peer's rounds are refused as "starting" (503,
    /// not the tie's 409), and waiting ends when they are, or when the node stops.
    #[test]
    fn rounds_wait_for_the_live_maildirs_to_be_taken_in() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let a = node("a");
        assert!(
            *a.disk_ready.borrow(),
            "a store of its own mail is ready at once"
        );
        a.disk_ready.send_replace(false);
        assert!(a.starting(), "POST /v1/sync/start is refused too");
        assert_eq!(
            a.session_round("b"),
            Err(RoundRefused::Starting { node: "a".into() })
        );
        let waiter = Arc::clone(&a);
        let waited = runtime.block_on(async move {
            let wait = tokio::spawn(async move { waiter.wait_disk_ready().await });
            tokio::task::yield_now().await;
            a.set_disk_ready();
            let ready = wait.await.expect("join");
            (ready, a.session_round("b"), a.starting())
        });
        assert_eq!(waited, (true, Ok(()), false));
        let c = node("c");
        c.disk_ready.send_replace(false);
        c.shutdown.send_replace(true);
        assert!(
            !runtime.block_on(c.wait_disk_ready()),
            "a stopping node waits no longer"
        );
    }

    #[test]
    fn only_configured_peers_are_peers() {
        let a = node("a");
        assert_eq!(a.is_peer("http://127.0.0.1:9/"), Some(true));
        assert_eq!(a.is_peer("http://127.0.0.1:10"), Some(false));
        let store = Arc::new(Store::in_memory("x").expect("store"));
        let lonely = Node::new(Config::default(), store).expect("node");
        assert_eq!(lonely.is_peer("http://anything"), None);
    }
}
