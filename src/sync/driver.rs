//! Runs a session over any transport: a function that takes one encoded round and returns
//! the peer's encoded answer (HTTP in `net`, a direct call in tests). Counts round trips and
//! bytes, keeping message bodies apart from metadata.

use super::replica::Replica;
use super::session::{Session, SessionError, SyncReport};
use super::wire::{decode_reply, encode, Reply, Request};
use crate::model::{no_progress, Progress};
use std::time::Instant;
use thiserror::Error;

/// A session never needs more rounds than this per chunk to find and apply its differences
/// (the tree is 14 levels deep), body batches and Apply rounds aside (both bounded by the
/// plan); more means a peer that keeps the session going, and it is cut off. The chunks are
/// bounded too: each takes at least one user that differs.
pub const MAX_ROUNDS: u64 = 64;

/// Why a session did not finish. `E` is the transport's own error, kept as it is so the
/// caller can tell an unreachable peer from, say, a refusal (sync knows no transport).
#[derive(Debug, Error)]
pub enum DriveError<E> {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the peer's answer could not be read: {0}")]
    Decode(#[from] super::wire::WireError),
    #[error("transport: {0}")]
    Transport(E),
    #[error("the session did not finish within {MAX_ROUNDS} rounds")]
    TooManyRounds,
}

/// Reconciles `local` with a peer reached through `send`. `window` picks which 4 bytes of
/// each hash are compared (choose it at random per session).
pub fn run<E>(
    local: &dyn Replica,
    window: u8,
    dry_run: bool,
    send: impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
) -> Result<SyncReport, DriveError<E>> {
    run_with_progress(local, window, dry_run, send, &mut no_progress)
}

/// [`run`], telling `progress` after every round how far the session has come
/// ([`Session::progress`]) and how many bytes have moved both ways so far, bodies included.
pub fn run_with_progress<E>(
    local: &dyn Replica,
    window: u8,
    dry_run: bool,
    mut send: impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
    progress: &mut dyn FnMut(Progress),
) -> Result<SyncReport, DriveError<E>> {
    let started = Instant::now();
    let mut moved = 0u64;
    let mut session = Session::new(local, window, dry_run)?;
    let mut rounds = 0u64;
    let mut protocol_rounds = 0u64;
    let mut chunk = session.chunk();
    let (mut sent, mut received) = (0u64, 0u64);
    while let Some(round) = session.next_round()? {
        rounds += 1;
        if session.chunk() != chunk {
            chunk = session.chunk();
            protocol_rounds = 0;
        }
        // Body batches and Apply rounds are bounded by the plan (they carry what it found);
        // the cap is on the rounds that find differences.
        let carries_plan = round.requests.iter().all(|r| {
            matches!(
                r,
                Request::Bodies { .. } | Request::PutBodies { .. } | Request::Apply { .. }
            )
        });
        if !carries_plan {
            protocol_rounds += 1;
        }
        if protocol_rounds > MAX_ROUNDS {
            return Err(DriveError::TooManyRounds);
        }
        let body_out: u64 = round.requests.iter().map(Request::body_len).sum();
        let bytes = encode(&round);
        let bytes_len = bytes.len();
        sent += (bytes.len() as u64).saturating_sub(body_out);
        let answer = send(bytes).map_err(DriveError::Transport)?;
        let reply = decode_reply(&answer)?;
        let body_in: u64 = reply.replies.iter().map(Reply::body_len).sum();
        received += (answer.len() as u64).saturating_sub(body_in);
        moved += (bytes_len + answer.len()) as u64;
        session.receive_observed(reply, &mut |p| progress(Progress { bytes: moved, ..p }))?;
        progress(Progress {
            bytes: moved,
            ..session.progress()
        });
    }
    let mut report = session.report;
    report.rounds = rounds;
    report.bytes_sent = sent;
    report.bytes_received = received;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A transport that answers from another replica in the same process (tests, benchmarks).
pub fn in_process(peer: &dyn Replica) -> impl FnMut(Vec<u8>) -> Result<Vec<u8>, String> + '_ {
    move |bytes| {
        let round = super::wire::decode_request(&bytes).map_err(|e| e.to_string())?;
        let reply = super::responder::answer(peer, &round).map_err(|e| e.to_string())?;
        Ok(encode(&reply))
    }
}
