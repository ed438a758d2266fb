//! `GET /metrics`: the status snapshot in the Prometheus text exposition format 0.0.4. Peer
//! URLs and node ids come from outside, so label values are escaped as the format requires.

use std::fmt::{Display, Write};

use super::format::escape;
use super::{Outcome, PeerView, RepairedView, StatusView};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One sample of a family: its labels and its value, already formatted.
struct Sample<'a> {
    labels: Vec<(&'static str, &'a str)>,
    value: String,
}

fn sample<'a>(labels: Vec<(&'static str, &'a str)>, value: impl Display) -> Sample<'a> {
    Sample {
        labels,
        value: value.to_string(),
    }
}

/// One sample per peer, labelled `peer="<url>"`; `None` values are left out (an unknown value is
/// an absent series, not a zero).
fn per_peer<'a, T: Display>(
    v: &'a StatusView,
    value: impl Fn(&'a PeerView) -> Option<T>,
) -> Vec<Sample<'a>> {
    v.peers
        .iter()
        .filter_map(|p| value(p).map(|x| sample(vec![("peer", p.url.as_str())], x)))
        .collect()
}

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples, all together as the format
/// requires. A family with no samples (no peers) still gets its HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: Kind, help: &str, samples: Vec<Sample<'_>>) {
    debug_assert_eq!(
        kind == Kind::Counter,
        name.ends_with("_total"),
        "counters and only counters end in _total: {name}"
    );
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for s in samples {
        out.push_str(name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (label, value)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{label}=\"{}\"", escape_label(value));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", s.value);
    }
}

/// A label value: backslash, double quote and line feed escaped, as the format requires.
fn escape_label(s: &str) -> String {
    escape(s, &[('\\', "\\\\"), ('"', "\\\""), ('\n', "\\n")])
}

/// HELP text: backslash and line feed escaped (quotes are literal there).
fn escape_help(s: &str) -> String {
    escape(s, &[('\\', "\\\\"), ('\n', "\\n")])
}

/// Milliseconds as decimal seconds, exactly (no float rounding): 1500 → `1.5`, 2000 → `2`.
fn seconds(ms: u64) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// The seven kinds of difference a run repairs, as `(label, count)`: one `kind` label value per
/// [`RepairedView`] field.
fn repaired_kinds(r: &RepairedView) -> [(&'static str, u64); 7] {
    [
        ("copied_to_peer", r.copied_to_peer),
        ("copied_from_peer", r.copied_from_peer),
        ("expunged", r.expunged),
        ("flag_updates", r.flag_updates),
        ("uid_clashes_renumbered", r.uid_clashes_renumbered),
        ("mailboxes_changed", r.mailboxes_changed),
        ("bodies_repaired", r.bodies_repaired),
    ]
}

/// `GET /metrics`: the snapshot in Prometheus text exposition format 0.0.4.
///
/// Node-wide gauges (`merkmail_up`, `merkmail_uptime_seconds`, `merkmail_info`, the store's
/// counts, `merkmail_journal_head`, `merkmail_inbound_journal_pending`), then per-peer families
/// labelled `peer="<url>"`. The `_total` counters are the daemon's lifetime counters, never sums
/// over the few runs the snapshot keeps (those would go down as old runs drop off). Timestamps
/// and ages that are unknown (`None`) are absent series; a journal with nothing unshipped has an
/// oldest age of 0.
pub fn metrics(v: &StatusView) -> String {
    let mut out = String::new();
    let o = &mut out;
    let c = &v.counts;
    use Kind::{Counter, Gauge};

    family(
        o,
        "merkmail_up",
        Gauge,
        "1 while the daemon answers.",
        vec![sample(vec![], 1)],
    );
    family(
        o,
        "merkmail_info",
        Gauge,
        "Always 1; the node id, version and replication mode as labels.",
        vec![sample(
            vec![
                ("node", v.node.as_str()),
                ("version", v.version.as_str()),
                ("mode", v.mode.as_str()),
            ],
            1,
        )],
    );
    family(
        o,
        "merkmail_uptime_seconds",
        Gauge,
        "Seconds since the daemon started.",
        vec![sample(vec![], v.uptime_s)],
    );
    family(
        o,
        "merkmail_check_interval_seconds",
        Gauge,
        "Configured seconds between background checks of one peer, before jitter.",
        vec![sample(vec![], v.check_interval_s)],
    );
    family(
        o,
        "merkmail_sync_timeout_seconds",
        Gauge,
        "Configured time a sync-mode write waits for a peer before falling back to async.",
        vec![sample(vec![], seconds(v.sync_timeout_ms))],
    );
    let store: [(&str, &str, u64); 7] = [
        ("merkmail_users", "Users in the store.", c.users),
        ("merkmail_mailboxes", "Mailboxes in the store.", c.mailboxes),
        ("merkmail_messages", "Messages in the store.", c.messages),
        (
            "merkmail_message_bytes",
            "Total size of the messages in the store, in bytes.",
            c.message_bytes,
        ),
        (
            "merkmail_bodies",
            "Distinct message bodies stored.",
            c.bodies,
        ),
        (
            "merkmail_body_bytes",
            "Total size of the distinct bodies stored, in bytes.",
            c.body_bytes,
        ),
        (
            "merkmail_tombstones",
            "Expunge tombstones kept for reconciliation.",
            c.tombstones,
        ),
    ];
    for (name, help, value) in store {
        family(o, name, Gauge, help, vec![sample(vec![], value)]);
    }
    family(
        o,
        "merkmail_write_sync_fallbacks_total",
        Counter,
        "Sync-mode writes that waited for every peer in vain and fell back to async, since start.",
        vec![sample(vec![], v.sync_fallbacks_total)],
    );
    family(
        o,
        "merkmail_journal_head",
        Gauge,
        "Sequence number of the last entry written to this node's replication journal.",
        vec![sample(vec![], v.journal_head)],
    );
    family(
        o,
        "merkmail_inbound_journal_pending",
        Gauge,
        "Journal entries received from peers, stored and not yet applied.",
        vec![sample(vec![], v.inbound_pending)],
    );

    // Per peer.
    family(
        o,
        "merkmail_peer_up",
        Gauge,
        "1 if the last attempt to reach the peer succeeded.",
        per_peer(v, |p| Some(flag(p.reachable))),
    );
    family(
        o,
        "merkmail_peer_consecutive_failures",
        Gauge,
        "Failed attempts to reach the peer in a row (drives the backoff).",
        per_peer(v, |p| Some(p.failures_in_a_row)),
    );
    family(
        o,
        "merkmail_peer_last_contact_timestamp_seconds",
        Gauge,
        "Unix time of the last successful request to the peer.",
        per_peer(v, |p| p.last_contact_ms.map(seconds)),
    );
    family(
        o,
        "merkmail_peer_next_check_timestamp_seconds",
        Gauge,
        "Unix time the next background check of the peer is due.",
        per_peer(v, |p| p.next_check_ms.map(seconds)),
    );
    family(
        o,
        "merkmail_checks_total",
        Counter,
        "Background and triggered checks of the peer since start.",
        per_peer(v, |p| Some(p.checks_total)),
    );
    family(
        o,
        "merkmail_sync_sessions_total",
        Counter,
        "Reconciliation sessions with the peer since start.",
        per_peer(v, |p| Some(p.sessions_total)),
    );
    family(
        o,
        "merkmail_sync_sessions_failed_total",
        Counter,
        "Reconciliation sessions with the peer that ended in an error since start.",
        per_peer(v, |p| Some(p.sessions_failed_total)),
    );
    family(
        o,
        "merkmail_reconcile_bytes_total",
        Counter,
        "Reconciliation metadata bytes exchanged with the peer since start (bodies excluded).",
        v.peers
            .iter()
            .flat_map(|p| {
                [
                    ("sent", p.bytes_sent_total),
                    ("received", p.bytes_received_total),
                ]
                .map(|(dir, n)| sample(vec![("peer", p.url.as_str()), ("direction", dir)], n))
            })
            .collect(),
    );
    family(
        o,
        "merkmail_repaired_total",
        Counter,
        "Differences with the peer repaired since start, by kind.",
        v.peers
            .iter()
            .flat_map(|p| {
                repaired_kinds(&p.repaired)
                    .map(|(kind, n)| sample(vec![("peer", p.url.as_str()), ("kind", kind)], n))
            })
            .collect(),
    );
    family(
        o,
        "merkmail_last_check_timestamp_seconds",
        Gauge,
        "Unix time the most recent run with the peer started.",
        per_peer(v, |p| p.runs.first().map(|r| seconds(r.at_ms))),
    );
    family(
        o,
        "merkmail_last_check_duration_seconds",
        Gauge,
        "How long the most recent run with the peer took.",
        per_peer(v, |p| p.runs.first().map(|r| seconds(r.duration_ms))),
    );
    family(
        o,
        "merkmail_last_check_failed",
        Gauge,
        "1 if the most recent run with the peer ended in an error.",
        per_peer(v, |p| {
            p.runs.first().map(|r| flag(r.outcome == Outcome::Error))
        }),
    );
    family(
        o,
        "merkmail_peer_journal_depth",
        Gauge,
        "Journal entries written here and not yet acknowledged by the peer.",
        per_peer(v, |p| Some(p.journal.depth)),
    );
    family(
        o,
        "merkmail_peer_journal_oldest_age_seconds",
        Gauge,
        "Age of the oldest journal entry not yet acknowledged by the peer (0 if none).",
        per_peer(v, |p| {
            Some(seconds(p.journal.oldest_unshipped_age_ms.unwrap_or(0)))
        }),
    );
    family(
        o,
        "merkmail_peer_journal_overflowed",
        Gauge,
        "1 if the peer fell past the journal bound and a Merkle reconciliation replaces it.",
        per_peer(v, |p| Some(flag(p.journal.overflowed))),
    );
    family(
        o,
        "merkmail_journal_shipped_total",
        Counter,
        "Journal entries the peer acknowledged since start.",
        per_peer(v, |p| Some(p.journal.shipped_total)),
    );
    family(
        o,
        "merkmail_journal_ship_failures_total",
        Counter,
        "Journal batches that failed to ship to the peer since start.",
        per_peer(v, |p| Some(p.journal.ship_failures_total)),
    );
    family(
        o,
        "merkmail_sync_fallbacks_total",
        Counter,
        "Sync-mode writes that waited for the peer in vain and fell back to async, since start.",
        per_peer(v, |p| Some(p.journal.sync_fallbacks_total)),
    );
    family(
        o,
        "merkmail_last_sync_fallback_timestamp_seconds",
        Gauge,
        "Unix time of the last sync-mode fall-back for the peer.",
        per_peer(v, |p| p.journal.last_sync_fallback_ms.map(seconds)),
    );
    family(
        o,
        "merkmail_session_in_progress",
        Gauge,
        "1 while a reconciliation session with the peer is running.",
        per_peer(v, |p| Some(flag(p.session.is_some()))),
    );
    family(
        o,
        "merkmail_session_rounds",
        Gauge,
        "Round trips so far of the session in progress with the peer.",
        per_peer(v, |p| p.session.as_ref().map(|s| s.rounds)),
    );
    family(
        o,
        "merkmail_session_bytes",
        Gauge,
        "Metadata bytes so far, both ways, of the session in progress with the peer.",
        per_peer(v, |p| p.session.as_ref().map(|s| s.bytes)),
    );
    // Written only while some peer holds tombstones back, so that a cluster where every peer
    // keeps up exposes the same families as before the rule existed.
    if v.peers.iter().any(|p| p.tombstones_held_back > 0) {
        family(
            o,
            "merkmail_tombstones_held_back",
            Gauge,
            "Tombstones past their retention kept because the peer is not known to have them.",
            per_peer(v, |p| Some(p.tombstones_held_back)),
        );
        family(
            o,
            "merkmail_tombstones_holding_since_timestamp_seconds",
            Gauge,
            "Unix time since which the peer holds back the oldest of those tombstones.",
            per_peer(v, |p| p.holding_since_ms.map(seconds)),
        );
    }
    if let Some(m) = &v.maildir {
        maildir_families(o, m);
    }
    out
}

/// A live-Maildir store's families (absent for a store that holds its own mail).
fn maildir_families(o: &mut String, m: &super::MaildirView) {
    use Kind::{Counter, Gauge};
    let one = |x: u64| vec![sample(vec![], x)];
    family(
        o,
        "merkmail_maildir_passes_total",
        Counter,
        "Passes over the Maildirs since the start.",
        one(m.passes_total),
    );
    family(
        o,
        "merkmail_maildir_failed_passes_total",
        Counter,
        "Passes over the Maildirs that failed (what they owed is retried).",
        one(m.failed_passes_total),
    );
    family(
        o,
        "merkmail_maildir_imported_total",
        Counter,
        "Messages the passes took in from the Maildirs since the start.",
        one(m.imported_total),
    );
    family(
        o,
        "merkmail_maildir_delivered_total",
        Counter,
        "Messages the passes delivered into the Maildirs since the start.",
        one(m.delivered_total),
    );
    family(
        o,
        "merkmail_maildir_owed_mailboxes",
        Gauge,
        "Mailboxes whose folders still owe changes to the disk.",
        one(m.owed_mailboxes),
    );
    family(
        o,
        "merkmail_maildir_problems",
        Gauge,
        "Problems the last passes reported (shown in /status).",
        one(m.problems.len() as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::super::format::check;
    use super::*;

    #[test]
    fn seconds_are_exact_decimals() {
        check(
            seconds,
            &[
                (0, "0"),
                (1, "0.001"),
                (1500, "1.5"),
                (2000, "2"),
                (1_700_000_000_123, "1700000000.123"),
                (10_010, "10.01"),
            ],
        );
    }

    #[test]
    fn labels_and_help_text_are_escaped() {
        check(
            escape_label,
            &[("http://x", "http://x"), ("a\"b\\c\nd", "a\\\"b\\\\c\\nd")],
        );
        check(escape_help, &[("a\\b\nc \"q\"", "a\\\\b\\nc \"q\"")]);
    }
}
