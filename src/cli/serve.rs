//! `merkmail serve`: the configuration (file, then flags), the store, the runtime, the signals
//! that stop it, and the `listening on ADDR` line that scripts wait for.

use super::args::ServeArgs;
use crate::daemon::config::{Config, Overrides};
use crate::daemon::node::Node;
use crate::daemon::Daemon;
use crate::net::server;
use crate::net::ServerState;
use crate::status::Mode;
use crate::store::{Store, DB_FILE};
use anyhow::{bail, Context, Result};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The target of this module's log lines: the binary's, as before the command line moved into
/// the library, so a `MERKMAIL_LOG` filter and the lines on stderr stay as they were.
const LOG: &str = "merkmail";

/// Reads the configuration (and fails before binding anything if it is wrong), opens the
/// store (creating it when a node id is configured and DIR holds none), binds, prints
/// `listening on ADDR` on stdout (with the real port when ADDR asked for port 0), starts the
/// daemon, and serves until SIGTERM or SIGINT; then stops the daemon's tasks, drains, and
/// exits 0.
pub(super) fn serve(args: ServeArgs) -> Result<ExitCode> {
    let config_file = args.config.clone();
    let mut config = match &config_file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply(args.into_overrides());
    let origin = match &config_file {
        Some(p) => format!("config {}", p.display()),
        None => "command line".to_string(),
    };
    config.validate(&origin)?;
    // Certificates are read and checked before anything is bound or opened.
    let (server_tls, client_tls) = config.tls(&origin)?;
    let (Some(dir), Some(listen)) = (config.data_dir.clone(), config.listen.clone()) else {
        bail!("{origin}: data_dir and listen are required");
    };
    crate::store::set_cache_mb(config.cache_mb.unwrap_or(0));
    let store = open_store(&dir, config.node_id.as_deref(), &origin)?;
    store.set_quick_repair(config.quick_repair);
    store.set_max_clock_skew(config.max_clock_skew_ms());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot listen on {listen}"))?;
        warn_if_open(&config, addr);
        let store = Arc::new(store);
        let node = Node::new(config.clone(), Arc::clone(&store))?;
        let state = ServerState::new(
            store,
            config.peer_token.as_deref(),
            config.limits.to_limits(),
        )
        .with_admin_token(config.admin_token.as_deref())
        .with_tls(server_tls)
        .with_client_tls(client_tls)
        .with_hooks(node.clone());
        let daemon = Daemon::start(node)?;
        tracing::info!(
            target: LOG,
            node = %daemon.node.node_id,
            peers = config.peers.len(),
            mode = config.mode.as_str(),
            check_interval_s = config.check_interval_s,
            "daemon started"
        );
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::run(listener, Arc::new(state), async move {
            let _ = stopped_rx.await;
        }));
        shutdown.await;
        // Sessions stop at their next round, shippers between batches; then the server drains.
        daemon
            .stop(Duration::from_millis(config.shutdown_timeout_ms))
            .await;
        let _ = stopped_tx.send(());
        let _ = server.await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

impl ServeArgs {
    /// The flags as overrides of the configuration file's keys; --data falls back to
    /// MERKMAIL_DATA (read here, not by clap, like the mail commands' --data).
    fn into_overrides(self) -> Overrides {
        Overrides {
            data_dir: self.data.or_else(|| {
                std::env::var_os("MERKMAIL_DATA")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            }),
            listen: self.listen,
            peer_token: self.token,
            admin_token: self.admin_token,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_ca: self.tls_ca,
            peers: self.peers,
            check_interval_s: self.check_interval,
            rescan_interval_s: self.rescan_interval,
            mode: self.mode.as_deref().and_then(Mode::parse),
            sync_timeout_ms: self.sync_timeout,
            tombstone_retention: self.tombstone_retention,
            node_id: self.node_id,
        }
    }
}

/// The store in `dir`; with a configured node id it must be that node's, and it is created
/// when `dir` holds no store file at all (a store file that fails to open is an error, never
/// replaced).
fn open_store(dir: &std::path::Path, node_id: Option<&str>, origin: &str) -> Result<Store> {
    match (Store::open(dir), node_id) {
        (Ok(store), Some(id)) if store.node_id() != id => bail!(
            "{origin}: key `node_id`: {id:?} does not match the store in {}, which belongs to node {:?}",
            dir.display(),
            store.node_id()
        ),
        (Ok(store), _) => Ok(store),
        (Err(_), Some(id)) if !dir.join(DB_FILE).exists() => {
            let store = Store::init(dir, id)?;
            tracing::info!(target: LOG, dir = %dir.display(), node = %id, "created an empty store");
            Ok(store)
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// Warns when the address is reachable from elsewhere and a token that would guard it is
/// missing, or when the mail API is shut because only the peer token is set.
fn warn_if_open(config: &Config, addr: SocketAddr) {
    if config.peer_token.is_none() && !addr.ip().is_loopback() {
        if config.admin_token.is_none() {
            tracing::warn!(target: LOG, %addr, "no --token and no --admin-token: anyone who can reach this address can read and change the mail");
        } else {
            tracing::warn!(target: LOG, %addr, "no --token: anyone who can reach this address can use the peer API");
        }
    }
    if config.peer_token.is_some() && config.admin_token.is_none() {
        tracing::warn!(target: LOG, "no admin token configured (admin_token, --admin-token): the mail API and /v1/sync/start answer 403");
    }
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed before this returns,
/// so a signal that arrives while the server starts is not lost.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(target: LOG, signal = name, "shutting down");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(target: LOG, "shutting down");
    })
}
