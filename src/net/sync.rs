//! Reconciliation over HTTP: the transport that carries a session's rounds to a peer's
//! `/v1/sync/round`, and the calls behind `merkmail sync`.

use super::client::{expect_success, BlockingClient, ClientConfig, ClientError};
use super::peer_client::{PeerClient, PeerError};
use super::routes;
use crate::model::{no_progress, Progress};
use crate::store::Store;
use crate::sync::{run_with_progress, DriveError, SyncReport};
use serde::Serialize;

/// Reconciles `store` with the peer at `url` (one session; a second one with a fresh hash
/// window if a truncated-hash false match left the roots unequal).
pub fn sync_with_peer(
    store: &Store,
    url: &str,
    token: Option<&str>,
    dry_run: bool,
) -> Result<SyncReport, DriveError<PeerError>> {
    sync_with_peer_using(store, url, token, dry_run, ClientConfig::default())
}

/// [`sync_with_peer`] with the client's settings given (e.g. the CAs an `https://` peer's
/// certificate must chain to).
pub fn sync_with_peer_using(
    store: &Store,
    url: &str,
    token: Option<&str>,
    dry_run: bool,
    config: ClientConfig,
) -> Result<SyncReport, DriveError<PeerError>> {
    sync_with_peer_with_progress(store, url, token, dry_run, config, &mut no_progress)
}

/// [`sync_with_peer_using`], telling `progress` after every round how far the reconciliation
/// has come ([`sync_over_with_progress`]).
pub fn sync_with_peer_with_progress(
    store: &Store,
    url: &str,
    token: Option<&str>,
    dry_run: bool,
    config: ClientConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<SyncReport, DriveError<PeerError>> {
    let setup = |e: ClientError| DriveError::Transport(PeerError::Setup(e));
    // The session is synchronous; each round runs on a private current-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| setup(ClientError::Runtime(e)))?;
    let peer = PeerClient::new(url, token, None, config).map_err(setup)?;
    sync_over_with_progress(
        store,
        dry_run,
        |bytes| runtime.block_on(peer.round(bytes)),
        progress,
    )
}

/// Reconciles `store` with a peer reached through `send` (one round's bytes out, its answer
/// back): one session with a random hash window, and a second one with another window if the
/// first ends unequal. A transport failure comes back as `DriveError::Transport` holding
/// `send`'s own error.
pub fn sync_over<E>(
    store: &Store,
    dry_run: bool,
    send: impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
) -> Result<SyncReport, DriveError<E>> {
    sync_over_with_progress(store, dry_run, send, &mut no_progress)
}

/// [`sync_over`], telling `progress` after every round how many messages have been copied
/// either way, of how many (once the first session's plan is made), and the bytes moved; a
/// second session's counts follow on from the first's.
pub fn sync_over_with_progress<E>(
    store: &Store,
    dry_run: bool,
    mut send: impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
    progress: &mut dyn FnMut(Progress),
) -> Result<SyncReport, DriveError<E>> {
    let window = rand::random::<u8>() % 32;
    let mut last = Progress::default();
    let first = run_with_progress(store, window, dry_run, &mut send, &mut |p| {
        last = p;
        progress(p);
    })?;
    if first.equal_after || dry_run {
        return Ok(first);
    }
    // Rare: a 4-byte false match hid a difference, or a side changed meanwhile. One more
    // session with another window; its counts are added to the first's.
    let mut second = run_with_progress(store, (window + 13) % 32, dry_run, &mut send, &mut |p| {
        progress(Progress {
            done: last.done + p.done,
            total: p.total.map(|t| last.done + t),
            bytes: last.bytes + p.bytes,
        })
    })?;
    second.add_work_of(&first);
    Ok(second)
}

#[derive(Serialize)]
struct Start<'a> {
    peer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    dry_run: bool,
}

/// Asks the server at `url` to reconcile with `peer` now, and returns its report. `config`
/// is this client's (how it reaches `url`); the server uses its own trust to reach `peer`.
pub fn start_remote(
    url: &str,
    token: Option<&str>,
    peer: &str,
    peer_token: Option<&str>,
    dry_run: bool,
    config: ClientConfig,
) -> Result<SyncReport, ClientError> {
    let client = BlockingClient::new(url, token, config)?;
    let body = serde_json::to_vec(&Start {
        peer,
        token: peer_token,
        dry_run,
    })
    .unwrap_or_default();
    let answer = client.post(routes::START, "application/json", body)?;
    let body = expect_success(&client.client().url(routes::START), answer)?;
    serde_json::from_slice(&body).map_err(|e| {
        ClientError::from_status(
            &client.client().url(routes::START),
            hyper::StatusCode::BAD_GATEWAY,
            format!("unreadable report: {e}").as_bytes(),
        )
    })
}
