//! The status renderers against constructed snapshots: `/metrics` read back by a strict parser
//! of the Prometheus text format 0.0.4, the HTML page's escaping and self-containment, and the
//! terminal view's facts.

use std::collections::{BTreeMap, BTreeSet};

use merkmail::status::{human, metrics, page};
use merkmail::status::{JournalView, Mode, Outcome, PeerView, RunView, StatusView, Trigger};

#[path = "common/status.rs"]
mod status_common;

use status_common::{counts, healthy_peer, repaired_after_peer_back, run, unreachable_peer, NOW};

/// A peer URL with everything a label value must escape, and an HTML tag.
const NASTY: &str = "http://evil\"quote\\back\nline<b>/";

fn view() -> StatusView {
    StatusView {
        node: "alpha".into(),
        version: "0.1.0".into(),
        now_ms: NOW,
        uptime_s: 3 * 3600 + 120,
        root: "ab12cd34".into(),
        counts: counts(),
        mode: Mode::Sync,
        sync_timeout_ms: 500,
        check_interval_s: 60,
        journal_head: 9876,
        inbound_pending: 2,
        sync_fallbacks_total: 6,
        peers: vec![
            healthy_peer(
                "http://x",
                vec![
                    run(3_000, 1_500, Trigger::Interval, Outcome::Equal),
                    repaired_after_peer_back(),
                ],
                Trigger::Manual,
            ),
            PeerView {
                runs: vec![RunView {
                    at_ms: NOW - 30_000,
                    duration_ms: 10_000,
                    trigger: Trigger::Interval,
                    outcome: Outcome::Error,
                    error: Some("connect: <script>alert(1)</script> & \"refused\"".into()),
                    ..Default::default()
                }],
                journal: JournalView {
                    depth: 100_000,
                    oldest_unshipped_age_ms: Some(7_200_000),
                    overflowed: true,
                    ..Default::default()
                },
                ..unreachable_peer(NASTY)
            },
        ],
        maildir: None,
    }
}

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text format 0.0.4 (the subset merkmail must produce).
// ---------------------------------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

#[derive(Debug)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<(Labels, f64)>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    matches!(chars.next(), Some(c) if ok_first(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses `name="value",...` up to the closing `}`; returns the labels and the rest of the line.
fn parse_labels(mut s: &str, line: &str) -> (Labels, String) {
    let mut labels = Labels::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return (labels, rest.to_string());
        }
        let eq = s
            .find('=')
            .unwrap_or_else(|| panic!("no = in labels: {line:?}"));
        let name = &s[..eq];
        assert!(is_name(name, false), "bad label name {name:?} in {line:?}");
        s = s[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("label value not quoted: {line:?}"));
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => panic!("unterminated label value: {line:?}"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((_, '\n')) => panic!("raw newline in label value: {line:?}"),
                Some((_, c)) => value.push(c),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        s = &s[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else {
            assert!(s.starts_with('}'), "expected , or }} in {line:?}");
        }
    }
}

/// Reads the exposition strictly: every family has HELP then TYPE before its samples, its
/// samples are contiguous, every sample is `name{labels} value`, no series repeats, counters
/// (and only counters) end in `_total`, and the text ends with a line feed.
fn parse(text: &str) -> BTreeMap<String, Family> {
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a line feed"
    );
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series: BTreeSet<(String, Labels)> = BTreeSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in the exposition");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP without text");
            assert!(is_name(name, true), "bad metric name {name:?}");
            assert!(!families.contains_key(name), "second HELP for {name}");
            if let Some(prev) = current.replace(name.to_string()) {
                closed.insert(prev);
            }
            // HELP text may escape only backslash and line feed.
            let mut unescaped = String::new();
            let mut chars = help.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('\\') => unescaped.push('\\'),
                        Some('n') => unescaped.push('\n'),
                        other => panic!("bad escape {other:?} in HELP of {name}"),
                    },
                    c => unescaped.push(c),
                }
            }
            assert!(!unescaped.trim().is_empty(), "empty HELP for {name}");
            families.insert(
                name.to_string(),
                Family {
                    kind: String::new(),
                    help: unescaped,
                    samples: vec![],
                },
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE without a type");
            assert_eq!(
                current.as_deref(),
                Some(name),
                "TYPE {name} not right after its HELP"
            );
            let family = families.get_mut(name).unwrap();
            assert!(family.kind.is_empty(), "second TYPE for {name}");
            assert!(
                family.samples.is_empty(),
                "TYPE for {name} after its samples"
            );
            assert!(
                ["counter", "gauge"].contains(&kind),
                "unexpected type {kind} for {name}"
            );
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}: counters and only counters end in _total"
            );
            family.kind = kind.to_string();
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let name_end = line.find(['{', ' ']).expect("sample without a value");
            let name = &line[..name_end];
            assert!(is_name(name, true), "bad metric name {name:?}");
            assert!(
                !closed.contains(name),
                "samples of {name} are not contiguous"
            );
            assert_eq!(
                current.as_deref(),
                Some(name),
                "sample of {name} before its HELP"
            );
            let (labels, rest) = match line[name_end..].strip_prefix('{') {
                Some(after) => parse_labels(after, line),
                None => (Labels::new(), line[name_end..].to_string()),
            };
            let value = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no space before the value: {line:?}"));
            assert!(
                !value.contains(' '),
                "timestamps are not expected: {line:?}"
            );
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value does not parse as f64: {line:?}"));
            let family = families.get_mut(name).unwrap();
            assert!(!family.kind.is_empty(), "sample of {name} before its TYPE");
            if family.kind == "counter" {
                assert!(value >= 0.0, "negative counter: {line:?}");
            }
            assert!(
                series.insert((name.to_string(), labels.clone())),
                "series repeated: {line:?}"
            );
            family.samples.push((labels, value));
        }
    }
    for (name, family) in &families {
        assert!(!family.kind.is_empty(), "{name} has HELP but no TYPE");
    }
    families
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The value of one series, if present.
fn value(families: &BTreeMap<String, Family>, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
    let family = families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}"));
    let want = labels(pairs);
    family
        .samples
        .iter()
        .find(|(l, _)| *l == want)
        .map(|(_, v)| *v)
}

fn peer_value(families: &BTreeMap<String, Family>, name: &str, peer: &str) -> Option<f64> {
    value(families, name, &[("peer", peer)])
}

// ---------------------------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_parse_strictly_and_carry_the_required_families() {
    let families = parse(&metrics(&view()));
    let required = [
        ("merkmail_up", "gauge"),
        ("merkmail_uptime_seconds", "gauge"),
        ("merkmail_messages", "gauge"),
        ("merkmail_mailboxes", "gauge"),
        ("merkmail_users", "gauge"),
        ("merkmail_message_bytes", "gauge"),
        ("merkmail_body_bytes", "gauge"),
        ("merkmail_journal_head", "gauge"),
        ("merkmail_inbound_journal_pending", "gauge"),
        ("merkmail_peer_up", "gauge"),
        ("merkmail_peer_last_contact_timestamp_seconds", "gauge"),
        ("merkmail_sync_sessions_total", "counter"),
        ("merkmail_sync_sessions_failed_total", "counter"),
        ("merkmail_checks_total", "counter"),
        ("merkmail_reconcile_bytes_total", "counter"),
        ("merkmail_repaired_total", "counter"),
        ("merkmail_peer_journal_depth", "gauge"),
        ("merkmail_peer_journal_oldest_age_seconds", "gauge"),
        ("merkmail_peer_journal_overflowed", "gauge"),
        ("merkmail_journal_shipped_total", "counter"),
        ("merkmail_journal_ship_failures_total", "counter"),
        ("merkmail_sync_fallbacks_total", "counter"),
        ("merkmail_last_check_duration_seconds", "gauge"),
        ("merkmail_session_in_progress", "gauge"),
    ];
    for (name, kind) in required {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("missing family {name}"));
        assert_eq!(family.kind, kind, "{name}");
        assert!(!family.help.is_empty());
    }
}

#[test]
fn metrics_show_the_views_values() {
    let f = parse(&metrics(&view()));
    let x = "http://x";
    assert_eq!(value(&f, "merkmail_up", &[]), Some(1.0));
    assert_eq!(value(&f, "merkmail_uptime_seconds", &[]), Some(10_920.0));
    assert_eq!(value(&f, "merkmail_messages", &[]), Some(1234.0));
    assert_eq!(value(&f, "merkmail_mailboxes", &[]), Some(11.0));
    assert_eq!(value(&f, "merkmail_users", &[]), Some(3.0));
    assert_eq!(value(&f, "merkmail_message_bytes", &[]), Some(1_258_291.0));
    assert_eq!(value(&f, "merkmail_body_bytes", &[]), Some(1_100_000.0));
    assert_eq!(value(&f, "merkmail_journal_head", &[]), Some(9876.0));
    assert_eq!(
        value(&f, "merkmail_inbound_journal_pending", &[]),
        Some(2.0)
    );
    assert_eq!(value(&f, "merkmail_sync_timeout_seconds", &[]), Some(0.5));
    assert_eq!(
        value(&f, "merkmail_write_sync_fallbacks_total", &[]),
        Some(6.0)
    );
    assert_eq!(
        value(
            &f,
            "merkmail_info",
            &[("node", "alpha"), ("version", "0.1.0"), ("mode", "sync")]
        ),
        Some(1.0)
    );

    assert_eq!(peer_value(&f, "merkmail_peer_up", x), Some(1.0));
    assert_eq!(
        peer_value(&f, "merkmail_peer_last_contact_timestamp_seconds", x),
        Some(1_699_999_997.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_sync_sessions_total", x),
        Some(17.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_sync_sessions_failed_total", x),
        Some(2.0)
    );
    assert_eq!(peer_value(&f, "merkmail_checks_total", x), Some(40.0));
    // Lifetime counters, not sums over the two runs kept.
    let bytes = |dir| {
        value(
            &f,
            "merkmail_reconcile_bytes_total",
            &[("peer", x), ("direction", dir)],
        )
    };
    assert_eq!(bytes("sent"), Some(123_456.0));
    assert_eq!(bytes("received"), Some(654_321.0));
    let repaired = |kind| {
        value(
            &f,
            "merkmail_repaired_total",
            &[("peer", x), ("kind", kind)],
        )
    };
    assert_eq!(repaired("copied_to_peer"), Some(30.0));
    assert_eq!(repaired("copied_from_peer"), Some(20.0));
    assert_eq!(repaired("expunged"), Some(5.0));
    assert_eq!(repaired("flag_updates"), Some(8.0));
    assert_eq!(repaired("uid_clashes_renumbered"), Some(2.0));
    assert_eq!(repaired("mailboxes_changed"), Some(1.0));
    assert_eq!(repaired("bodies_repaired"), Some(3.0));
    assert_eq!(
        f["merkmail_repaired_total"].samples.len(),
        14,
        "7 kinds × 2 peers"
    );
    assert_eq!(peer_value(&f, "merkmail_peer_journal_depth", x), Some(7.0));
    assert_eq!(
        peer_value(&f, "merkmail_peer_journal_oldest_age_seconds", x),
        Some(2.5)
    );
    assert_eq!(
        peer_value(&f, "merkmail_peer_journal_overflowed", x),
        Some(0.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_journal_shipped_total", x),
        Some(500.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_journal_ship_failures_total", x),
        Some(3.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_sync_fallbacks_total", x),
        Some(4.0)
    );
    // The newest run is the first.
    assert_eq!(
        peer_value(&f, "merkmail_last_check_duration_seconds", x),
        Some(1.5)
    );
    assert_eq!(peer_value(&f, "merkmail_last_check_failed", x), Some(0.0));
    assert_eq!(peer_value(&f, "merkmail_session_in_progress", x), Some(1.0));
    assert_eq!(peer_value(&f, "merkmail_session_rounds", x), Some(3.0));

    // The exact line an operator greps for.
    assert!(metrics(&view()).contains("\nmerkmail_peer_journal_depth{peer=\"http://x\"} 7\n"));
}

#[test]
fn metrics_escape_a_hostile_peer_url_and_leave_unknowns_out() {
    let text = metrics(&view());
    assert!(text.contains(
        "merkmail_peer_journal_depth{peer=\"http://evil\\\"quote\\\\back\\nline<b>/\"} 100000\n"
    ));
    let f = parse(&text);
    // The strict parser unescapes the label back to the original URL.
    assert_eq!(peer_value(&f, "merkmail_peer_up", NASTY), Some(0.0));
    assert_eq!(
        peer_value(&f, "merkmail_peer_journal_overflowed", NASTY),
        Some(1.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_peer_journal_oldest_age_seconds", NASTY),
        Some(7200.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_last_check_failed", NASTY),
        Some(1.0)
    );
    assert_eq!(
        peer_value(&f, "merkmail_session_in_progress", NASTY),
        Some(0.0)
    );
    // Never contacted, no session: absent series rather than zeros.
    assert_eq!(
        peer_value(&f, "merkmail_peer_last_contact_timestamp_seconds", NASTY),
        None
    );
    assert_eq!(peer_value(&f, "merkmail_session_rounds", NASTY), None);
}

#[test]
fn metrics_without_peers_still_declare_every_family() {
    let v = StatusView {
        node: "solo".into(),
        ..Default::default()
    };
    let f = parse(&metrics(&v));
    assert_eq!(value(&f, "merkmail_up", &[]), Some(1.0));
    assert!(f["merkmail_peer_journal_depth"].samples.is_empty());
    assert_eq!(f["merkmail_sync_sessions_total"].kind, "counter");
}

// ---------------------------------------------------------------------------------------------
// page
// ---------------------------------------------------------------------------------------------

#[test]
fn page_shows_the_node_and_every_peer_escaped() {
    let html = page(&view());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("merkmail node alpha"));
    assert!(html.contains("0.1.0"));
    assert!(html.contains("ab12cd34"));
    assert!(html.contains("1234 messages"));
    assert!(html
        .contains("<span class=\"warn\">sync (timeout 500ms), 6 writes fell back to async</span>"));
    assert!(html.contains("http://x"));
    assert!(html.contains("bravo"));
    // The hostile URL and the error, escaped: no raw tag survives.
    assert!(html.contains("http://evil&quot;quote\\back\nline&lt;b&gt;/"));
    assert!(
        html.contains("connect: &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;refused&quot;")
    );
    assert!(!html.contains("<script"));
    assert!(!html.contains("<b>"));
    // Runs, ages and states.
    assert!(html.contains("3s ago"));
    assert!(html.contains("2m ago"));
    assert!(html.contains("in 57s"));
    assert!(html.contains("peer-back"));
    assert!(html.contains("3 copied to peer, 1 expunged"));
    assert!(html.contains("OVERFLOWED"));
    assert!(html.contains("no (5 failures in a row)"));
    assert!(html.contains("outgoing manual, 3 rounds, 900 B, for 2s"));
    // 3 a.m. colours: green for equal, red for the error, the overflow and the unreachable peer.
    assert!(html.contains("<td class=\"ok\">equal"));
    assert!(html.contains("<td class=\"bad\">error"));
    assert!(html.contains("<td class=\"bad\">OVERFLOWED</td>"));
    assert!(html.contains("1 of 2 unreachable"));
}

#[test]
fn page_is_self_contained() {
    let html = page(&view());
    assert!(!html.contains("<script"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("<img"));
    assert!(!html.contains("src="));
    assert!(!html.contains("href="));
    assert!(!html.contains("@import"));
    assert!(!html.contains("url("));
    // The only absolute URLs are the peers', as text.
    let allowed = ["http://x", "http://evil&quot;quote"];
    for (at, _) in html.match_indices("http") {
        let rest = &html[at..];
        if rest.starts_with("http://") || rest.starts_with("https://") {
            assert!(
                allowed.iter().any(|a| rest.starts_with(a)),
                "unexpected URL at {}",
                &rest[..rest.len().min(40)]
            );
        }
    }
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
}

#[test]
fn page_without_peers_says_so() {
    let v = StatusView {
        node: "solo".into(),
        mode: Mode::Async,
        ..Default::default()
    };
    let html = page(&v);
    assert!(html.contains("merkmail node solo"));
    assert!(html.contains("No peers configured."));
    assert!(html.ends_with("</html>\n"));
}

// ---------------------------------------------------------------------------------------------
// human
// ---------------------------------------------------------------------------------------------

#[test]
fn human_summarises_node_peers_and_runs() {
    let text = human(&view());
    let first = text.lines().next().unwrap();
    assert!(first.contains("merkmail node alpha"), "{first}");
    assert!(first.contains("up 3h 2m"), "{first}");
    for fact in [
        "ab12cd34",
        "3 users, 11 mailboxes, 1234 messages (1.2 MiB)",
        "sync (timeout 500ms), 6 writes fell back to async, checks every 1m",
        "head 9876, 2 inbound pending",
        "http://x",
        "bravo",
        "3s ago",
        "in 57s",
        "7 (oldest 2s)",
        "4 (last 1m ago)",
        "outgoing manual, 3 rounds, 900 B, for 2s",
        "DOWN (5 failures)",
        "100000 (oldest 2h) OVERFLOWED",
        "40 checks, 17 sessions (2 failed)",
        "120.6 KiB out / 639.0 KiB in",
        "peer-back",
        "2m ago",
        "2.4s",
        "4.0 KiB out / 2.0 KiB in; bodies 1.2 MiB out / 0 B in",
        "3 copied to peer, 1 expunged",
        "connect: <script>alert(1)</script>",
    ] {
        assert!(text.contains(fact), "missing {fact:?} in\n{text}");
    }
}

#[test]
fn human_aligns_the_peer_table() {
    let text = human(&view());
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("PEER")).unwrap();
    let column = lines[header].find("STATE").unwrap();
    assert_eq!(lines[header + 1].find("up").unwrap(), column, "\n{text}");
    assert_eq!(lines[header + 2].find("DOWN").unwrap(), column, "\n{text}");
}

#[test]
fn human_neutralises_control_characters_from_peers() {
    let mut v = view();
    v.peers[1].runs[0].error = Some("boom\u{1b}[2J\nsecond line".into());
    let text = human(&v);
    assert!(!text.contains('\u{1b}'));
    assert!(text.contains("http://evil\"quote\\back\\nline<b>/"));
    assert!(text.contains("boom\\u{1b}[2J\\nsecond line"));
}

#[test]
fn human_without_peers_works() {
    let v = StatusView {
        node: "solo".into(),
        version: "0.1.0".into(),
        mode: Mode::Async,
        uptime_s: 42,
        ..Default::default()
    };
    let text = human(&v);
    assert!(
        text.contains("merkmail node solo (version 0.1.0), up 42s"),
        "{text}"
    );
    assert!(text.contains("no peers configured"));
    assert!(!text.contains("PEER"));
}

#[test]
fn a_live_maildir_shows_its_passes_in_every_rendering() {
    let v = StatusView {
        peers: Vec::new(),
        maildir: Some(merkmail::status::MaildirView {
            template: "/srv/vmail/%u/Maildir".into(),
            passes_total: 12,
            failed_passes_total: 1,
            last_pass_ms: Some(NOW - 2_000),
            imported_total: 30,
            delivered_total: 7,
            owed_mailboxes: 2,
            problems: vec!["UID 27 not delivered: all 26 keyword letters are taken".into()],
        }),
        ..view()
    };
    // The terminal view shows it even with no peers (its section comes before theirs).
    let text = human(&v);
    assert!(
        text.lines().any(|l| l.starts_with("maildir ")
            && l.ends_with("/srv/vmail/%u/Maildir: 12 passes (1 failed), last 2.0s ago; 30 taken in, 7 delivered; 2 mailboxes owed")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("problem")
            && l.ends_with("all 26 keyword letters are taken")),
        "{text}"
    );
    let families = parse(&metrics(&v));
    assert_eq!(
        value(&families, "merkmail_maildir_passes_total", &[]),
        Some(12.0)
    );
    assert_eq!(
        value(&families, "merkmail_maildir_owed_mailboxes", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&families, "merkmail_maildir_problems", &[]),
        Some(1.0)
    );
    let json = serde_json::to_value(&v).expect("json");
    assert_eq!(json["maildir"]["delivered_total"], 7);
    // A store that holds its own mail shows none of it.
    let plain = view();
    assert!(!human(&plain).contains("maildir"));
    assert!(!metrics(&plain).contains("merkmail_maildir"));
    assert!(serde_json::to_value(&plain)
        .expect("json")
        .get("maildir")
        .is_none());
}
