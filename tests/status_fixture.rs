//! Golden files for every way the status snapshot leaves the node: `GET /status` (compact JSON,
//! as net/router.rs serializes it), `GET /metrics`, `GET /` and `merkmail status` (the terminal
//! view, and `--json`'s pretty JSON). The files under tests/fixtures/status/ were written by the
//! code before the status module was reshaped; a reshaping must leave every byte as it was.
//!
//! To rewrite them after a deliberate change of an output: `MERKMAIL_BLESS=1 cargo test --test
//! status_fixture`, then read the diff.

use std::path::PathBuf;

use merkmail::status::{human, metrics, page};
use merkmail::status::{
    CountsView, Direction, JournalView, Mode, Outcome, PeerView, RepairedView, RunView,
    SessionView, StatusView, Trigger,
};

#[path = "common/status.rs"]
mod status_common;

use status_common::{counts, healthy_peer, repaired_after_peer_back, run, unreachable_peer, NOW};

/// Everything a Prometheus label, an HTML page and a terminal must each escape in their own way:
/// quote, backslash, line feed, a tag, an ampersand, an apostrophe, an escape sequence, a tab,
/// and characters wider than a byte (the terminal aligns columns by characters).
const NASTY_URL: &str = "http://evil\"quote\\back\nline<b>&'x\u{1b}[2J\tünï/日本";
const NASTY_ERROR: &str =
    "connect: <script>alert(1)</script> & \"refused\" \u{1b}]0;pwned\u{7}\r\nsecond line";

/// A `sync`-mode node with three peers: a healthy one with ten runs of every outcome and
/// trigger, an unreachable one with a hostile URL and error, and one in an incoming session.
fn cluster() -> StatusView {
    let bravo_runs = vec![
        run(3_000, 850, Trigger::Interval, Outcome::Equal),
        repaired_after_peer_back(),
        RunView {
            rounds: 9,
            bytes_sent: 70_000,
            bytes_received: 1_100_000,
            body_bytes_sent: 0,
            body_bytes_received: 5 * 1024 * 1024 * 1024,
            differences: RepairedView {
                copied_from_peer: 12,
                flag_updates: 4,
                uid_clashes_renumbered: 2,
                mailboxes_changed: 1,
                ..Default::default()
            },
            ..run(5 * 3_600_000, 192_000, Trigger::Journal, Outcome::Unequal)
        },
        RunView {
            rounds: 0,
            bytes_sent: 0,
            bytes_received: 0,
            ..run(6 * 3_600_000, 0, Trigger::Retry, Outcome::Skipped)
        },
        RunView {
            error: Some("no complete answer from http://bravo.example:8025/v1/sync/round".into()),
            rounds: 2,
            ..run(3 * 86_400_000, 10_010, Trigger::Startup, Outcome::Error)
        },
        RunView {
            differences: RepairedView {
                bodies_repaired: 2,
                ..Default::default()
            },
            ..run(
                4 * 86_400_000,
                18_180_000,
                Trigger::Interval,
                Outcome::Repaired,
            )
        },
        run(
            5 * 86_400_000,
            187_200_000,
            Trigger::Startup,
            Outcome::Equal,
        ),
        RunView {
            differences: RepairedView {
                copied_to_peer: 1,
                copied_from_peer: 1,
                expunged: 1,
                flag_updates: 1,
                uid_clashes_renumbered: 1,
                mailboxes_changed: 1,
                bodies_repaired: 1,
            },
            body_bytes_sent: 1023,
            body_bytes_received: 1024,
            ..run(6 * 86_400_000, 60_000, Trigger::Manual, Outcome::Repaired)
        },
        run(
            7 * 86_400_000,
            7_200_000,
            Trigger::PeerBack,
            Outcome::Unequal,
        ),
        run(8 * 86_400_000, 999, Trigger::Journal, Outcome::Skipped),
    ];
    StatusView {
        maildir: None,
        node: "alpha".into(),
        version: "0.1.0".into(),
        now_ms: NOW,
        uptime_s: 3 * 3600 + 120,
        root: "ab12cd34ef56".into(),
        counts: counts(),
        mode: Mode::Sync,
        sync_timeout_ms: 2_500,
        check_interval_s: 60,
        journal_head: 9876,
        inbound_pending: 2,
        sync_fallbacks_total: 6,
        peers: vec![
            healthy_peer("https://bravo.example:8025", bravo_runs, Trigger::Interval),
            PeerView {
                runs: vec![RunView {
                    error: Some(NASTY_ERROR.into()),
                    rounds: 0,
                    bytes_sent: 0,
                    bytes_received: 0,
                    ..run(30_000, 10_000, Trigger::Interval, Outcome::Error)
                }],
                repaired: RepairedView::default(),
                sessions_total: 1,
                sessions_failed_total: 1,
                checks_total: 6,
                journal: JournalView {
                    depth: 100_000,
                    oldest_unshipped_age_ms: Some(7_200_000),
                    overflowed: true,
                    shipped_total: 0,
                    ship_failures_total: 12,
                    sync_fallbacks_total: 2,
                    last_sync_fallback_ms: None,
                },
                session: None,
                bytes_sent_total: 0,
                bytes_received_total: 0,
                tombstones_held_back: 0,
                holding_since_ms: None,
                ..unreachable_peer(NASTY_URL)
            },
            PeerView {
                url: "http://[::1]:8027/ünïcødé".into(),
                node: Some("charlie-日本".into()),
                reachable: true,
                last_contact_ms: Some(NOW + 1_000),
                failures_in_a_row: 0,
                next_check_ms: None,
                runs: vec![],
                repaired: RepairedView::default(),
                sessions_total: 0,
                sessions_failed_total: 0,
                checks_total: 0,
                journal: JournalView {
                    depth: 0,
                    oldest_unshipped_age_ms: None,
                    overflowed: false,
                    shipped_total: 42,
                    ship_failures_total: 0,
                    sync_fallbacks_total: 0,
                    last_sync_fallback_ms: Some(NOW - 90_000_000),
                },
                session: Some(SessionView {
                    started_ms: NOW - 4_000_000,
                    direction: Direction::Incoming,
                    trigger: Trigger::Peer,
                    rounds: 12,
                    bytes: 3 * 1024 * 1024,
                }),
                bytes_sent_total: 1,
                bytes_received_total: u64::MAX,
                tombstones_held_back: 0,
                holding_since_ms: None,
            },
        ],
    }
}

/// An `async` node with no peers and a node id and version that need escaping everywhere.
fn solo() -> StatusView {
    StatusView {
        maildir: None,
        node: "a<b>&\"c'\u{1b}[31m\\n".into(),
        version: "0.1.0-dev+<g1234>".into(),
        now_ms: 951_782_400_000,
        uptime_s: 42,
        root: "00".repeat(32),
        counts: CountsView {
            users: 1,
            mailboxes: 2,
            messages: 1,
            message_bytes: 22,
            bodies: 1,
            body_bytes: 22,
            tombstones: 0,
        },
        mode: Mode::Async,
        sync_timeout_ms: 2_000,
        check_interval_s: 86_400,
        journal_head: 1,
        inbound_pending: 0,
        sync_fallbacks_total: 0,
        peers: vec![],
    }
}

/// What net/router.rs answers when the server runs without the daemon's hooks.
fn bare() -> StatusView {
    StatusView {
        node: "lonely".into(),
        version: "0.1.0".into(),
        root: "f560".into(),
        mode: Mode::Async,
        ..Default::default()
    }
}

/// A `sync`-mode node whose writes never fell back, with one quiet peer that never ran.
fn quiet() -> StatusView {
    StatusView {
        node: "delta".into(),
        version: "0.1.0".into(),
        now_ms: 4_102_444_799_000,
        uptime_s: 2 * 86_400 + 4 * 3600,
        root: "ff".into(),
        mode: Mode::Sync,
        sync_timeout_ms: 1_500,
        check_interval_s: 90,
        peers: vec![PeerView {
            url: "http://echo:8025".into(),
            node: Some("echo".into()),
            reachable: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn views() -> [(&'static str, StatusView); 4] {
    [
        ("cluster", cluster()),
        ("solo", solo()),
        ("bare", bare()),
        ("quiet", quiet()),
    ]
}

/// The five outputs of one snapshot, as `(file suffix, bytes)`.
fn renderings(v: &StatusView) -> [(&'static str, Vec<u8>); 5] {
    // `GET /status` writes `serde_json::to_vec` (compact); `merkmail status --json` prints
    // `to_string_pretty` and a line feed; `merkmail status` writes the terminal view as is.
    let compact = serde_json::to_vec(v).expect("serialize");
    let pretty = format!("{}\n", serde_json::to_string_pretty(v).expect("serialize"));
    [
        ("status.json", compact),
        ("metrics.txt", metrics(v).into_bytes()),
        ("page.html", page(v).into_bytes()),
        ("human.txt", human(v).into_bytes()),
        ("pretty.json", pretty.into_bytes()),
    ]
}

fn fixture(name: &str, suffix: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/status")
        .join(format!("{name}.{suffix}"))
}

fn bless() -> bool {
    std::env::var_os("MERKMAIL_BLESS").is_some_and(|v| v == "1")
}

/// The first line where two texts differ, to make a failure readable.
fn first_difference(want: &[u8], got: &[u8]) -> String {
    let (want, got) = (String::from_utf8_lossy(want), String::from_utf8_lossy(got));
    let mut w = want.split_inclusive('\n');
    let mut g = got.split_inclusive('\n');
    for line in 1.. {
        match (w.next(), g.next()) {
            (None, None) => break,
            (a, b) if a == b => {}
            (a, b) => return format!("line {line}:\n  want {a:?}\n  got  {b:?}"),
        }
    }
    "same lines; different bytes".to_string()
}

#[test]
fn every_rendering_is_byte_identical_to_its_fixture() {
    for (name, view) in views() {
        for (suffix, got) in renderings(&view) {
            let path = fixture(name, suffix);
            if bless() {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, &got).expect("write fixture");
                continue;
            }
            let want = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (MERKMAIL_BLESS=1 writes it)", path.display()));
            assert!(
                want == got,
                "{} differs from the rendering, {}",
                path.display(),
                first_difference(&want, &got)
            );
        }
    }
}

#[test]
fn the_fixture_json_reads_back_into_the_same_snapshot_and_writes_the_same_bytes() {
    for (name, view) in views() {
        for suffix in ["status.json", "pretty.json"] {
            let path = fixture(name, suffix);
            let text = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (MERKMAIL_BLESS=1 writes it)", path.display()));
            let parsed: StatusView = serde_json::from_slice(&text).expect("fixture JSON parses");
            assert_eq!(parsed, view, "{}", path.display());
            let again = if suffix == "status.json" {
                serde_json::to_vec(&parsed).expect("serialize")
            } else {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&parsed).expect("serialize")
                )
                .into_bytes()
            };
            assert!(
                again == text,
                "{} re-serialized differently, {}",
                path.display(),
                first_difference(&text, &again)
            );
        }
    }
}
