//! The peer-to-peer decoders and what stands behind them: a session round answered by the
//! responder, a peer's replies driving this node's session, and a journal batch stored and
//! applied. Each check starts from the fixture store as built (`fixture::with_fixture`).

use crate::fixture;
use merkmail::sync::journal_wire::{decode_batch, encode_batch};
use merkmail::sync::responder::answer;
use merkmail::sync::session::Session;
use merkmail::sync::wire::{decode_reply, decode_request, encode};

/// The hash window every check uses (a session picks one at random; a fixed one keeps runs
/// reproducible).
pub const WINDOW: u8 = 0;
/// At most this many rounds of a session driven by the input.
pub const MAX_ROUNDS: usize = 16;
/// At most this many calls of the journal's inbound apply.
const MAX_APPLY_CALLS: usize = 64;

fn verified(store: &merkmail::store::Store, after: &str) {
    let report = store.verify().expect("verify runs");
    assert!(report.is_ok(), "verify failed after {after}: {report:?}");
}

/// `POST /v1/sync/round`'s body: a round request is decoded, re-encodes to itself, and is
/// answered from the fixture. An answer that fails leaves the store as it was (the peer is
/// told 4xx/5xx, so nothing may have changed); one that succeeds leaves a store that verifies
/// and a reply that decodes to itself.
pub fn round_request(data: &[u8]) {
    let Ok(round) = decode_request(data) else {
        return;
    };
    let again = decode_request(&encode(&round)).expect("a decoded round re-encodes");
    assert_eq!(again, round, "decode(encode(round)) != round");
    fixture::with_fixture(|store| {
        let before = store.root().expect("root");
        match answer(store.as_ref(), &round) {
            Ok(reply) => {
                let back = decode_reply(&encode(&reply)).expect("our own reply decodes");
                assert_eq!(back, reply, "decode(encode(reply)) != reply");
            }
            Err(e) => {
                let after = store.root().expect("root");
                assert_eq!(before, after, "a refused round ({e}) changed the store");
            }
        }
        verified(store, "answering a round");
    });
}

/// A peer's answers, as the initiator receives them: `data` is a sequence of replies, each a
/// 2-byte big-endian length and that many bytes. The fixture runs a session whose every round
/// is answered by the next reply; the session may end with an error at any point, but never
/// panics, and the store verifies afterwards.
pub fn session_replies(data: &[u8]) {
    fixture::with_fixture(|store| {
        let mut session = Session::new(store.as_ref(), WINDOW, false).expect("session");
        let mut rest = data;
        for _ in 0..MAX_ROUNDS {
            match session.next_round() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
            let Some((reply, tail)) = split_frame(rest) else {
                break;
            };
            rest = tail;
            let Ok(reply) = decode_reply(reply) else {
                break;
            };
            let again = decode_reply(&encode(&reply)).expect("a decoded reply re-encodes");
            assert_eq!(again, reply, "decode(encode(reply)) != reply");
            if session.receive(reply).is_err() {
                break;
            }
        }
        drop(session);
        verified(store, "a session with a hostile peer");
    });
}

/// One frame of [`session_replies`]' input: a 2-byte big-endian length, then the bytes.
pub fn split_frame(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// `POST /v1/journal`'s body: a batch is decoded, re-encodes to itself, is stored by the
/// fixture and applied entry by entry; the store verifies afterwards. A refused batch
/// changes nothing.
pub fn journal_batch(data: &[u8]) {
    let Ok(batch) = decode_batch(data) else {
        return;
    };
    let again = decode_batch(&encode_batch(&batch)).expect("a decoded batch re-encodes");
    assert_eq!(again, batch, "decode(encode(batch)) != batch");
    fixture::with_fixture(|store| {
        let before = (
            store.root().expect("root"),
            store.counters().expect("counters"),
        );
        match store.journal_receive(&batch) {
            Ok(_) => {
                for _ in 0..MAX_APPLY_CALLS {
                    match store.journal_apply_inbound(8) {
                        Ok(applied) if applied.remaining > 0 => {}
                        Ok(_) | Err(_) => break,
                    }
                }
            }
            Err(e) => {
                let after = (
                    store.root().expect("root"),
                    store.counters().expect("counters"),
                );
                assert_eq!(before, after, "a refused batch ({e}) changed the store");
            }
        }
        verified(store, "applying a journal batch");
    });
}
