//! Load under continuous anti-entropy: three `merkmail serve` on 127.0.0.1, each checking
//! every peer every second (Merkle sessions) and shipping its journal, while several clients
//! append (single messages and batches of five), flag and expunge concurrently for a bounded
//! time, each client on its own user and spread over the three nodes. When the clients stop,
//! the cluster must converge and every acknowledged write must hold on all three (each
//! acknowledged message exactly once, each acknowledged expunge gone, each acknowledged flag
//! set, nothing nobody wrote). The rate the cluster held is printed.
//!
//! `cargo test --test load` runs it for 3 s with 3 clients; `scripts/load --seconds N
//! --clients C` runs longer (LOAD_SECONDS, LOAD_CLIENTS, LOAD_SEED).

mod common;

use common::cluster::{self, finish, spawn_writer, Ledger};
use common::node::{self, Node};
use common::scratch_dir;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(120);
/// Writes per client at most (the time bound stops them first).
const MAX_WRITES: usize = 1_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sum of one lifetime counter over a node's peers in /status.
fn peer_total(node: &Node, field: &str) -> u64 {
    let Ok((status, body)) = node.client().get("/status") else {
        return 0;
    };
    if !status.is_success() {
        return 0;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    v["peers"]
        .as_array()
        .map(|peers| peers.iter().filter_map(|p| p[field].as_u64()).sum())
        .unwrap_or(0)
}

#[test]
fn acknowledged_writes_hold_under_continuous_anti_entropy() {
    let seconds = env_or("LOAD_SECONDS", 3);
    let clients = env_or("LOAD_CLIENTS", 3) as usize;
    let seed = env_or("LOAD_SEED", 1);
    let root = scratch_dir();
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let extra = "check_interval_s = 1\ncheck_jitter = 0.0\nbackoff_max_s = 1";
    let setup = cluster::setup();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .zip(ports)
        .map(|(name, port)| {
            let peers: Vec<u16> = ports.iter().copied().filter(|p| *p != port).collect();
            Node::new(root.path(), name, port, &peers, &setup, extra)
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let users: BTreeSet<String> = (0..clients).map(|i| format!("load{i:03}")).collect();
    let checks_before: u64 = nodes.iter().map(|n| peer_total(n, "checks_total")).sum();

    let started = Instant::now();
    let writers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let node = &nodes[i % nodes.len()];
            spawn_writer(node, user, user, seed + i as u64, &ledger, MAX_WRITES)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    for w in writers {
        finish(w);
    }
    let wrote_for = started.elapsed();
    let stopped = Instant::now();
    let all: Vec<&Node> = nodes.iter().collect();
    node::converge(&all, CONVERGE, "after the load");
    let converged_in = stopped.elapsed();
    let checks: u64 = nodes
        .iter()
        .map(|n| peer_total(n, "checks_total"))
        .sum::<u64>()
        - checks_before;

    let ledger = ledger.lock().expect("ledger");
    cluster::check(&ledger, &all, &users, &BTreeMap::new(), "after the load");
    let report = format!(
        "load: {clients} clients for {:.1} s on 3 nodes (a Merkle check every 1 s per \
         pair): {} requests acknowledged ({:.0}/s), {} messages appended ({:.0}/s), {} \
         expunges, {} flags; {checks} anti-entropy checks; converged {:.1} s after the \
         writers stopped; every acknowledged write on all 3",
        wrote_for.as_secs_f64(),
        ledger.requests,
        ledger.requests as f64 / wrote_for.as_secs_f64(),
        ledger.appended.len(),
        ledger.appended.len() as f64 / wrote_for.as_secs_f64(),
        ledger.expunged.len(),
        ledger.seen.len(),
        converged_in.as_secs_f64()
    );
    assert!(ledger.requests > 0, "no write was acknowledged: {report}");
    drop(ledger);
    for n in &mut nodes {
        n.stop();
        n.assert_verifies("after the load");
    }
    eprintln!("{report}");
}
