//! The status snapshot ([`StatusView`]) rendered three ways: Prometheus text for `GET /metrics`
//! ([`metrics`]), a self-contained HTML page for `GET /` ([`page`]) and the terminal summary of
//! `merkmail status` ([`human`]). Pure functions of the snapshot: no clock, no I/O, so every age
//! is measured against the snapshot's own `now_ms`.
//!
//! Peer URLs, node ids and error messages come from outside, so each output escapes them for
//! its own medium: label escaping for Prometheus, entity escaping for HTML, and control
//! characters made visible for the terminal (a peer must not be able to move the cursor).

use std::fmt::{Display, Write};

use super::view::{PeerView, RepairedView, RunView, StatusView};

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition format 0.0.4
// ---------------------------------------------------------------------------------------------

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
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped (quotes are literal there).
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
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
        per_peer(v, |p| p.runs.first().map(|r| flag(r.outcome == "error"))),
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
    out
}

// ---------------------------------------------------------------------------------------------
// Shared formatting: ages, durations, sizes, dates
// ---------------------------------------------------------------------------------------------

/// A span in its largest whole unit: `42s`, `5m`, `3h`, `2d`.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `at` relative to `now`: `3s ago`, `2m ago`, `in 40s`; `never` when unknown.
fn age(now_ms: u64, at_ms: Option<u64>) -> String {
    match at_ms {
        None => "never".to_string(),
        Some(at) if at <= now_ms => format!("{} ago", span(now_ms - at)),
        Some(at) => format!("in {}", span(at - now_ms)),
    }
}

/// A run's or the daemon's duration: `850ms`, `2.4s`, `42s`, `3m 12s`, `5h 3m`, `2d 4h`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..10_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        10_000..60_000 => format!("{s}s"),
        60_000..3_600_000 => pair(s / 60, "m", s % 60, "s"),
        3_600_000..86_400_000 => pair(s / 3600, "h", (s % 3600) / 60, "m"),
        _ => pair(s / 86_400, "d", (s % 86_400) / 3600, "h"),
    }
}

/// `3m 12s`, or `3m` when the smaller unit is zero.
fn pair(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `1.2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // Move up while the value would print as 1024.0 or more in this unit.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian calendar).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil, shifted so that years start on 1 March.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The non-zero kinds of difference in words: `3 copied to peer, 1 expunged`; `-` when none.
fn differences(r: &RepairedView) -> String {
    let words = [
        (r.copied_to_peer, "copied to peer"),
        (r.copied_from_peer, "copied from peer"),
        (r.expunged, "expunged"),
        (r.flag_updates, "flag updates"),
        (r.uid_clashes_renumbered, "UID clashes renumbered"),
        (r.mailboxes_changed, "mailboxes changed"),
        (r.bodies_repaired, "damaged bodies repaired"),
    ];
    let parts: Vec<String> = words
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// The journal toward a peer in a few words: `empty`, `7 (oldest 2m)`, plus `OVERFLOWED`.
fn journal(p: &PeerView) -> String {
    let j = &p.journal;
    let mut s = if j.depth == 0 {
        "empty".to_string()
    } else {
        match j.oldest_unshipped_age_ms {
            Some(ms) => format!("{} (oldest {})", j.depth, span(ms)),
            None => j.depth.to_string(),
        }
    };
    if j.overflowed {
        s.push_str(" OVERFLOWED");
    }
    s
}

fn session(now_ms: u64, p: &PeerView) -> String {
    match &p.session {
        None => "-".to_string(),
        Some(s) => format!(
            "{} {}, {} rounds, {}, for {}",
            s.direction,
            s.trigger,
            s.rounds,
            bytes(s.bytes),
            span(now_ms.saturating_sub(s.started_ms))
        ),
    }
}

fn fallbacks(now_ms: u64, p: &PeerView) -> String {
    let j = &p.journal;
    match j.last_sync_fallback_ms {
        Some(at) if j.sync_fallbacks_total > 0 => {
            format!(
                "{} (last {})",
                j.sync_fallbacks_total,
                age(now_ms, Some(at))
            )
        }
        _ => j.sync_fallbacks_total.to_string(),
    }
}

/// The replication mode and, in `sync` mode, its timeout and how often writes fell back.
fn mode(v: &StatusView) -> String {
    let mut s = v.mode.clone();
    if v.mode == "sync" {
        let _ = write!(s, " (timeout {})", duration(v.sync_timeout_ms));
    }
    if v.sync_fallbacks_total > 0 {
        let _ = write!(s, ", {} writes fell back to async", v.sync_fallbacks_total);
    }
    s
}

fn store_counts(v: &StatusView) -> String {
    let c = &v.counts;
    format!(
        "{} users, {} mailboxes, {} messages ({}), {} bodies ({}), {} tombstones",
        c.users,
        c.mailboxes,
        c.messages,
        bytes(c.message_bytes),
        c.bodies,
        bytes(c.body_bytes),
        c.tombstones
    )
}

fn run_bytes(r: &RunView) -> String {
    let mut s = format!(
        "{} out / {} in",
        bytes(r.bytes_sent),
        bytes(r.bytes_received)
    );
    if r.body_bytes_sent + r.body_bytes_received > 0 {
        let _ = write!(
            s,
            "; bodies {} out / {} in",
            bytes(r.body_bytes_sent),
            bytes(r.body_bytes_received)
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

/// Text for HTML element content and quoted attribute values.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CSS class an outcome gets: green for equal, red for error, amber for the in-between.
fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "equal" => "ok",
        "repaired" => "fixed",
        "error" => "bad",
        _ => "warn",
    }
}

const CSS: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;background:#fff;color:#111}\
h1{font-size:1.4em;margin:0 0 .5em}h2{font-size:1.15em;margin:1.5em 0 .4em}\
h3{font-size:1em;margin:1.2em 0 .3em}\
table{border-collapse:collapse;margin:.3em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:0}\
dt{font-weight:600}dd{margin:0}code{font-size:.9em;word-break:break-all}\
.ok{background:#d4f7d4;color:#064006}.bad{background:#ffd2d2;color:#7a0000;font-weight:600}\
.warn{background:#fff0c2;color:#5c4300}.fixed{background:#dbe9ff;color:#0b2f6b}\
.muted{color:#666}";

/// `GET /`: one self-contained page (inline CSS, no scripts, no external assets) that refreshes
/// itself every 10 seconds. Every string from the snapshot is HTML-escaped; peer URLs appear as
/// text, never as links.
pub fn page(v: &StatusView) -> String {
    let now = v.now_ms;
    let mut o = String::new();
    let node = html(&v.node);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>merkmail {node}</title><style>{CSS}</style></head><body>\n\
         <h1>merkmail node {node}</h1>\n<dl>\n"
    );
    let down = v.peers.iter().filter(|p| !p.reachable).count();
    let mut facts: Vec<(&str, String)> = vec![
        ("version", html(&v.version)),
        ("uptime", duration(v.uptime_s.saturating_mul(1000))),
        ("snapshot", utc(now)),
        ("root", format!("<code>{}</code>", html(&v.root))),
        ("store", store_counts(v)),
        (
            "mode",
            if v.sync_fallbacks_total > 0 {
                format!("<span class=\"warn\">{}</span>", html(&mode(v)))
            } else {
                html(&mode(v))
            },
        ),
        (
            "checks",
            format!(
                "every {}",
                duration(v.check_interval_s.saturating_mul(1000))
            ),
        ),
        (
            "journal",
            format!(
                "head {}, {} inbound entries pending",
                v.journal_head, v.inbound_pending
            ),
        ),
    ];
    facts.push((
        "peers",
        if v.peers.is_empty() {
            "none configured".to_string()
        } else if down == 0 {
            format!("<span class=\"ok\">all {} reachable</span>", v.peers.len())
        } else {
            format!(
                "<span class=\"bad\">{down} of {} unreachable</span>",
                v.peers.len()
            )
        },
    ));
    for (k, val) in facts {
        let _ = writeln!(o, "<dt>{k}</dt><dd>{val}</dd>");
    }
    o.push_str("</dl>\n<h2>Peers</h2>\n");

    if v.peers.is_empty() {
        o.push_str("<p class=\"muted\">No peers configured.</p>\n");
    } else {
        o.push_str(
            "<table><tr><th>peer</th><th>node</th><th>reachable</th><th>last contact</th>\
             <th>next check</th><th>last run</th><th>journal depth</th><th>oldest unshipped</th>\
             <th>overflow</th><th>sync fallbacks</th><th>session in progress</th>\
             <th>checks</th><th>sessions (failed)</th><th>repaired</th></tr>\n",
        );
        for p in &v.peers {
            page_peer_row(&mut o, now, p);
        }
        o.push_str("</table>\n");
        for p in &v.peers {
            page_peer_runs(&mut o, now, p);
        }
    }
    o.push_str("</body></html>\n");
    o
}

fn page_peer_row(o: &mut String, now: u64, p: &PeerView) {
    let j = &p.journal;
    let reachable = if p.reachable {
        "<td class=\"ok\">yes</td>".to_string()
    } else {
        format!(
            "<td class=\"bad\">no ({} failures in a row)</td>",
            p.failures_in_a_row
        )
    };
    let last_run = match p.runs.first() {
        None => "<td class=\"muted\">none yet</td>".to_string(),
        Some(r) => format!(
            "<td class=\"{}\">{} ({})</td>",
            outcome_class(&r.outcome),
            html(&r.outcome),
            age(now, Some(r.at_ms))
        ),
    };
    let overflow = if j.overflowed {
        "<td class=\"bad\">OVERFLOWED</td>"
    } else {
        "<td>no</td>"
    };
    let fallback_class = if j.sync_fallbacks_total > 0 {
        " warn"
    } else {
        ""
    };
    let session_cell = match &p.session {
        None => "<td>-</td>".to_string(),
        Some(_) => format!("<td class=\"warn\">{}</td>", html(&session(now, p))),
    };
    // Failed sessions are history (a lifetime counter): worth a look, not an alarm.
    let failed_class = if p.sessions_failed_total > 0 {
        " warn"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "<tr><td><code>{url}</code></td><td>{node}</td>{reachable}\
         <td{contact_abs}>{contact}</td><td>{next}</td>{last_run}\
         <td class=\"n\">{depth}</td><td>{oldest}</td>{overflow}\
         <td class=\"n{fallback_class}\">{fallbacks}</td>{session_cell}\
         <td class=\"n\">{checks}</td><td class=\"n{failed_class}\">{sessions} ({failed})</td>\
         <td>{repaired}</td></tr>",
        url = html(&p.url),
        node = p
            .node
            .as_deref()
            .map(html)
            .unwrap_or_else(|| "-".to_string()),
        contact_abs = p
            .last_contact_ms
            .map(|ms| format!(" title=\"{}\"", utc(ms)))
            .unwrap_or_default(),
        contact = age(now, p.last_contact_ms),
        next = age(now, p.next_check_ms),
        depth = j.depth,
        oldest = j
            .oldest_unshipped_age_ms
            .map(span)
            .unwrap_or_else(|| "-".into()),
        fallbacks = fallbacks(now, p),
        checks = p.checks_total,
        sessions = p.sessions_total,
        failed = p.sessions_failed_total,
        repaired = html(&differences(&p.repaired)),
    );
}

fn page_peer_runs(o: &mut String, now: u64, p: &PeerView) {
    let _ = writeln!(o, "<h3>Last runs with <code>{}</code></h3>", html(&p.url));
    if p.runs.is_empty() {
        o.push_str("<p class=\"muted\">No runs yet.</p>\n");
        return;
    }
    o.push_str(
        "<table><tr><th>when</th><th>trigger</th><th>outcome</th><th>duration</th>\
         <th>rounds</th><th>bytes</th><th>differences repaired</th><th>error</th></tr>\n",
    );
    for r in &p.runs {
        let error = match &r.error {
            None => "<td>-</td>".to_string(),
            Some(e) => format!("<td class=\"bad\">{}</td>", html(e)),
        };
        let _ = writeln!(
            o,
            "<tr><td title=\"{abs}\">{when}</td><td>{trigger}</td>\
             <td class=\"{class}\">{outcome}</td><td class=\"n\">{duration}</td>\
             <td class=\"n\">{rounds}</td><td>{bytes}</td><td>{diff}</td>{error}</tr>",
            abs = utc(r.at_ms),
            when = age(now, Some(r.at_ms)),
            trigger = html(&r.trigger),
            class = outcome_class(&r.outcome),
            outcome = html(&r.outcome),
            duration = duration(r.duration_ms),
            rounds = r.rounds,
            bytes = run_bytes(r),
            diff = html(&differences(&r.differences)),
        );
    }
    o.push_str("</table>\n");
}

// ---------------------------------------------------------------------------------------------
// Terminal
// ---------------------------------------------------------------------------------------------

/// Text safe to print on a terminal: control characters (line breaks, escape sequences) from a
/// peer URL or an error message are shown escaped instead of acting on the terminal.
fn term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rows of cells as left-aligned columns two spaces apart, each line prefixed by `indent`; the
/// last column is not padded (errors can be long).
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from(indent);
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `merkmail status`: the same facts as [`page`] as aligned plain text for a terminal.
pub fn human(v: &StatusView) -> String {
    let now = v.now_ms;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "merkmail node {} (version {}), up {}, as of {}",
        term(&v.node),
        term(&v.version),
        duration(v.uptime_s.saturating_mul(1000)),
        utc(now)
    );
    let facts = [
        vec!["root".to_string(), term(&v.root)],
        vec!["store".to_string(), store_counts(v)],
        vec![
            "mode".to_string(),
            format!(
                "{}, checks every {}",
                term(&mode(v)),
                duration(v.check_interval_s.saturating_mul(1000))
            ),
        ],
        vec![
            "journal".to_string(),
            format!(
                "head {}, {} inbound pending",
                v.journal_head, v.inbound_pending
            ),
        ],
    ];
    columns(&mut o, "", &facts);

    if v.peers.is_empty() {
        o.push_str("\nno peers configured\n");
        return o;
    }
    o.push('\n');
    let mut rows = vec![[
        "PEER",
        "NODE",
        "STATE",
        "CONTACT",
        "NEXT CHECK",
        "LAST RUN",
        "JOURNAL",
        "FALLBACKS",
        "SESSION",
    ]
    .map(String::from)
    .to_vec()];
    for p in &v.peers {
        let state = if p.reachable {
            "up".to_string()
        } else {
            format!("DOWN ({} failures)", p.failures_in_a_row)
        };
        let last_run = match p.runs.first() {
            None => "-".to_string(),
            Some(r) => format!("{} {}", term(&r.outcome), age(now, Some(r.at_ms))),
        };
        rows.push(vec![
            term(&p.url),
            p.node.as_deref().map(term).unwrap_or_else(|| "-".into()),
            state,
            age(now, p.last_contact_ms),
            age(now, p.next_check_ms),
            last_run,
            journal(p),
            fallbacks(now, p),
            term(&session(now, p)),
        ]);
    }
    columns(&mut o, "", &rows);

    for p in &v.peers {
        let _ = writeln!(
            o,
            "\n{}: {} checks, {} sessions ({} failed), {} out / {} in; repaired: {}",
            term(&p.url),
            p.checks_total,
            p.sessions_total,
            p.sessions_failed_total,
            bytes(p.bytes_sent_total),
            bytes(p.bytes_received_total),
            differences(&p.repaired)
        );
        if p.runs.is_empty() {
            o.push_str("  no runs yet\n");
            continue;
        }
        let mut rows = vec![[
            "WHEN", "TRIGGER", "OUTCOME", "TOOK", "ROUNDS", "BYTES", "REPAIRED", "ERROR",
        ]
        .map(String::from)
        .to_vec()];
        for r in &p.runs {
            rows.push(vec![
                age(now, Some(r.at_ms)),
                term(&r.trigger),
                term(&r.outcome),
                duration(r.duration_ms),
                r.rounds.to_string(),
                run_bytes(r),
                differences(&r.differences),
                r.error.as_deref().map(term).unwrap_or_else(|| "-".into()),
            ]);
        }
        columns(&mut o, "  ", &rows);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Copy + std::fmt::Debug>(f: impl Fn(T) -> String, cases: &[(T, &str)]) {
        for (input, expected) in cases {
            assert_eq!(f(*input), *expected, "input {input:?}");
        }
    }

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
    fn ages_use_the_largest_whole_unit() {
        let now = 1_000_000_000;
        check(
            |at: Option<u64>| age(now, at),
            &[
                (None, "never"),
                (Some(now), "0s ago"),
                (Some(now - 3_400), "3s ago"),
                (Some(now - 125_000), "2m ago"),
                (Some(now - 5 * 3_600_000), "5h ago"),
                (Some(now - 3 * 86_400_000), "3d ago"),
                (Some(now + 40_000), "in 40s"),
            ],
        );
    }

    #[test]
    fn durations_keep_two_units() {
        check(
            duration,
            &[
                (0, "0ms"),
                (850, "850ms"),
                (2_450, "2.4s"),
                (42_999, "42s"),
                (192_000, "3m 12s"),
                (18_180_000, "5h 3m"),
                (187_200_000, "2d 4h"),
                (60_000, "1m"),
                (7_200_000, "2h"),
            ],
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        check(
            bytes,
            &[
                (0, "0 B"),
                (1023, "1023 B"),
                (1024, "1.0 KiB"),
                (1536, "1.5 KiB"),
                (1_258_291, "1.2 MiB"),
                (1024 * 1024 - 1, "1.0 MiB"),
                (5 * 1024 * 1024 * 1024, "5.0 GiB"),
                (u64::MAX, "16.0 EiB"),
            ],
        );
    }

    #[test]
    fn utc_dates() {
        check(
            utc,
            &[
                (0, "1970-01-01 00:00:00 UTC"),
                (951_782_400_000, "2000-02-29 00:00:00 UTC"),
                (1_700_000_000_123, "2023-11-14 22:13:20 UTC"),
                (4_102_444_799_000, "2099-12-31 23:59:59 UTC"),
            ],
        );
    }

    #[test]
    fn escapes() {
        check(
            escape_label,
            &[("http://x", "http://x"), ("a\"b\\c\nd", "a\\\"b\\\\c\\nd")],
        );
        check(escape_help, &[("a\\b\nc \"q\"", "a\\\\b\\nc \"q\"")]);
        check(html, &[("<script>&'\"", "&lt;script&gt;&amp;&#39;&quot;")]);
        check(term, &[("a\nb\u{1b}[2J", "a\\nb\\u{1b}[2J")]);
    }

    #[test]
    fn differences_list_only_what_happened() {
        check(
            |r: RepairedView| differences(&r),
            &[
                (RepairedView::default(), "-"),
                (
                    RepairedView {
                        copied_to_peer: 3,
                        expunged: 1,
                        ..Default::default()
                    },
                    "3 copied to peer, 1 expunged",
                ),
            ],
        );
    }

    #[test]
    fn columns_align_and_leave_the_last_unpadded() {
        let mut out = String::new();
        let rows = vec![
            vec!["A".to_string(), "bb".to_string(), "c".to_string()],
            vec!["aaa".to_string(), "b".to_string(), "long tail".to_string()],
        ];
        columns(&mut out, "  ", &rows);
        assert_eq!(out, "  A    bb  c\n  aaa  b   long tail\n");
    }
}
