//! The accept loop: one task per connection (HTTP/1.1, hyper, over TLS when configured), a
//! cap on connections, and a graceful shutdown that stops accepting, lets requests in flight
//! finish within a drain deadline, then closes whatever is left.

use super::request::Token;
use super::router;
use super::tls::{ClientTls, ServerTls};
use super::ApiError;
use crate::store::{Store, StoreError};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// What one request may cost. The defaults suit a mail server; tests shrink them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Body limit of an append (raw message bytes): 64 MiB.
    pub max_append_body: usize,
    /// Body limit of the peer routes under `/v1/sync/` (they carry message bodies): 64 MiB.
    pub max_sync_body: usize,
    /// Body limit of every other route: 1 MiB.
    pub max_body: usize,
    /// Items in one list-holding body (UIDs in an expunge, messages in a batch append): 10 000.
    pub max_items: usize,
    /// Time a client has to send a request's headers: 10 s.
    pub header_read_timeout: Duration,
    /// Time from a request's headers to its answer, body included: 60 s. Reading the body
    /// past it answers 408; the work past it answers 503.
    pub request_timeout: Duration,
    /// Time requests in flight get to finish after shutdown begins: 10 s.
    pub drain_timeout: Duration,
    /// Connections served at once; more wait in the listen queue: 512.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_append_body: 64 << 20,
            max_sync_body: 64 << 20,
            max_body: 1 << 20,
            max_items: 10_000,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// `GET /v1/journal/position`: this node's outbound journal toward the asking node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalPosition {
    /// Whether the asker is a configured peer this node can place.
    pub known: bool,
    /// Entries not yet acknowledged by the asker.
    pub depth: u64,
    /// The asker's journal was dropped: only a Merkle session repairs what it missed.
    pub overflowed: bool,
    /// Entries received from the asker and not applied here yet.
    #[serde(default)]
    pub inbound_pending: u64,
}

/// What the daemon (background checker, journal) offers the HTTP side. The server runs
/// without one too (`merkmail serve` with no peers still has it; tests may leave it out).
/// Why a session round is refused for now; the peer's session ends and retries later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundRefused {
    /// This node is in a session with that node already and wins the tie (409).
    InSession { node: String, with: String },
    /// This node's index has not taken in its live Maildirs yet (its first pass since it
    /// started is running): a session now would compare the peer with an index that does not
    /// show the mail this server holds (503).
    Starting { node: String },
}

impl std::fmt::Display for RoundRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundRefused::InSession { node, with } => {
                write!(f, "{node} is in a session with {with} already; retry later")
            }
            RoundRefused::Starting { node } => write!(
                f,
                "{node} is still taking in its Maildirs (its first pass since it started); retry shortly"
            ),
        }
    }
}

pub trait Hooks: Send + Sync + 'static {
    /// The snapshot behind `GET /status`, `/metrics` and `/`.
    fn status(&self) -> crate::status::StatusView;
    /// Called after a mail write committed, before the writer gets its answer: in `sync`
    /// mode this waits until a peer stored the change or the sync timeout passed.
    fn wrote(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// A journal batch from node `from` was stored: apply it soon.
    fn journal_received(&self, from: &str);
    /// `GET /v1/journal/position` from node `from` (a node that just started): where this
    /// node's journal toward it stands (`None` when `from` is not a peer it can place). Also
    /// wakes the shipper toward it, so the journal goes first.
    fn journal_position(&self, from: &str) -> Option<JournalPosition>;
    /// A session round from node `from` (header `x-merkmail-node`) is about to be answered,
    /// unless this node refuses it for now: the other side's session then ends and retries
    /// later.
    fn session_round(&self, from: &str) -> Result<(), RoundRefused>;
    /// Node `from` sent its root in a session round and it equalled this node's, which was
    /// read after `at_ms` (ms since the epoch): the tombstone rule's evidence that the peer
    /// holds every expunge this node held then (daemon/tombstones.rs).
    fn roots_equal(&self, from: &str, at_ms: u64);
    /// A session round's Apply changed this node's store (some group passed its guard):
    /// what it wrote may be owed to a live Maildir now.
    fn session_applied(&self);
    /// Whether `url` is a configured peer (`POST /v1/sync/start` only reaches those).
    /// `None`: no peers are configured and any URL is allowed.
    fn is_peer(&self, url: &str) -> Option<bool>;
    /// This node's id, for `GET /v1/sync/hello` and journal acknowledgements.
    fn node_id(&self) -> String;
    /// Whether this node's index has not taken in its live Maildirs yet (its first pass since
    /// it started is running): it neither answers nor starts a session until it has
    /// ([`RoundRefused::Starting`], 503).
    fn starting(&self) -> bool;
}

/// The store's counters as the status snapshot shows them, for every builder of a snapshot
/// (the daemon's [`Hooks::status`], and the router when there is no daemon). Here and not in
/// the status module, which is pure and knows no store.
pub fn counts_view(c: &crate::store::Counters) -> crate::status::CountsView {
    crate::status::CountsView {
        users: c.users,
        mailboxes: c.mailboxes,
        messages: c.messages,
        message_bytes: c.message_bytes,
        bodies: c.bodies,
        body_bytes: c.body_bytes,
        tombstones: c.tombstones,
    }
}

/// Everything a request handler can reach: the store, the limits, the tokens, the daemon.
pub struct ServerState {
    /// The store is synchronous (redb): call it through [`ServerState::with_store`], which runs
    /// it on tokio's blocking pool.
    pub store: Arc<Store>,
    pub limits: Limits,
    /// What peers present on `/v1/sync/` and `/v1/journal`. `None`: open (loopback only!).
    token: Option<Token>,
    /// What the mail API and admin routes want; never the peer token by default.
    admin: AdminAuth,
    pub hooks: Option<Arc<dyn Hooks>>,
    /// The listener speaks TLS with this certificate; `None`: plain HTTP.
    tls: Option<ServerTls>,
    /// What `POST /v1/sync/start` trusts when it reaches an `https://` peer.
    client_tls: Option<ClientTls>,
}

/// How the mail API and the admin routes are guarded.
#[derive(Debug)]
pub(crate) enum AdminAuth {
    /// No token of any kind is configured: everything under `/v1/` is open (loopback only).
    Open,
    /// A peer token is configured but no admin token: the admin routes answer 403, so a
    /// peer's token never reads or changes mail.
    Unset,
    /// The admin routes want this token.
    Token(Token),
}

impl ServerState {
    /// `token`: the peer token, what `Authorization: Bearer …` must carry on the peer API
    /// (`/v1/sync/…`, `/v1/journal…`). The mail API and the admin routes want a token of their
    /// own ([`ServerState::with_admin_token`]): without one they answer 403 once a peer token
    /// is set, and are open only when no token at all is configured.
    pub fn new(store: Arc<Store>, token: Option<&str>, limits: Limits) -> ServerState {
        ServerState {
            store,
            limits,
            token: token.map(Token::new),
            admin: if token.is_some() {
                AdminAuth::Unset
            } else {
                AdminAuth::Open
            },
            hooks: None,
            tls: None,
            client_tls: None,
        }
    }

    /// The listener speaks TLS (every connection, every route) with this certificate.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> ServerState {
        self.tls = tls;
        self
    }

    /// What outgoing sessions started over HTTP (`POST /v1/sync/start`) trust for `https://`.
    pub fn with_client_tls(mut self, tls: Option<ClientTls>) -> ServerState {
        self.client_tls = tls;
        self
    }

    pub(crate) fn client_tls(&self) -> Option<&ClientTls> {
        self.client_tls.as_ref()
    }

    /// The mail API and admin routes want `token` (`None` leaves them as they are).
    /// `daemon::config` refuses an admin token equal to a peer token; this does not check.
    pub fn with_admin_token(mut self, token: Option<&str>) -> ServerState {
        if let Some(t) = token {
            self.admin = AdminAuth::Token(Token::new(t));
        }
        self
    }

    pub fn with_hooks(mut self, hooks: Arc<dyn Hooks>) -> ServerState {
        self.hooks = Some(hooks);
        self
    }

    pub(crate) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    pub(crate) fn admin(&self) -> &AdminAuth {
        &self.admin
    }

    /// Runs `f` on the store in tokio's blocking pool (a redb transaction must not block the
    /// async workers) and maps its error to an HTTP answer (see `From<StoreError>`).
    pub async fn with_store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::internal(format!("the store task failed: {e}")))?
            .map_err(ApiError::from)
    }
}

/// Serves `listener` until `shutdown` completes, then drains: no new connections, requests in
/// flight get `limits.drain_timeout` to finish, idle keep-alive connections close at once.
/// Returns when every connection is closed.
pub async fn run(listener: TcpListener, state: Arc<ServerState>, shutdown: impl Future) {
    match listener.local_addr() {
        Ok(addr) => info!(
            %addr,
            auth = state.token.is_some(),
            tls = state.tls.is_some(),
            "listening"
        ),
        Err(e) => warn!(error = %e, "listening on an address the system will not tell"),
    }
    let limits = state.limits.clone();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        // Take a slot before accepting, so that at the cap new clients wait in the kernel's
        // listen queue instead of holding a socket we will not serve.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed; nothing sensible to do but stop
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: transient; do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let http = http.clone();
        // Taken now, so the drain waits for a connection still in its TLS handshake too.
        let watcher = graceful.watcher();
        connections.spawn(async move {
            match state.tls.clone() {
                None => serve_connection(stream, http, watcher, state, peer).await,
                Some(tls) => {
                    // The handshake gets the header deadline: a client that trickles it
                    // holds a connection slot no longer than one that trickles headers.
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(state.limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, http, watcher, state, peer).await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake not done by the header deadline"),
                    }
                }
            }
            drop(slot);
        });
    }

    drop(listener);
    info!(
        connections = connections.len(),
        "shutting down: draining requests in flight"
    );
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            connections = connections.len(),
            deadline = ?limits.drain_timeout,
            "requests still in flight at the drain deadline; closing their connections"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    info!("stopped");
}

/// Serves one connection (plain TCP or TLS) until it closes or the drain ends it.
async fn serve_connection<S>(
    io: S,
    http: http1::Builder,
    watcher: Watcher,
    state: Arc<ServerState>,
    peer: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, std::convert::Infallible>(router::handle(state, req).await) }
    });
    let conn = watcher.watch(http.serve_connection(TokioIo::new(io), service));
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
