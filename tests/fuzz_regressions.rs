//! What the fuzz targets (`fuzz/`, docs/RELIABILITY.md §3) found, kept fixed with stable
//! `cargo test`: each test feeds the minimized input to the same check the target runs — the
//! check functions are the fuzz crate's own files, included here by path.
//!
//! Also: every committed seed passes its check (the seeds are real encodings, and a check that
//! failed on them would be useless), and `write_fuzz_seeds` (ignored; run by `scripts/fuzz
//! --seeds`) writes those seeds from live sessions, batches and requests.

#[allow(dead_code)]
#[path = "../fuzz/src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../fuzz/src/fixture.rs"]
mod fixture;
#[allow(dead_code)]
#[path = "../fuzz/src/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../fuzz/src/maildir.rs"]
mod maildir;
#[allow(dead_code)]
#[path = "../fuzz/src/store_ops.rs"]
mod store_ops;
#[allow(dead_code)]
#[path = "../fuzz/src/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};

/// What a target runs on one input; it panics when an invariant breaks.
type Check = fn(&[u8]);

/// Each target with its check, as `fuzz/fuzz_targets/*.rs` pairs them.
const TARGETS: [(&str, Check); 8] = [
    ("wire_request", wire::round_request),
    ("wire_reply", wire::session_replies),
    ("journal_batch", wire::journal_batch),
    ("http", http::check),
    ("maildir_name", maildir::names),
    ("uidlist", maildir::uidlist),
    ("config", config::config),
    ("store_ops", store_ops::check),
];

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

/// Runs every file of `dir/<target>/` through the target's check; how many ran.
fn replay_all(dir: &Path) -> usize {
    let mut seen = 0;
    for (target, check) in TARGETS {
        let dir = dir.join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "nothing in {}", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("read input");
            check(&data);
            seen += 1;
        }
    }
    seen
}

#[test]
fn every_seed_passes_its_check() {
    assert!(replay_all(&seeds_dir()) >= TARGETS.len());
}

/// The corpus the long runs left, minimized (`scripts/fuzz --cmin`, docs/RELIABILITY.md §3):
/// every input the targets kept still passes, so a change that breaks what they reached
/// fails here, without nightly.
#[test]
fn every_minimized_corpus_input_passes_its_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-min");
    assert!(replay_all(&dir) >= TARGETS.len());
}

/// Everything a store holds that its public API shows (mail, tree root, counters, journals),
/// to compare a rewound fixture with a freshly built one.
fn snapshot(store: &merkmail::store::Store) -> String {
    let mut mail = Vec::new();
    for user in store.users().expect("users") {
        for mailbox in store.list_mailboxes(&user).expect("mailboxes") {
            for msg in store
                .list_messages(&user, Some(&mailbox.name))
                .expect("messages")
            {
                let body = store.fetch(&user, &mailbox.name, msg.uid).expect("fetch");
                mail.push(format!("{user} {mailbox:?} {msg:?} {body:?}"));
            }
        }
    }
    format!(
        "{:?}\n{:?}\n{mail:#?}\n{:?}\n{:?}\n{:?}",
        store.root().expect("root"),
        store.counters().expect("counters"),
        store.journal_head().expect("head"),
        store.journal_peers().expect("peers"),
        store.journal_senders().expect("senders"),
    )
}

/// The fuzz targets start every input from one store per thread, rewound
/// (`fixture::with_fixture`): after writes of every kind and a journal batch received and
/// applied, the rewound store is the fixture as built, and verifies.
#[test]
fn a_rewound_fixture_is_the_fixture() {
    use merkmail::model::{parse_flag_list, FlagOp};
    use merkmail::store::NewMessage;
    let fresh = snapshot(&fixture::store().expect("fixture"));
    let batch = std::fs::read(seeds_dir().join("journal_batch/all")).expect("seed batch");
    let batch = merkmail::sync::journal_wire::decode_batch(&batch).expect("seed decodes");
    for round in 0..3 {
        fixture::with_fixture(|s| {
            assert_eq!(snapshot(s), fresh, "round {round}");
            let msg = NewMessage {
                bytes: format!("Subject: {round}\r\n\r\nx\r\n").into_bytes(),
                flags: parse_flag_list("\\Seen,$New").expect("flags"),
                internal_date: 1_777_100_000,
                ..NewMessage::default()
            };
            s.journal_register_peers(&["http://127.0.0.1:1".to_string()], 100)
                .expect("register");
            s.append("alice", "INBOX", vec![msg.clone()])
                .expect("append");
            s.append("carol", "INBOX", vec![msg]).expect("append");
            let flags = parse_flag_list("\\Flagged").expect("flags");
            s.set_flags("alice", "Work", 65, FlagOp::Add, &flags)
                .expect("flags");
            s.expunge("alice", "INBOX", &[1, 2]).expect("expunge");
            s.create_mailbox("bob", "Lists").expect("create");
            s.rename_mailbox("alice", "Work", "Work2").expect("rename");
            s.delete_mailbox("alice", "Work2").expect("delete");
            s.journal_receive(&batch).expect("receive");
            s.journal_apply_inbound(100).expect("apply");
            assert_ne!(snapshot(s), fresh, "round {round} changed nothing");
        });
    }
    fixture::with_fixture(|s| {
        assert_eq!(snapshot(s), fresh, "after the last round");
        assert!(s.verify().expect("verify runs").is_ok());
    });
}

/// Writes `fuzz/seeds/<target>/*` (or `$MERKMAIL_SEEDS_DIR`): real encodings captured from
/// sessions, journal batches and requests against the fixture, and hand-written texts.
#[test]
#[ignore = "writes the fuzz seed corpus; run by scripts/fuzz --seeds"]
fn write_fuzz_seeds() {
    let root = std::env::var_os("MERKMAIL_SEEDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(seeds_dir);
    for (target, seeds) in seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("seed dir");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
}

mod seeds {
    use super::{fixture, wire};
    use merkmail::model::{parse_flag_list, FlagOp};
    use merkmail::store::{NewMessage, Store};
    use merkmail::sync::journal_wire::encode_batch;
    use merkmail::sync::wire::{decode_request, encode, RoundRequest};
    use std::cell::RefCell;

    type Seeds = Vec<(String, Vec<u8>)>;

    pub fn all() -> Vec<(&'static str, Seeds)> {
        let (requests, replies) = sessions();
        let batches = batches();
        vec![
            ("wire_request", requests.clone()),
            ("wire_reply", replies),
            ("journal_batch", batches.clone()),
            ("http", http(&requests, &batches)),
            ("maildir_name", texts(MAILDIR_NAMES)),
            ("uidlist", texts(UIDLISTS)),
            ("config", texts(CONFIGS)),
            ("store_ops", store_ops()),
        ]
    }

    fn texts(list: &[&str]) -> Seeds {
        list.iter()
            .enumerate()
            .map(|(i, t)| (format!("{i:02}"), t.as_bytes().to_vec()))
            .collect()
    }

    /// A store that differs from the fixture everywhere a session looks: new, changed and
    /// expunged messages, a new mailbox and a new user.
    fn changed() -> Store {
        let s = fixture::store().expect("fixture");
        let msg = |n: u8| NewMessage {
            bytes: format!("Subject: new {n}\r\n\r\nnew\r\n").into_bytes(),
            flags: parse_flag_list("\\Seen,$Label2").expect("flags"),
            internal_date: 1_777_100_000,
            ..NewMessage::default()
        };
        s.append("alice", "INBOX", vec![msg(1), msg(2)])
            .expect("append");
        let flagged = parse_flag_list("\\Flagged").expect("flags");
        s.set_flags("alice", "Work", 65, FlagOp::Add, &flagged)
            .expect("flags");
        s.expunge("alice", "INBOX", &[1]).expect("expunge");
        s.create_mailbox("alice", "Lists/rust").expect("create");
        s.append("carol", "INBOX", vec![msg(3)]).expect("append");
        s
    }

    /// Sessions in both directions between the fixture and [`changed`], with every round
    /// and every reply captured: the requests the fixture answered (one seed each) and, for
    /// the fixture as initiator, its peer's replies in `wire::split_frame` framing.
    fn sessions() -> (Seeds, Seeds) {
        let mut requests = Seeds::new();
        let mut replies = Seeds::new();
        // The fixture answers: what a peer's session sends it.
        for dry_run in [true, false] {
            let initiator = changed();
            let fixture = fixture::store().expect("fixture");
            let captured = RefCell::new(Vec::new());
            let mut peer = merkmail::sync::in_process(&fixture);
            merkmail::sync::run(&initiator, wire::WINDOW, dry_run, |bytes: Vec<u8>| {
                captured.borrow_mut().push(bytes.clone());
                peer(bytes)
            })
            .expect("session");
            for (i, bytes) in captured.into_inner().into_iter().enumerate() {
                requests.push((format!("{}-round{i}", tag(dry_run)), bytes));
            }
        }
        // The fixture asks: what its peer answers.
        for dry_run in [true, false] {
            let fixture = fixture::store().expect("fixture");
            let other = changed();
            let framed = RefCell::new(Vec::new());
            let mut peer = merkmail::sync::in_process(&other);
            merkmail::sync::run(&fixture, wire::WINDOW, dry_run, |bytes: Vec<u8>| {
                let reply = peer(bytes)?;
                if let Ok(len) = u16::try_from(reply.len()) {
                    framed.borrow_mut().extend_from_slice(&len.to_be_bytes());
                    framed.borrow_mut().extend_from_slice(&reply);
                }
                Ok::<_, String>(reply)
            })
            .expect("session");
            replies.push((format!("{}-session", tag(dry_run)), framed.into_inner()));
        }
        // Equal stores: one round each way.
        let a = fixture::store().expect("fixture");
        let b = fixture::store().expect("fixture");
        let mut peer = merkmail::sync::in_process(&b);
        let framed = RefCell::new(Vec::new());
        merkmail::sync::run(&a, wire::WINDOW, false, |bytes: Vec<u8>| {
            let reply = peer(bytes)?;
            framed
                .borrow_mut()
                .extend_from_slice(&(reply.len() as u16).to_be_bytes());
            framed.borrow_mut().extend_from_slice(&reply);
            Ok::<_, String>(reply)
        })
        .expect("session");
        replies.push(("equal".to_string(), framed.into_inner()));
        requests.push((
            "empty-round".to_string(),
            encode(&RoundRequest {
                version: merkmail::sync::wire::WIRE_VERSION,
                window: 0,
                requests: vec![],
            }),
        ));
        for (name, bytes) in &requests {
            assert!(decode_request(bytes).is_ok(), "seed {name} does not decode");
        }
        (requests, replies)
    }

    fn tag(dry_run: bool) -> &'static str {
        if dry_run {
            "dry"
        } else {
            "apply"
        }
    }

    /// Journal batches a node sends the fixture: the fixture's records under another node id,
    /// then local writes of every kind, shipped in one batch and in batches of one entry.
    fn batches() -> Seeds {
        let sender = Store::in_memory("fuzz-b").expect("store");
        sender.apply(&fixture::changes()).expect("fixture changes");
        let peer = "http://127.0.0.1:1".to_string();
        sender
            .journal_register_peers(std::slice::from_ref(&peer), 1_000)
            .expect("register");
        let msg = NewMessage {
            bytes: b"Subject: journal\r\n\r\nshipped\r\n".to_vec(),
            flags: parse_flag_list("$Shipped").expect("flags"),
            internal_date: 1_777_200_000,
            ..NewMessage::default()
        };
        sender
            .append("alice", "INBOX", vec![msg.clone()])
            .expect("append");
        sender
            .set_flags(
                "alice",
                "INBOX",
                2,
                FlagOp::Remove,
                &parse_flag_list("\\Seen").expect("flags"),
            )
            .expect("flags");
        sender.expunge("alice", "Work", &[3]).expect("expunge");
        sender.create_mailbox("bob", "Archive").expect("create");
        sender.append("bob", "Archive", vec![msg]).expect("append");
        sender
            .rename_mailbox("bob", "Archive", "Archive2")
            .expect("rename");
        sender.delete_mailbox("alice", "Work").expect("delete");
        let mut seeds = Seeds::new();
        let whole = sender.journal_batch(&peer, 100, 1 << 20).expect("batch");
        seeds.push(("all".to_string(), encode_batch(&whole)));
        let mut upto = 0;
        for i in 0..16 {
            let one = sender.journal_batch(&peer, 1, 1 << 20).expect("batch");
            if one.entries.is_empty() {
                break;
            }
            seeds.push((format!("one{i:02}"), encode_batch(&one)));
            upto = one.last_seq;
            sender.journal_ack(&peer, upto).expect("ack");
        }
        assert!(upto > 0, "the sender journaled nothing");
        let empty = sender.journal_batch(&peer, 10, 1 << 20).expect("batch");
        seeds.push(("empty".to_string(), encode_batch(&empty)));
        seeds
    }

    fn request(head: &str, body: &[u8]) -> Vec<u8> {
        let mut out = head.as_bytes().to_vec();
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(body);
        out
    }

    /// One request per route (and a few refused ones), each with the token unless noted.
    fn http(rounds: &Seeds, batches: &Seeds) -> Seeds {
        let auth = format!("Authorization: Bearer {}", super::http::TOKEN);
        let mail = "/v1/mail/users/alice/mailboxes";
        let mut list: Vec<(String, Vec<u8>)> = vec![];
        let mut add = |name: &str, head: String, body: &[u8]| {
            list.push((name.to_string(), request(&head, body)));
        };
        for (name, path) in [
            ("healthz", "/healthz"),
            ("status", "/status"),
            ("metrics", "/metrics"),
            ("page", "/"),
            ("root", "/v1/mail/root"),
            ("stats", "/v1/mail/stats"),
            ("mailboxes", "/v1/mail/users/alice/mailboxes"),
            ("user-messages", "/v1/mail/users/alice/messages"),
            ("messages", "/v1/mail/users/alice/mailboxes/INBOX/messages"),
            ("fetch", "/v1/mail/users/alice/mailboxes/Work/messages/65"),
            ("hello", "/v1/sync/hello"),
        ] {
            add(name, format!("GET {path}\n{auth}"), b"");
        }
        add(
            "position",
            format!("GET /v1/journal/position\n{auth}\nx-merkmail-node: fuzz-b"),
            b"",
        );
        add("no-token", format!("GET {mail}"), b"");
        add(
            "append",
            format!("POST {mail}/INBOX/messages?flags=%5CSeen,$Label1&date=1777000000\n{auth}"),
            b"Subject: hi\r\n\r\nhello\r\n",
        );
        let batch = [&b"\0\0\0\x03one"[..], b"\0\0\0\x05three"].concat();
        add(
            "append-batch",
            format!(
                "POST {mail}/Work/messages\n{auth}\nContent-Type: application/vnd.merkmail.messages"
            ),
            &batch,
        );
        add(
            "expunge",
            format!("POST {mail}/INBOX/expunge\n{auth}\nContent-Type: application/json"),
            br#"{"uids": [1, 4]}"#,
        );
        add(
            "flags",
            format!("POST {mail}/INBOX/messages/2/flags?set=%5CAnswered,Junk\n{auth}"),
            b"",
        );
        add("create", format!("POST {mail}/Lists%2Frust\n{auth}"), b"");
        add(
            "rename",
            format!("POST {mail}/Work/rename?to=Archive\n{auth}"),
            b"",
        );
        add("delete", format!("DELETE {mail}/Work\n{auth}"), b"");
        add(
            "start",
            format!("POST /v1/sync/start\n{auth}\nContent-Type: application/json"),
            br#"{"peer": "http://127.0.0.1:1", "dry_run": true}"#,
        );
        for (name, bytes) in rounds.iter().take(6) {
            add(
                &format!("round-{name}"),
                format!("POST /v1/sync/round\n{auth}\nx-merkmail-node: fuzz-b"),
                bytes,
            );
        }
        for (name, bytes) in batches.iter().take(3) {
            add(
                &format!("journal-{name}"),
                format!("POST /v1/journal\n{auth}"),
                bytes,
            );
        }
        list
    }

    const MAILDIR_NAMES: &[&str] = &[
        "1276528487.M364837P9451.kurkku,S=1355,W=1394:2,FS",
        "0 Junk\n1 $Label1\n3 NonJunk\n\n1276533073.M242911P3632.kurkku:2,Sabd",
        "1276533074.x:2,",
        "msg:1,old:2,RTP",
        ".Sent.2024",
        ".~peter.mail.&U,BTFw-.&ZeVnLIqe-",
        "V\t2\n\nSent\t2024\nINBOX\n&U,BTFw-\n",
        "Sent.2024\nTrash\n",
    ];

    const UIDLISTS: &[&str] = &[
        "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n\
         25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394\n\
         25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n\
         25018 S1 W2 :1276533074.x\n",
        "1 1000 5\n1 a:2,S\n3 b\n",
        "3 V1 N9\n1 :a\n2 :b\n5 :a\n",
        "3 V1 N1 G6823c909cdd00a6ba92e000083ecc375\n1 :a\n2 :b\n",
        "3 V1 N2\r\n1 :a\r\n",
    ];

    const CONFIGS: &[&str] = &[
        "node_id = \"mx1\"\ndata_dir = \"/var/lib/merkmail\"\nlisten = \"10.0.0.1:8025\"\n\
         peer_token = \"s3cret peer token\"\nadmin_token = \"another one\"\nmode = \"sync\"\n\
         sync_timeout_ms = 1500\ncheck_interval_s = 30\ncheck_jitter = 0.3\n\
         backoff_max_s = 120\njournal_bound = 5000\njournal_batch = 200\n\
         tombstone_retention_days = 60\nshutdown_timeout_ms = 5000\n\n\
         [[peer]]\nurl = \"http://10.0.0.2:8025\"\n\n\
         [[peer]]\nurl = \"http://10.0.0.3:8025\"\ntoken = \"their token\"\n\n\
         [limits]\nmax_body_bytes = 65536\nmax_append_bytes = 1048576\n\
         max_sync_bytes = 2097152\nmax_items = 500\nheader_timeout_ms = 2000\n\
         request_timeout_ms = 30000\nmax_connections = 64\n",
        "data_dir = \"d\"\nlisten = \"127.0.0.1:0\"\n",
        "data_dir = \"d\"\nlisten = \"[::1]:8025\"\ncheck_interval_s = 1\ncheck_jitter = 0.9\n",
    ];

    /// Operation strings in `store_ops::decode`'s form: create, append, flags, rename,
    /// expunge, subscribe and delete on the same mailboxes.
    fn store_ops() -> Seeds {
        let ops: [&[u8]; 4] = [
            // append to alice's INBOX (creates alice), flag, expunge, create Work, rename it.
            &[
                3, 0, 0, 1, 1, 2, 3, 0, 4, 0, 0, 0, 0, 3, 5, 0, 0, 0, 0, 0, 0, 1, 1, 3,
            ],
            // create Work and Work/2026 for bob, append with a kept UID, delete Work.
            &[
                0, 1, 1, 0, 1, 2, 3, 1, 2, 0, 5, 7, 0x90, 2, 1, 1, 6, 1, 1, 1,
            ],
            // INBOX in another case, a bad name, UIDs near the end of the range.
            &[
                3, 2, 6, 0, 1, 0, 0x81, 3, 2, 0, 0, 1, 0, 0, 0, 2, 7, 4, 2, 0, 0xff, 2, 1,
            ],
            &[6, 0, 0, 1, 0, 0, 2, 2, 0, 5],
        ];
        ops.iter()
            .enumerate()
            .map(|(i, o)| (format!("{i:02}"), o.to_vec()))
            .collect()
    }
}

/// Found by the `config` target's check: a `check_interval_s` near `u64::MAX` passes
/// validation, and the daemon's checker then panicked in `Schedule::wait`
/// (`Duration::mul_f64` past `Duration::MAX`). The wait is now capped at `Duration::MAX`.
#[test]
fn huge_check_interval_does_not_panic_the_schedule() {
    let text =
        "data_dir = \"d\"\nlisten = \"127.0.0.1:0\"\ncheck_interval_s = 18446744073709551615\n";
    config::config(text.as_bytes());
    let parsed = merkmail::daemon::config::Config::from_toml(text).expect("parses");
    assert!(parsed.validate("test").is_ok());
    let schedule = merkmail::daemon::schedule::Schedule {
        interval: parsed.check_interval(),
        jitter: parsed.check_jitter,
        backoff_max: std::time::Duration::from_secs(parsed.backoff_max_s),
    };
    assert_eq!(schedule.wait(0, 1.0), std::time::Duration::MAX);
    assert!(schedule.wait(0, -1.0) < std::time::Duration::MAX);
}

/// Found by `wire_reply` in 13 484 runs: a peer's `Users` answer with a mailbox at UID-tree
/// level 15 made the initiator compute a UID span with a shift of 66 bits (a panic with
/// overflow checks, a wrong span without). The session now ends with a protocol error for a
/// level above the UID tree's root. The input is the crash artifact as libFuzzer wrote it.
#[test]
fn peer_naming_a_uid_level_above_the_root_ends_the_session() {
    wire::session_replies(include_bytes!(
        "../fuzz/regressions/wire_reply-uid-level-above-root"
    ));
}

/// Found by `uidlist` in 55 931 runs: an entry whose base name ended in '\r' (`1 :a\r:a`)
/// parsed, but the list we write back (`1 :a\r\n`) reads as base name `a`. A base name with a
/// control character is now refused like one with '/'.
#[test]
fn uidlist_base_name_with_a_carriage_return_is_refused() {
    let text = b"3 V1 N2\r\n1  V1 N :a\r:a\r\n";
    maildir::uidlist(text);
    let parsed = merkmail::maildir::parse_uidlist(std::str::from_utf8(text).expect("utf-8"));
    assert!(
        parsed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("control character")),
        "{parsed:?}"
    );
}

/// Found by `maildir_name` in 15 886 runs: a `dovecot-keywords` line `0 \See` made the letter
/// `a` in a file name read as the flag `\See`, which no file name can carry (`format_info`
/// drops it as "not a storable system flag"). A letter whose line holds no keyword now reads
/// as an unknown keyword letter, like one without a line. The input is the crash artifact as
/// libFuzzer wrote it.
#[test]
fn keyword_line_holding_a_system_flag_name_is_no_keyword() {
    maildir::names(include_bytes!(
        "../fuzz/regressions/maildir_name-backslash-keyword"
    ));
    let keywords = merkmail::maildir::parse_keywords_file("0 \\See\n1 a b\n2 Junk\n");
    let parsed = merkmail::maildir::parse_filename("x:2,Sabc", &keywords);
    assert_eq!(parsed.flags, ["\\Seen", "Junk"]);
    assert_eq!(parsed.unknown_keyword_letters, ['a', 'b']);
}

/// Found by `maildir_name` in 481 436 runs (session 10): a `dovecot-keywords` file ending in
/// `0 <name>\r` with no final newline read as the keyword `<name>\r`, which a rewrite (`\r\n`
/// is a line end) read back without the `\r`. A keyword name with a control character is no
/// keyword now (Dovecot's are IMAP atoms). The input is the crash artifact as libFuzzer wrote
/// it.
#[test]
fn keyword_name_with_a_control_character_is_no_keyword() {
    maildir::names(include_bytes!(
        "../fuzz/regressions/maildir_name-keyword-cr-at-end"
    ));
    // A CRLF line end is a line end; a '\r' at the end of the file, or a bell, is not.
    let keywords = merkmail::maildir::parse_keywords_file("0 Junk\r\n1 b\u{7}d\n2 Work\r");
    let keywords = keywords.into_iter().map(|(_, k)| k).collect::<Vec<_>>();
    assert_eq!(keywords, ["Junk"]);
}

/// Found by `wire_request` in 140 619 runs (the first run after the targets were made
/// faster): a round's expunge of alice's UID 1 with an origin stamp whose milliseconds were
/// past 48 bits. `Stamp::to_bytes` saturates such a stamp in the identity index key while the
/// tombstone (postcard) kept all 64 bits, so `verify` found "the identity index names an
/// expunge no tombstone holds". A stamp past `Stamp::MAX_MS` no longer decodes, from a peer
/// or anywhere else. The input is the crash artifact as libFuzzer wrote it.
#[test]
fn stamp_past_48_bits_from_a_peer_is_refused() {
    let data = include_bytes!("../fuzz/regressions/wire_request-expunge-identity");
    wire::round_request(data);
    let decoded = merkmail::sync::wire::decode_request(data);
    assert!(
        matches!(decoded, Err(merkmail::sync::wire::WireError::Malformed(_))),
        "{decoded:?}"
    );
}

/// Found by `wire_request` (issue 14, session 8) after 1 129 526 runs: an Apply group for
/// alice's INBOX whose changes end with a `Next` of UIDNEXT 1. A message at or above UIDNEXT
/// was refused, but a record applied after the messages could lower UIDNEXT under them, and
/// `verify` found "UID 1 is not below UIDNEXT 1" for every message of INBOX. The store now
/// checks every mailbox a group touched once its changes are in, and refuses the round.
/// The input is the crash artifact as libFuzzer wrote it.
#[test]
fn uidnext_below_held_uids_from_a_peer_is_refused() {
    let data = include_bytes!("../fuzz/regressions/wire_request-uidnext-below-uids");
    wire::round_request(data);
}

/// Fuzzing `http` (session 11): a round whose first request staged bodies (`PutBodies`) and
/// whose later request was refused answered 400 but kept the staged bodies (the store's body
/// count grew from 5 to 9): a refused request must change nothing. The responder now takes
/// back what the round staged when the round fails. The input is the crash artifact as
/// libFuzzer wrote it.
#[test]
fn a_refused_round_keeps_no_body_it_staged() {
    let data = include_bytes!("../fuzz/regressions/http-staged-bodies-kept-on-400");
    http::check(data);
}
