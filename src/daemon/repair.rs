//! Repairing bodies that rotted here: each check first asks the peer for a good copy of every
//! body marked damaged (by `merkmail verify --bodies`, or by a read that found the bytes no
//! longer matching their digest), checks the copy against the digest, and puts it in place
//! in one transaction (`Store::repair_body`). Bodies are not in the Merkle tree, so a session
//! never notices bit rot: this step is the only thing that mends it.

use super::node::Peer;
use crate::model::Digest;
use crate::net::peer_client::PeerError;
use crate::store::Store;
use std::sync::Arc;
use tracing::{info, warn};

/// What one repair pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyRepairs {
    /// Damaged bodies replaced by the peer's copy.
    pub repaired: u64,
    /// Damaged bodies the peer holds no sound copy of (404): left as they are.
    pub unavailable: u64,
    /// Damaged bodies the pass could not mend for another reason (the peer's answer was not a
    /// good copy, a store error, the peer went away): left as they are, tried again next check.
    pub failed: u64,
}

/// Fetches a good copy of every body marked damaged here from `peer` and puts it in place.
/// Changes nothing but the damaged bodies themselves (and their marks).
pub async fn repair_bodies(store: &Arc<Store>, peer: &Peer) -> BodyRepairs {
    let mut out = BodyRepairs::default();
    let marks = {
        let store = Arc::clone(store);
        match tokio::task::spawn_blocking(move || store.damaged_bodies()).await {
            Ok(Ok(marks)) => marks,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the damaged-body marks");
                return out;
            }
            Err(e) => {
                warn!(error = %e, "the damaged-body task failed");
                return out;
            }
        }
    };
    for (digest, _) in marks {
        match fetch(peer, &digest).await {
            Fetched::Copy(bytes) => {
                let store = Arc::clone(store);
                let done =
                    tokio::task::spawn_blocking(move || store.repair_body(&digest, &bytes)).await;
                match done {
                    Ok(Ok(true)) => {
                        info!(peer = %peer.url(), %digest, "repaired a damaged body with the peer's copy");
                        out.repaired += 1;
                    }
                    // Freed, or mended by a change that brought the body, meanwhile.
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        warn!(peer = %peer.url(), %digest, error = %e, "cannot store the repaired body");
                        out.failed += 1;
                    }
                    Err(e) => {
                        warn!(%digest, error = %e, "the body repair task failed");
                        out.failed += 1;
                    }
                }
            }
            Fetched::NotThere => out.unavailable += 1,
            Fetched::Bad(why) => {
                warn!(peer = %peer.url(), %digest, error = %why, "cannot repair a damaged body from the peer");
                out.failed += 1;
            }
            Fetched::Unreachable(why) => {
                warn!(peer = %peer.url(), error = %why, "body repair stopped: the peer did not answer");
                out.failed += 1;
                break;
            }
        }
    }
    if out.unavailable > 0 {
        warn!(
            peer = %peer.url(),
            bodies = out.unavailable,
            "damaged bodies the peer holds no sound copy of; `merkmail verify --bodies` lists them"
        );
    }
    out
}

enum Fetched {
    Copy(Vec<u8>),
    NotThere,
    Bad(BadCopy),
    Unreachable(PeerError),
}

/// Why the peer's answer for one body cannot mend it.
#[derive(Debug, thiserror::Error)]
enum BadCopy {
    #[error("the peer's copy hashes to {0}")]
    Mismatch(Digest),
    /// It answered with an error status: this body cannot be had, the next one may.
    #[error(transparent)]
    Refused(PeerError),
}

/// Asks the peer for one body and checks what comes back against the digest.
async fn fetch(peer: &Peer, digest: &Digest) -> Fetched {
    match peer.client.body(digest).await {
        Ok(Some(bytes)) => {
            let actual = Digest::of(&bytes);
            if actual == *digest {
                Fetched::Copy(bytes.to_vec())
            } else {
                Fetched::Bad(BadCopy::Mismatch(actual))
            }
        }
        Ok(None) => Fetched::NotThere,
        Err(e) if e.answered() => Fetched::Bad(BadCopy::Refused(e)),
        Err(e) => Fetched::Unreachable(e),
    }
}
