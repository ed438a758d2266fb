//! Reconciliation over HTTP: the transport that carries a session's rounds to a peer's
//! `/v1/sync/round`, and the calls behind `merkmail sync`.

use super::client::{expect_success, BlockingClient, ClientConfig, ClientError};
use super::peer::SYNC_CONTENT_TYPE;
use crate::store::Store;
use crate::sync::{run, DriveError, SyncReport};
use serde::Serialize;

/// Reconciles `store` with the peer at `url` (one session; a second one with a fresh hash
/// window if a truncated-hash false match left the roots unequal).
pub fn sync_with_peer(
    store: &Store,
    url: &str,
    token: Option<&str>,
    dry_run: bool,
) -> Result<SyncReport, DriveError> {
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
) -> Result<SyncReport, DriveError> {
    let client = BlockingClient::new(url, token, config)
        .map_err(|e| DriveError::Transport(e.to_string()))?;
    let send = |bytes: Vec<u8>| -> Result<Vec<u8>, ClientError> {
        let answer = client.post("/v1/sync/round", SYNC_CONTENT_TYPE, bytes)?;
        Ok(expect_success(&client.client().url("/v1/sync/round"), answer)?.to_vec())
    };
    sync_over(store, dry_run, send)
}

/// Reconciles `store` with a peer reached through `send` (one round's bytes out, its answer
/// back): one session with a random hash window, and a second one with another window if the
/// first ends unequal.
pub fn sync_over<E: std::fmt::Display>(
    store: &Store,
    dry_run: bool,
    mut send: impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
) -> Result<SyncReport, DriveError> {
    let window = rand::random::<u8>() % 32;
    let first = run(store, window, dry_run, &mut send)?;
    if first.equal_after || dry_run {
        return Ok(first);
    }
    // Rare: a 4-byte false match hid a difference, or a side changed meanwhile. One more
    // session with another window; its counts are added to the first's.
    let mut second = run(store, (window + 13) % 32, dry_run, &mut send)?;
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
    let answer = client.post("/v1/sync/start", "application/json", body)?;
    let body = expect_success(&client.client().url("/v1/sync/start"), answer)?;
    serde_json::from_slice(&body).map_err(|e| {
        ClientError::from_status(
            &client.client().url("/v1/sync/start"),
            hyper::StatusCode::BAD_GATEWAY,
            format!("unreadable report: {e}").as_bytes(),
        )
    })
}
