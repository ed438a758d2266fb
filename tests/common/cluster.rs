//! Real `merkmail serve` processes for the multi-process tests that kill and load them
//! (crash_loop, load): nodes with a config file each, writers that keep a ledger of what the
//! server acknowledged, and the checks that every acknowledged write holds everywhere. The
//! nodes themselves are [`super::node::Node`]s.

use super::node::{Node, Setup};
use merkmail::net::client::{BlockingClient, ClientConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PEER_TOKEN: &str = "cluster-peer-secret";
pub const ADMIN_TOKEN: &str = "cluster-admin-secret";

/// The nodes' shared setup: plain HTTP, these tokens, `info` logs.
pub fn setup() -> Setup {
    Setup::http(PEER_TOKEN, ADMIN_TOKEN)
}

/// What writers were told succeeded, and everything they tried.
#[derive(Default)]
pub struct Ledger {
    /// md5 of every message a writer tried to append (acknowledged or not).
    pub tried: BTreeSet<String>,
    /// md5 → user, for appends answered 2xx.
    pub appended: BTreeMap<String, String>,
    pub expunged: BTreeSet<String>,
    /// md5 of every message an expunge was sent for: one that got no answer (the server was
    /// killed) may or may not have happened.
    pub expunge_tried: BTreeSet<String>,
    pub seen: BTreeSet<String>,
    /// Requests answered 2xx (an append of five messages is one).
    pub requests: u64,
}

pub fn body(tag: &str) -> Vec<u8> {
    format!(
        "From: crash@example.org\r\nSubject: {tag}\r\nMessage-ID: <{tag}@crash>\r\n\r\n\
         this message must survive: {tag}\r\n{}\r\n",
        "x".repeat(200)
    )
    .into_bytes()
}

/// Writes to `url` until `stop` or the server goes away: appends one message at a time
/// (some in batches of 5), and now and then expunges or flags one it appended before.
/// Everything answered 2xx goes in the ledger.
pub fn writer(
    url: String,
    user: String,
    tag: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    max_writes: usize,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let Ok(client) = BlockingClient::new(&url, Some(ADMIN_TOKEN), config) else {
        return;
    };
    let mut mine: Vec<(u32, String)> = Vec::new();
    let base = format!("/v1/mail/users/{user}/mailboxes/INBOX");
    for n in 0..max_writes {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let roll: u32 = rng.random_range(0..10);
        if roll < 2 && !mine.is_empty() {
            let i = rng.random_range(0..mine.len());
            let (uid, md5) = mine.swap_remove(i);
            let expunge = roll == 0;
            if expunge {
                ledger
                    .lock()
                    .expect("ledger")
                    .expunge_tried
                    .insert(md5.clone());
            }
            let answer = if expunge {
                client.post(
                    &format!("{base}/expunge"),
                    "application/json",
                    format!("{{\"uids\":[{uid}]}}").into_bytes(),
                )
            } else {
                client.post(
                    &format!("{base}/messages/{uid}/flags?add=%5CSeen"),
                    "application/json",
                    Vec::new(),
                )
            };
            match answer {
                Ok((status, _)) if status.is_success() => {
                    let mut l = ledger.lock().expect("ledger");
                    l.requests += 1;
                    if expunge {
                        l.expunged.insert(md5);
                    } else {
                        l.seen.insert(md5);
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
            continue;
        }
        let count = if roll == 9 { 5 } else { 1 };
        let bodies: Vec<Vec<u8>> = (0..count)
            .map(|k| body(&format!("{tag}-{n}-{k}")))
            .collect();
        let md5s: Vec<String> = bodies.iter().map(|b| super::md5_hex(b)).collect();
        ledger
            .lock()
            .expect("ledger")
            .tried
            .extend(md5s.iter().cloned());
        let (content_type, payload) = if count == 1 {
            ("message/rfc822", bodies[0].clone())
        } else {
            let mut p = Vec::new();
            for b in &bodies {
                p.extend_from_slice(&(b.len() as u32).to_be_bytes());
                p.extend_from_slice(b);
            }
            ("application/vnd.merkmail.messages", p)
        };
        match client.post(&format!("{base}/messages"), content_type, payload) {
            Ok((status, reply)) if status.is_success() => {
                let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
                let uids: Vec<u32> = v["uids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_u64())
                            .map(|u| u as u32)
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(uids.len(), count, "append answered {v}");
                let mut l = ledger.lock().expect("ledger");
                l.requests += 1;
                for (uid, md5) in uids.into_iter().zip(md5s) {
                    l.appended.insert(md5.clone(), user.clone());
                    mine.push((uid, md5));
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Starts a writer thread; returns its stop flag and handle.
pub fn spawn_writer(
    node: &Node,
    user: &str,
    tag: &str,
    seed: u64,
    ledger: &Arc<Mutex<Ledger>>,
    max_writes: usize,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (url, user, tag, stop, ledger) = (
            node.url(),
            user.to_string(),
            tag.to_string(),
            Arc::clone(&stop),
            Arc::clone(ledger),
        );
        std::thread::spawn(move || writer(url, user, tag, seed, stop, ledger, max_writes))
    };
    (stop, handle)
}

pub fn finish(writer: (Arc<AtomicBool>, std::thread::JoinHandle<()>)) {
    writer.0.store(true, Ordering::Relaxed);
    let _ = writer.1.join();
}

/// Every acknowledged write in `ledger` for `users` holds on every node: each acknowledged
/// append live exactly once, each acknowledged expunge gone, each acknowledged `\Seen` set;
/// every message `imported` (user → md5s) live; no message nobody tried to write.
#[track_caller]
pub fn check(
    ledger: &Ledger,
    nodes: &[&Node],
    users: &BTreeSet<String>,
    imported: &BTreeMap<String, BTreeSet<String>>,
    label: &str,
) {
    for node in nodes {
        assert!(node.running(), "{label}: {} is not running", node.name);
        let lists: BTreeMap<&String, _> = users.iter().map(|u| (u, node.messages(u))).collect();
        for (user, live) in &lists {
            let imported = imported.get(*user);
            for (md5, (count, flags)) in live {
                let known =
                    ledger.tried.contains(md5) || imported.is_some_and(|set| set.contains(md5));
                assert!(
                    known,
                    "{label}: {} holds a message of {user} nobody wrote (md5 {md5})",
                    node.name
                );
                assert_eq!(
                    *count, 1,
                    "{label}: {} holds message {md5} of {user} {count} times",
                    node.name
                );
                if ledger.seen.contains(md5) {
                    assert!(
                        flags.iter().any(|f| f == "\\Seen"),
                        "{label}: {}: acknowledged \\Seen missing on {md5} ({flags:?})",
                        node.name
                    );
                }
            }
            for md5 in imported.into_iter().flatten() {
                assert!(
                    live.contains_key(md5),
                    "{label}: {}: imported message {md5} of {user} missing",
                    node.name
                );
            }
        }
        for (md5, user) in ledger.appended.iter().filter(|(_, u)| users.contains(*u)) {
            let present = lists.get(user).is_some_and(|l| l.contains_key(md5));
            if ledger.expunged.contains(md5) {
                assert!(
                    !present,
                    "{label}: {}: acknowledged expunge of {md5} ({user}) undone",
                    node.name
                );
            } else if !ledger.expunge_tried.contains(md5) {
                assert!(
                    present,
                    "{label}: {}: acknowledged append {md5} ({user}) lost",
                    node.name
                );
            }
        }
    }
}
