//! Runs a session over any transport: a function that takes one encoded round and returns
//! the peer's encoded answer (HTTP in `net`, a direct call in tests). Counts round trips and
//! bytes, keeping message bodies apart from metadata.

use super::replica::Replica;
use super::session::{Session, SessionError, SyncReport};
use super::wire::{decode_reply, encode, Reply, Request, RoundReply, RoundRequest, WireError};
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
///
/// Body rounds overlap: while one travels (and the peer reads and sends, or stages, its
/// bodies), a scoped second thread has the session take the answer before it (hash and stage
/// a batch of fetched bodies) and ask the next body round ahead (read the next batch of bodies
/// to send) ([`Session::next_round_ahead`]). At most two rounds are in flight, so at most two
/// batches each way are held. Every other round waits for the answer before it. `send` is
/// only ever called from the calling thread, one round at a time.
pub fn run_with_progress<E>(
    local: &dyn Replica,
    window: u8,
    dry_run: bool,
    mut send: impl FnMut(Vec<u8>) -> Result<Vec<u8>, E>,
    progress: &mut dyn FnMut(Progress),
) -> Result<SyncReport, DriveError<E>> {
    let started = Instant::now();
    let mut session = Session::new(local, window, dry_run)?;
    let mut count = Counts {
        chunk: session.chunk(),
        ..Counts::default()
    };
    // A round asked ahead and not sent yet; an answer come back and not taken yet.
    let mut ahead: Option<RoundRequest> = None;
    let mut in_hand: Option<Vec<u8>> = None;
    loop {
        let round = match ahead.take() {
            Some(round) => {
                count.rounds_ahead += 1;
                round
            }
            None => {
                if let Some(answer) = in_hand.take() {
                    count.take(&mut session, answer, progress)?;
                }
                match session.next_round()? {
                    Some(round) => round,
                    None => break,
                }
            }
        };
        let bytes = encode(&round);
        count.asked(&session, &round, bytes.len() as u64)?;
        let answer = if in_hand.is_some() || session.may_ask_ahead() {
            let earlier = in_hand.take();
            let (meanwhile, answer) = std::thread::scope(|s| {
                let session = &mut session;
                let worker = s.spawn(move || meanwhile(session, earlier));
                let answer = send(bytes);
                (worker.join(), answer)
            });
            let (taken, next) =
                meanwhile.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            if let Some(taken) = taken {
                count.took(&session, taken, progress);
            }
            ahead = next;
            answer.map_err(DriveError::Transport)?
        } else {
            send(bytes).map_err(DriveError::Transport)?
        };
        count.moved += answer.len() as u64;
        in_hand = Some(answer);
    }
    let mut report = session.report;
    report.rounds = count.rounds;
    report.rounds_ahead = count.rounds_ahead;
    report.bytes_sent = count.sent;
    report.bytes_received = count.received;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// What the second thread does while a round travels: takes the answer before it, if one is
/// in hand, then asks the next body round ahead if the session may.
fn meanwhile(
    session: &mut Session<'_>,
    earlier: Option<Vec<u8>>,
) -> Result<(Option<Taken>, Option<RoundRequest>), Untaken> {
    let taken = match earlier {
        Some(answer) => Some(taken(session, answer)?),
        None => None,
    };
    let next = session.next_round_ahead().map_err(Untaken::Session)?;
    Ok((taken, next))
}

/// What the driver counts: rounds (those that find differences per chunk, for the cap), body
/// rounds asked ahead, metadata bytes each way, and every byte moved (for progress).
#[derive(Default)]
struct Counts {
    rounds: u64,
    protocol_rounds: u64,
    rounds_ahead: u64,
    chunk: u64,
    sent: u64,
    received: u64,
    moved: u64,
}

impl Counts {
    /// A round about to be sent: counted, and cut off past [`MAX_ROUNDS`].
    fn asked<E>(
        &mut self,
        session: &Session<'_>,
        round: &RoundRequest,
        len: u64,
    ) -> Result<(), DriveError<E>> {
        self.rounds += 1;
        if session.chunk() != self.chunk {
            self.chunk = session.chunk();
            self.protocol_rounds = 0;
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
            self.protocol_rounds += 1;
        }
        if self.protocol_rounds > MAX_ROUNDS {
            return Err(DriveError::TooManyRounds);
        }
        let body_out: u64 = round.requests.iter().map(Request::body_len).sum();
        self.sent += len.saturating_sub(body_out);
        self.moved += len;
        Ok(())
    }

    /// Takes an answer on this thread, telling `progress` as it goes.
    fn take<E>(
        &mut self,
        session: &mut Session<'_>,
        answer: Vec<u8>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), DriveError<E>> {
        let (reply, taken) = decoded(answer)?;
        let moved = self.moved;
        session.receive_observed(reply, &mut |p| progress(Progress { bytes: moved, ..p }))?;
        self.took(session, taken, progress);
        Ok(())
    }

    /// An answer has been taken: its metadata bytes counted, progress told.
    fn took(&mut self, session: &Session<'_>, taken: Taken, progress: &mut dyn FnMut(Progress)) {
        self.received += taken.len.saturating_sub(taken.body_in);
        progress(Progress {
            bytes: self.moved,
            ..session.progress()
        });
    }
}

/// An answer's size, and how much of it was message bodies.
struct Taken {
    len: u64,
    body_in: u64,
}

/// Why an answer could not be taken: what [`DriveError`] says of it, without the transport's
/// error type (an answer is taken on another thread than the transport's).
enum Untaken {
    Session(SessionError),
    Decode(WireError),
}

impl<E> From<Untaken> for DriveError<E> {
    fn from(e: Untaken) -> Self {
        match e {
            Untaken::Session(e) => DriveError::Session(e),
            Untaken::Decode(e) => DriveError::Decode(e),
        }
    }
}

/// An answer decoded, with its size and how much of it was bodies.
fn decoded(answer: Vec<u8>) -> Result<(RoundReply, Taken), Untaken> {
    let len = answer.len() as u64;
    let reply = decode_reply(&answer).map_err(Untaken::Decode)?;
    let body_in: u64 = reply.replies.iter().map(Reply::body_len).sum();
    Ok((reply, Taken { len, body_in }))
}

/// Takes an answer on the driver's second thread (no progress told there: the driver tells it
/// once the thread is done).
fn taken(session: &mut Session<'_>, answer: Vec<u8>) -> Result<Taken, Untaken> {
    let (reply, taken) = decoded(answer)?;
    session.receive(reply).map_err(Untaken::Session)?;
    Ok(taken)
}

/// A transport that answers from another replica in the same process (tests, benchmarks).
pub fn in_process(peer: &dyn Replica) -> impl FnMut(Vec<u8>) -> Result<Vec<u8>, String> + '_ {
    move |bytes| {
        let round = super::wire::decode_request(&bytes).map_err(|e| e.to_string())?;
        let reply = super::responder::answer(peer, &round).map_err(|e| e.to_string())?;
        Ok(encode(&reply))
    }
}
