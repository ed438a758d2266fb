//! Hostile and broken input over HTTP: missing, wrong, misplaced and doubled tokens; truncated,
//! garbage, oversized and deeply nested bodies; malformed framing; names that try to leave the
//! export directory; slow clients; more connections than the cap; and a fake peer that answers
//! a session's rounds with garbage, a truncated body, an error, or stalls mid-answer.
//!
//! Every case checks the same three things: a clear 4xx (or a clear error), no state change
//! (root and counts as before), and a server that keeps serving (`/healthz` and a normal
//! request succeed after it). The harness counts the cases it ran (docs/RELIABILITY.md §4).
//!
//! Loopback only; every read has a timeout and every loop a count.

use merkmail::net::client::ClientConfig;
use merkmail::net::{Limits, ServerState};
use merkmail::store::{NewMessage, Store};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEER: &str = "peer-token-for-hostile-tests";
const ADMIN: &str = "admin-token-for-hostile-tests";

fn message(n: u32) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: hostile {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

/// The in-process server; the methods below are these tests' own.
type Server = common::InProcessServer;

impl Server {
    fn start(store: Arc<Store>, peer: Option<&str>, admin: Option<&str>, limits: Limits) -> Server {
        let state =
            Arc::new(ServerState::new(Arc::clone(&store), peer, limits).with_admin_token(admin));
        Server::spawn(store, state)
    }

    /// Root and counts: what "no state change" compares.
    fn state(&self) -> (String, String) {
        (
            self.store.root().expect("root").hash.to_hex(),
            format!("{:?}", self.store.counters().expect("counters")),
        )
    }

    /// `/healthz` and a normal authorised read both answer 200 on fresh connections.
    #[track_caller]
    fn still_serving(&self, after: &str) {
        let h = exchange(self.addr, &get("/healthz", None), b"", false);
        assert_eq!(h.status, Some(200), "after {after}: /healthz: {h:?}");
        let r = exchange(self.addr, &get("/v1/mail/root", Some(ADMIN)), b"", false);
        assert_eq!(
            r.status,
            Some(200),
            "after {after}: a normal request: {r:?}"
        );
    }
}

fn limits() -> Limits {
    Limits {
        max_append_body: 8192,
        max_sync_body: 1 << 20,
        max_body: 64 << 10,
        max_items: 100,
        header_read_timeout: Duration::from_millis(400),
        request_timeout: Duration::from_millis(600),
        drain_timeout: Duration::from_millis(500),
        max_connections: 32,
    }
}

/// A store with some mail: alice's INBOX (3 messages) and Work (1).
fn seeded() -> Arc<Store> {
    let store = Store::in_memory("hostile").expect("store");
    store.create_mailbox("alice", "Work").expect("Work");
    let batch: Vec<NewMessage> = (1..=3)
        .map(|n| NewMessage {
            bytes: message(n),
            flags: Vec::new(),
            internal_date: 1_700_000_000 + i64::from(n),
            ..NewMessage::default()
        })
        .collect();
    store.append("alice", "INBOX", batch).expect("append");
    store
        .append(
            "alice",
            "Work",
            vec![NewMessage {
                bytes: message(9),
                internal_date: 1_700_000_009,
                ..NewMessage::default()
            }],
        )
        .expect("append");
    Arc::new(store)
}

#[derive(Debug)]
struct Answer {
    /// `None`: the server closed the connection without an answer.
    status: Option<u16>,
    text: String,
}

/// Writes `head` and `body` (then half-closes if asked) and reads until the server closes or
/// 5 s pass. A reset or a refused write still counts as "closed".
fn exchange(addr: SocketAddr, head: &str, body: &[u8], half_close: bool) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

fn parse(buf: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(buf).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok());
    Answer { status, text }
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\r\n")
}

fn post(path: &str, headers: &str, body_len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}Content-Length: {body_len}\r\n\r\n"
    )
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

/// One hostile request and what must come back.
struct Case {
    what: String,
    head: String,
    body: Vec<u8>,
    half_close: bool,
    /// Acceptable statuses; `None` in the list means "closed without an answer".
    expect: Vec<Option<u16>>,
    /// Refused by the router, which always says why in a JSON body; `false` for what hyper
    /// refuses while parsing (a bare `400`, before any route is known).
    json: bool,
}

fn case(what: &str, head: String, body: Vec<u8>, expect: &[u16]) -> Case {
    Case {
        what: what.to_string(),
        head,
        body,
        half_close: false,
        expect: expect.iter().map(|s| Some(*s)).collect(),
        json: true,
    }
}

/// A request hyper refuses while parsing it.
fn framing(what: &str, head: String, body: Vec<u8>, expect: &[Option<u16>]) -> Case {
    Case {
        expect: expect.to_vec(),
        json: false,
        ..case(what, head, body, &[])
    }
}

/// Runs every case against `s`: the status, no state change, still serving. Returns how many.
fn run_cases(s: &Server, cases: Vec<Case>) -> usize {
    let n = cases.len();
    for c in cases {
        let before = s.state();
        let a = exchange(s.addr, &c.head, &c.body, c.half_close);
        assert!(
            c.expect.contains(&a.status),
            "{}: expected {:?}, got {:?}: {}",
            c.what,
            c.expect,
            a.status,
            a.text
        );
        if let (Some(code), true) = (a.status, c.json) {
            if (400..500).contains(&code) {
                assert!(
                    a.text.contains("\"error\""),
                    "{}: a 4xx without a JSON error: {}",
                    c.what,
                    a.text
                );
            }
        }
        assert_eq!(s.state(), before, "{}: the store changed", c.what);
        s.still_serving(&c.what);
    }
    n
}

static CASES: AtomicUsize = AtomicUsize::new(0);

fn counted(n: usize) {
    let total = CASES.fetch_add(n, Ordering::SeqCst) + n;
    eprintln!("hostile cases so far in this process: {total}");
}

// ---------------------------------------------------------------------------------------------
// Tokens.

#[test]
fn tokens_missing_wrong_misplaced_doubled_or_reused_are_refused() {
    let s = Server::start(seeded(), Some(PEER), Some(ADMIN), limits());
    let create = "/v1/mail/users/alice/mailboxes/Evil";
    let round = "/v1/sync/round";
    let sync_ct = "Content-Type: application/x-merkmail-sync\r\n";
    let mut cases = vec![
        case("no token", get("/v1/mail/root", None), vec![], &[401]),
        case(
            "wrong token",
            get("/v1/mail/root", Some("nope")),
            vec![],
            &[401],
        ),
        case(
            "token prefix",
            get("/v1/mail/root", Some(&ADMIN[..10])),
            vec![],
            &[401],
        ),
        case(
            "token with a suffix",
            get("/v1/mail/root", Some(&format!("{ADMIN}x"))),
            vec![],
            &[401],
        ),
        case(
            "token in upper case",
            get("/v1/mail/root", Some(&ADMIN.to_uppercase())),
            vec![],
            &[401],
        ),
        case(
            "peer token on the mail API",
            get("/v1/mail/root", Some(PEER)),
            vec![],
            &[401],
        ),
        case(
            "peer token on a mail write",
            post(create, &bearer(PEER), 0),
            vec![],
            &[401],
        ),
        case(
            "peer token on /v1/sync/start",
            post(
                "/v1/sync/start",
                &format!("{}Content-Type: application/json\r\n", bearer(PEER)),
                2,
            ),
            b"{}".to_vec(),
            &[401],
        ),
        case(
            "admin token on /v1/sync/hello",
            get("/v1/sync/hello", Some(ADMIN)),
            vec![],
            &[401],
        ),
        case(
            "admin token on /v1/sync/round",
            post(round, &format!("{}{sync_ct}", bearer(ADMIN)), 3),
            vec![1, 2, 3],
            &[401],
        ),
        case(
            "admin token on /v1/journal",
            post("/v1/journal", &bearer(ADMIN), 3),
            vec![1, 2, 3],
            &[401],
        ),
        case(
            "admin token on /v1/journal/position",
            get("/v1/journal/position", Some(ADMIN)),
            vec![],
            &[401],
        ),
        case(
            "Basic scheme",
            post(create, &format!("Authorization: Basic {ADMIN}\r\n"), 0),
            vec![],
            &[401],
        ),
        case(
            "Token scheme",
            post(create, &format!("Authorization: Token {ADMIN}\r\n"), 0),
            vec![],
            &[401],
        ),
        case(
            "no space after Bearer",
            post(create, &format!("Authorization: Bearer{ADMIN}\r\n"), 0),
            vec![],
            &[401],
        ),
        case(
            "the token alone",
            post(create, &format!("Authorization: {ADMIN}\r\n"), 0),
            vec![],
            &[401],
        ),
        case(
            "the token in the query",
            post(&format!("{create}?access_token={ADMIN}"), "", 0),
            vec![],
            &[401],
        ),
        case(
            "the token in another header",
            post(create, &format!("X-Token: {ADMIN}\r\n"), 0),
            vec![],
            &[401],
        ),
        case(
            "the token twice in one header",
            post(
                create,
                &format!("Authorization: Bearer {ADMIN} {ADMIN}\r\n"),
                0,
            ),
            vec![],
            &[401],
        ),
        case(
            "two Bearer credentials in one header",
            post(
                create,
                &format!("Authorization: Bearer {ADMIN}, Bearer {ADMIN}\r\n"),
                0,
            ),
            vec![],
            &[401],
        ),
        case(
            "two Authorization headers, both right",
            post(create, &format!("{}{}", bearer(ADMIN), bearer(ADMIN)), 0),
            vec![],
            &[401],
        ),
        case(
            "two Authorization headers, wrong then right",
            post(create, &format!("{}{}", bearer("nope"), bearer(ADMIN)), 0),
            vec![],
            &[401],
        ),
        case(
            "two Authorization headers, right then wrong",
            post(create, &format!("{}{}", bearer(ADMIN), bearer("nope")), 0),
            vec![],
            &[401],
        ),
        case(
            "non-ASCII bytes in the header",
            post(create, "Authorization: Bearer \u{e9}t\u{e9}\r\n", 0),
            vec![],
            &[401],
        ),
        framing(
            "a control character in the header",
            post(
                create,
                &format!("Authorization: Bearer {ADMIN}\u{1}\r\n"),
                0,
            ),
            vec![],
            &[Some(400), Some(401)],
        ),
    ];
    // Unknown routes: the same 401 as known ones.
    for path in [
        "/v1/mail/nothing",
        "/v1/sync/nothing",
        "/v1",
        "/v1/../v1/mail/root",
    ] {
        cases.push(case(
            &format!("{path} without a token"),
            get(path, None),
            vec![],
            &[401],
        ));
    }
    let n = run_cases(&s, cases);

    // Reused on a keep-alive connection: a refused request does not poison the connection,
    // and an admitted one does not authorise the next one on it.
    let before = s.state();
    let mut conn = TcpStream::connect(s.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let keep = |token: Option<&str>, close: bool| {
        let auth = token.map_or(String::new(), bearer);
        let c = if close { "Connection: close\r\n" } else { "" };
        format!("GET /v1/mail/root HTTP/1.1\r\nHost: t\r\n{auth}{c}\r\n")
    };
    let pipelined = format!(
        "{}{}{}",
        keep(Some("nope"), false),
        keep(Some(ADMIN), false),
        keep(None, true)
    );
    conn.write_all(pipelined.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["401", "200", "401"], "{text}");
    assert_eq!(s.state(), before);
    s.still_serving("keep-alive reuse");
    counted(n + 1);
}

#[test]
fn without_an_admin_token_the_mail_api_answers_403_and_the_peer_token_opens_nothing() {
    let s = Server::start(seeded(), Some(PEER), None, limits());
    let cases = vec![
        case("no token", get("/v1/mail/root", None), vec![], &[403]),
        case(
            "the peer token",
            get("/v1/mail/root", Some(PEER)),
            vec![],
            &[403],
        ),
        case(
            "a write with the peer token",
            post("/v1/mail/users/alice/mailboxes/X", &bearer(PEER), 0),
            vec![],
            &[403],
        ),
        case(
            "/v1/sync/start with the peer token",
            post(
                "/v1/sync/start",
                &format!("{}Content-Type: application/json\r\n", bearer(PEER)),
                2,
            ),
            b"{}".to_vec(),
            &[403],
        ),
    ];
    let before = s.state();
    for c in &cases {
        let a = exchange(s.addr, &c.head, &c.body, false);
        assert!(c.expect.contains(&a.status), "{}: {a:?}", c.what);
        assert!(
            a.text.contains("no admin token configured"),
            "{}: {}",
            c.what,
            a.text
        );
        assert_eq!(s.state(), before, "{}", c.what);
    }
    // The peer API still works with the peer token.
    let a = exchange(s.addr, &get("/v1/sync/hello", Some(PEER)), b"", false);
    assert_eq!(a.status, Some(200), "{a:?}");
    counted(cases.len());
}

// ---------------------------------------------------------------------------------------------
// Bodies and framing.

fn chunked(chunks: usize, size: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..chunks {
        body.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        body.extend(std::iter::repeat_n(b'x', size));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn nested(depth: usize) -> Vec<u8> {
    let mut v = b"{\"uids\":".to_vec();
    v.extend(std::iter::repeat_n(b'[', depth));
    v.push(b'1');
    v.extend(std::iter::repeat_n(b']', depth));
    v.push(b'}');
    v
}

#[test]
fn truncated_garbage_oversized_and_nested_bodies_are_refused() {
    let s = Server::start(seeded(), Some(PEER), Some(ADMIN), limits());
    let admin = bearer(ADMIN);
    let json = format!("{admin}Content-Type: application/json\r\n");
    let peer_sync = format!(
        "{}Content-Type: application/x-merkmail-sync\r\n",
        bearer(PEER)
    );
    let peer_journal = format!(
        "{}Content-Type: application/x-merkmail-journal\r\n",
        bearer(PEER)
    );
    let append = "/v1/mail/users/alice/mailboxes/INBOX/messages";
    let expunge = "/v1/mail/users/alice/mailboxes/INBOX/expunge";
    let batch = format!("{admin}Content-Type: application/vnd.merkmail.messages\r\n");
    let with_body = |what: &str, path: &str, headers: &str, body: &[u8], expect: &[u16]| {
        case(what, post(path, headers, body.len()), body.to_vec(), expect)
    };
    let mut cases = vec![
        // Truncated: the client half-closes before its declared length.
        Case {
            half_close: true,
            ..case(
                "append cut short",
                post(append, &admin, 500),
                message(7)[..20].to_vec(),
                &[400],
            )
        },
        Case {
            half_close: true,
            ..case(
                "expunge JSON cut short",
                post(expunge, &json, 100),
                b"{\"uids\":[1,".to_vec(),
                &[400],
            )
        },
        Case {
            half_close: true,
            ..case(
                "session round cut short",
                post("/v1/sync/round", &peer_sync, 1000),
                vec![1, 0, 0],
                &[400],
            )
        },
        with_body("expunge: complete but truncated JSON", expunge, &json, b"{\"uids\":[1,", &[400]),
        // Garbage.
        with_body("expunge: binary garbage", expunge, &json, b"\x00\xff\xfe garbage", &[400]),
        with_body("expunge: not UTF-8", expunge, &json, b"{\"uids\":[1]\xff}", &[400]),
        with_body("expunge: empty body", expunge, &json, b"", &[400]),
        with_body("expunge: a JSON array", expunge, &json, b"[1,2,3]", &[400]),
        with_body("expunge: a string for a UID", expunge, &json, b"{\"uids\":[\"1\"]}", &[400]),
        with_body("expunge: a negative UID", expunge, &json, b"{\"uids\":[-1]}", &[400]),
        with_body("expunge: a UID past u32", expunge, &json, b"{\"uids\":[4294967296]}", &[400]),
        with_body(
            "expunge: a huge number",
            expunge,
            &json,
            b"{\"uids\":[1e999999]}",
            &[400],
        ),
        with_body("expunge: a duplicate key", expunge, &json, b"{\"uids\":[1],\"uids\":[2]}", &[400]),
        with_body("expunge: an unknown field", expunge, &json, b"{\"uids\":[1],\"all\":true}", &[400]),
        with_body("batch: length past the end", append, &batch, &[0, 0, 0, 9, b'x'], &[400]),
        with_body("batch: a 4 GiB length", append, &batch, &[0xff, 0xff, 0xff, 0xff, b'x'], &[400]),
        with_body("batch: a torn length", append, &batch, &[0, 0], &[400]),
        with_body("session round: garbage", "/v1/sync/round", &peer_sync, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", &[400]),
        with_body("session round: empty", "/v1/sync/round", &peer_sync, b"", &[400]),
        with_body("session round: JSON", "/v1/sync/round", &peer_sync, b"{\"root\":1}", &[400]),
        with_body("journal: garbage", "/v1/journal", &peer_journal, b"\x07\xff\xff\xff\xff\xff\xff\xff\xff\x7f", &[400]),
        with_body("journal: empty", "/v1/journal", &peer_journal, b"", &[400]),
        with_body(
            "sync/start: garbage",
            "/v1/sync/start",
            &json,
            b"\x00garbage",
            &[400],
        ),
        // Deeply nested JSON: serde's recursion limit, not a stack overflow.
        with_body("expunge: nested 10 000 deep", expunge, &json, &nested(10_000), &[400]),
        with_body("expunge: nested 30 000 deep", expunge, &json, &nested(30_000), &[400]),
        with_body("sync/start: nested 30 000 deep", "/v1/sync/start", &json, &{
            let mut v = b"{\"peer\":".to_vec();
            v.extend(std::iter::repeat_n(b'[', 30_000));
            v
        }, &[400]),
        // Oversized, declared: refused from the headers before a byte of body is read.
        case("append declared 1 GiB", post(append, &admin, 1 << 30), vec![], &[413]),
        case("expunge declared 1 MiB", post(expunge, &json, 1 << 20), vec![], &[413]),
        case(
            "session round declared 64 MiB",
            post("/v1/sync/round", &peer_sync, 64 << 20),
            vec![],
            &[413],
        ),
        case(
            "journal declared 2^63 bytes",
            post("/v1/journal", &peer_journal, 1 << 63),
            vec![],
            &[413],
        ),
        // Oversized, chunked (no Content-Length): refused while it streams.
        case(
            "append chunked past its limit",
            format!("POST {append} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{admin}Transfer-Encoding: chunked\r\n\r\n"),
            chunked(20, 1000),
            &[413],
        ),
        case(
            "session round chunked past its limit",
            format!("POST /v1/sync/round HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{peer_sync}Transfer-Encoding: chunked\r\n\r\n"),
            chunked(40, 32 << 10),
            &[413],
        ),
        // Oversized with neither Content-Length nor chunked: the body is empty by HTTP/1.1's
        // rules and the bytes after the head are not read as it.
        case(
            "expunge with an undeclared body",
            format!("POST {expunge} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{json}\r\n"),
            vec![b'x'; 200_000],
            &[400],
        ),
        // Malformed framing: hyper refuses these before the router sees them.
        framing(
            "a bad chunk size",
            format!("POST {expunge} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{json}Transfer-Encoding: chunked\r\n\r\n"),
            b"zz\r\nxx\r\n0\r\n\r\n".to_vec(),
            &[Some(400)],
        ),
        framing(
            "two different Content-Lengths",
            format!("POST {expunge} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{json}Content-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            b"abcd".to_vec(),
            &[Some(400)],
        ),
        framing(
            "a negative Content-Length",
            format!("POST {expunge} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{json}Content-Length: -1\r\n\r\n"),
            vec![],
            &[Some(400)],
        ),
        framing(
            "a Content-Length past u64",
            format!("POST {expunge} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{json}Content-Length: 99999999999999999999999\r\n\r\n"),
            vec![],
            &[Some(400)],
        ),
        framing(
            "Content-Length and chunked together",
            format!("POST {expunge} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{json}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            b"5\r\n{\"ui\r\n0\r\n\r\n".to_vec(),
            &[Some(400)],
        ),
        framing(
            "not HTTP at all",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03".to_string(),
            vec![0; 64],
            &[Some(400)],
        ),
        framing(
            "a request line without a version",
            "GET /healthz\r\n\r\n".to_string(),
            vec![],
            &[Some(400)],
        ),
    ];
    // Headers that never end in size: hyper's own buffer cap.
    let mut big = get("/v1/mail/root", Some(ADMIN));
    big.truncate(big.len() - 2);
    big.push_str(&format!("X-Junk: {}\r\n\r\n", "y".repeat(1 << 20)));
    cases.push(framing(
        "a 1 MiB header",
        big,
        vec![],
        &[Some(431), Some(400), None],
    ));
    let mut many = get("/v1/mail/root", Some(ADMIN));
    many.truncate(many.len() - 2);
    for i in 0..2000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    cases.push(framing(
        "2000 headers",
        many,
        vec![],
        &[Some(431), Some(400), None],
    ));
    let n = run_cases(&s, cases);
    counted(n);
}

// ---------------------------------------------------------------------------------------------
// Names.

#[test]
fn names_that_try_to_leave_the_export_directory_are_refused() {
    let s = Server::start(seeded(), Some(PEER), Some(ADMIN), limits());
    let admin = bearer(ADMIN);
    let mut cases = Vec::new();
    let users = [
        "..",
        ".",
        "%2E%2E",
        "al%2Fice",
        "%2Fetc",
        "a%00b",
        "a%0Ab",
        "a%0Db",
        "a%1Bb",
        "a%7Fb",
        "%C0%AE%C0%AE",
        "%FF",
    ];
    for u in users {
        cases.push(case(
            &format!("user {u}: create a mailbox"),
            post(&format!("/v1/mail/users/{u}/mailboxes/X"), &admin, 0),
            vec![],
            &[400],
        ));
        cases.push(case(
            &format!("user {u}: append to INBOX"),
            post(
                &format!("/v1/mail/users/{u}/mailboxes/INBOX/messages"),
                &admin,
                5,
            ),
            b"hello".to_vec(),
            &[400],
        ));
    }
    let long_user = "u".repeat(256);
    cases.push(case(
        "a 256-byte user",
        post(
            &format!("/v1/mail/users/{long_user}/mailboxes/X"),
            &admin,
            0,
        ),
        vec![],
        &[400],
    ));
    let mailboxes = [
        "..",
        ".",
        "..%2Fetc",
        "%2E%2E%2F%2E%2E%2Fetc",
        "%2Fetc%2Fpasswd",
        "a%2F..%2Fb",
        "a%2F.%2Fb",
        "a%2F%2Fb",
        "a%2F",
        "a%00b",
        "a%0Ab",
        "a%09b",
        "a%1Bb",
        "a%7Fb",
        "a%C2%85b",
        "%C0%AE%C0%AE%2Fx",
    ];
    for m in mailboxes {
        cases.push(case(
            &format!("mailbox {m}: create"),
            post(&format!("/v1/mail/users/alice/mailboxes/{m}"), &admin, 0),
            vec![],
            &[400],
        ));
        cases.push(case(
            &format!("mailbox Work renamed to {m}"),
            post(
                &format!("/v1/mail/users/alice/mailboxes/Work/rename?to={m}"),
                &admin,
                0,
            ),
            vec![],
            &[400],
        ));
    }
    let long = "m".repeat(1025);
    cases.push(case(
        "a 1025-byte mailbox",
        post(&format!("/v1/mail/users/alice/mailboxes/{long}"), &admin, 0),
        vec![],
        &[400],
    ));
    let n = run_cases(&s, cases);

    // Names the store takes but a Maildir++ folder cannot hold ('.' is its separator):
    // export refuses them before it writes anything.
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, name) in ["...", "a.b", "x/..y", "INBOX/.hidden"].iter().enumerate() {
        let store = Store::in_memory("export").expect("store");
        store
            .create_mailbox("bob", name)
            .expect("the store takes it");
        let root = tmp.path().join(format!("out{i}"));
        let e = merkmail::maildir::export(&store, "bob", &root, &mut merkmail::model::no_progress)
            .expect_err(name);
        assert!(e.to_string().contains(name), "{name}: {e}");
        let written = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "{name}: export wrote something");
    }
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing was created beside the export roots"
    );
    counted(n + 4);
}

// ---------------------------------------------------------------------------------------------
// Slow clients and too many connections.

#[test]
fn slow_clients_are_cut_off_by_the_deadlines() {
    let s = Server::start(seeded(), Some(PEER), Some(ADMIN), limits());
    let before = s.state();
    // Headers trickled one byte every 50 ms: the header deadline (400 ms) closes the
    // connection long before the 4 s it would take to send them all.
    let head = get("/v1/mail/root", Some(ADMIN));
    let mut conn = TcpStream::connect(s.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut sent = 0;
    let mut answer = Vec::new();
    for b in head.as_bytes().iter().take(80) {
        if conn.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    assert!(
        sent < head.len(),
        "the server waited for all {sent} trickled bytes"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("200 OK"), "{text}");
    s.still_serving("trickled headers");

    // A body trickled one byte every 50 ms: the request deadline (600 ms) answers 408.
    let expunge = "/v1/mail/users/alice/mailboxes/INBOX/expunge";
    let body = b"{\"uids\":[1]}                                        ";
    let head = post(
        expunge,
        &format!("{}Content-Type: application/json\r\n", bearer(ADMIN)),
        body.len(),
    );
    let mut conn = TcpStream::connect(s.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    conn.write_all(head.as_bytes()).expect("head");
    let mut answer = Vec::new();
    for b in body.iter() {
        if conn.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = conn.read_to_end(&mut answer);
    let a = parse(&answer);
    assert_eq!(a.status, Some(408), "{a:?}");
    assert_eq!(s.state(), before, "the trickled expunge changed something");
    s.still_serving("a trickled body");
    counted(2);
}

#[test]
fn connections_past_the_cap_wait_and_are_served_when_a_slot_frees() {
    let store = seeded();
    let s = Server::start(
        store,
        Some(PEER),
        Some(ADMIN),
        Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(10),
            ..limits()
        },
    );
    let before = s.state();
    // Four idle connections hold every slot (they sent nothing yet).
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(s.addr).expect("connect"))
        .collect();
    // Give the server the chance to accept all four (bounded).
    std::thread::sleep(Duration::from_millis(200));
    // A fifth, and more: they connect (the kernel's queue) but get no answer while the four
    // hold their slots.
    let mut waiting: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).expect("connect");
            c.write_all(get("/healthz", None).as_bytes())
                .expect("write");
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            c
        })
        .collect();
    let mut answered = 0;
    for c in &mut waiting {
        let mut buf = [0u8; 64];
        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
            answered += 1;
        }
    }
    assert_eq!(answered, 0, "a connection past the cap was served");
    // Each idle connection closed frees a slot: every waiting one is answered 200 then.
    idle.clear();
    let mut ok = 0;
    for mut c in waiting {
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        if parse(&buf).status == Some(200) {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(s.state(), before);
    s.still_serving("the connection cap");
    counted(1);
}

// ---------------------------------------------------------------------------------------------
// A fake peer: forwards a session's rounds to a real server, and at round k answers with
// garbage, a truncated body, an error, or stalls mid-answer.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Garbage,
    Truncated,
    Stall,
    ServerError,
}

/// A tiny HTTP/1.1 proxy on 127.0.0.1 (raw tokio sockets, `Content-Length` bodies only, as
/// merkmail's client sends them). Request `fault_at` (counting from 0) is forwarded, then its
/// answer is replaced by `fault`. Counts the requests it saw.
struct FakePeer {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

/// A one-worker runtime for a fake peer and the loopback listener it serves on.
fn fake_peer_socket() -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (runtime, listener, addr)
}

impl FakePeer {
    fn start(upstream: String, fault: Option<(usize, Fault)>) -> FakePeer {
        let (runtime, listener, addr) = fake_peer_socket();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let client =
            merkmail::net::client::Client::new(&upstream, Some(PEER), ClientConfig::default())
                .expect("upstream client");
        runtime.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let client = client.clone();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let _ = proxy_connection(conn, client, counter, fault).await;
                });
            }
        });
        FakePeer {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn proxy_connection(
    mut conn: tokio::net::TcpStream,
    client: merkmail::net::client::Client,
    counter: Arc<AtomicUsize>,
    fault: Option<(usize, Fault)>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    // At most 1000 requests on one connection; each read has a 10 s bound.
    for _ in 0..1000 {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("idle"))??;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let first = lines.next().unwrap_or_default().to_string();
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut length = 0usize;
        let mut content_type = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("content-type") {
                    content_type = Some(v.trim().to_string());
                }
            }
        }
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("idle"))??;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let index = counter.fetch_add(1, Ordering::SeqCst);
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap_or(hyper::Method::GET);
        let (status, answer) = match client
            .request(method, &path, content_type.as_deref(), body.into())
            .await
        {
            Ok(pair) => pair,
            Err(_) => (hyper::StatusCode::BAD_GATEWAY, bytes::Bytes::new()),
        };
        let ct = "application/x-merkmail-sync";
        match fault {
            Some((at, f)) if at == index => {
                match f {
                    Fault::Garbage => {
                        let junk = b"\xff\x00garbage that is no reply\xfe";
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                            junk.len()
                        );
                        conn.write_all(head.as_bytes()).await?;
                        conn.write_all(junk).await?;
                    }
                    Fault::Truncated => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                            answer.len() + 100
                        );
                        conn.write_all(head.as_bytes()).await?;
                        conn.write_all(&answer[..answer.len() / 2]).await?;
                    }
                    Fault::Stall => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                            answer.len()
                        );
                        conn.write_all(head.as_bytes()).await?;
                        conn.write_all(&answer[..answer.len() / 2]).await?;
                        // Longer than the client's deadline; bounded all the same.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Fault::ServerError => {
                        let body = b"<html>proxy error</html>";
                        let head = format!(
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        conn.write_all(head.as_bytes()).await?;
                        conn.write_all(body).await?;
                    }
                }
                conn.shutdown().await?;
                return Ok(());
            }
            _ => {
                let head = format!(
                    "HTTP/1.1 {} {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("?"),
                    answer.len()
                );
                conn.write_all(head.as_bytes()).await?;
                conn.write_all(&answer).await?;
            }
        }
    }
    Ok(())
}

/// The local side (a store of its own) and a peer server (another store), different mail on
/// each, so a session has work in every phase.
fn two_sides() -> (Store, Server) {
    let local = Store::in_memory("local").expect("local");
    let one = |n: u32| NewMessage {
        bytes: message(n),
        internal_date: 1_700_000_000,
        ..NewMessage::default()
    };
    local
        .append("alice", "INBOX", vec![one(1), one(2)])
        .expect("local mail");
    local.create_mailbox("alice", "Local").expect("mailbox");
    let remote = Store::in_memory("remote").expect("remote");
    remote
        .append("alice", "INBOX", vec![one(1), one(3)])
        .expect("remote mail");
    remote
        .append("bob", "INBOX", vec![one(4)])
        .expect("remote mail");
    let server = Server::start(Arc::new(remote), Some(PEER), Some(ADMIN), limits());
    (local, server)
}

fn session(local: &Store, url: &str) -> Result<merkmail::sync::SyncReport, String> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    merkmail::net::sync::sync_with_peer_using(local, url, Some(PEER), false, config)
        .map_err(|e| e.to_string())
}

#[test]
fn a_peer_that_answers_garbage_truncates_errs_or_stalls_ends_the_session_cleanly() {
    // How many rounds a clean session takes.
    let (local, peer) = two_sides();
    let clean = FakePeer::start(peer.url(), None);
    let report = session(&local, &clean.url()).expect("a clean session");
    assert!(report.equal_after, "{report:?}");
    let rounds = clean.seen.load(Ordering::SeqCst);
    assert!(
        rounds >= 3,
        "a session with work takes several rounds: {rounds}"
    );
    drop((local, peer, clean));

    let mut tried = 0;
    for fault in [
        Fault::Garbage,
        Fault::Truncated,
        Fault::Stall,
        Fault::ServerError,
    ] {
        for at in 0..rounds {
            let what = format!("{fault:?} at round {at} of {rounds}");
            let (local, peer) = two_sides();
            let (local_before, peer_before) = (local.root().expect("root").hash, peer.state());
            let fake = FakePeer::start(peer.url(), Some((at, fault)));
            let e = session(&local, &fake.url()).expect_err(&what);
            assert!(
                e.contains(&fake.url()) || e.contains("decode") || e.contains("wire"),
                "{what}: {e}"
            );
            // Nothing half-applied: both stores' trees equal their records.
            let v = local.verify().expect("verify local");
            assert!(v.is_ok(), "{what}: local store: {v:?}");
            let v = peer.store.verify().expect("verify peer");
            assert!(v.is_ok(), "{what}: peer store: {v:?}");
            // Before the last round (the peer's Apply) neither side changed at all.
            if at + 1 < rounds {
                assert_eq!(
                    local.root().expect("root").hash,
                    local_before,
                    "{what}: local changed"
                );
                assert_eq!(peer.state(), peer_before, "{what}: the peer changed");
            }
            peer.still_serving(&what);
            // A clean session afterwards converges.
            let report = session(&local, &peer.url()).expect("a clean session after the fault");
            assert!(report.equal_after, "{what}: {report:?}");
            assert_eq!(
                local.root().expect("root").hash.to_hex(),
                peer.state().0,
                "{what}"
            );
            tried += 1;
        }
    }
    counted(tried);
}

// ---------------------------------------------------------------------------------------------
// The journal shipper against a peer that misbehaves: the real binary, a fake peer that
// answers every request the same wrong way.

mod common;

#[derive(Clone, Copy, Debug)]
enum PeerFault {
    Garbage,
    Truncated,
    Stall,
    ServerError,
    /// A well-formed acknowledgement of far more than was sent.
    LyingAck,
}

/// Answers every request with `fault`; counts `POST /v1/journal` requests.
fn faulty_peer(fault: PeerFault) -> (SocketAddr, Arc<AtomicUsize>, tokio::runtime::Runtime) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (runtime, listener, addr) = fake_peer_socket();
    let journals = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&journals);
    runtime.spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                // Read the head (and whatever body came with it), bounded.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                for _ in 0..1000 {
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                if buf.starts_with(b"POST /v1/journal ") {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let json = "application/json";
                let (head, body): (String, Vec<u8>) = match fault {
                    PeerFault::Garbage => (
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {json}\r\nContent-Length: 9\r\n\r\n"),
                        b"\xff{garbage".to_vec(),
                    ),
                    PeerFault::Truncated => (
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {json}\r\nContent-Length: 500\r\n\r\n"),
                        b"{\"node\":\"fake\",\"ack".to_vec(),
                    ),
                    PeerFault::Stall => (
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {json}\r\nContent-Length: 500\r\n\r\n"),
                        b"{\"node\":".to_vec(),
                    ),
                    PeerFault::ServerError => (
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\n".to_string(),
                        b"oops".to_vec(),
                    ),
                    PeerFault::LyingAck => {
                        let body = b"{\"node\":\"fake\",\"acked\":999999999}".to_vec();
                        (
                            format!("HTTP/1.1 200 OK\r\nContent-Type: {json}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                            body,
                        )
                    }
                };
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
                if matches!(fault, PeerFault::Stall) {
                    // Longer than the test waits; bounded all the same.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, journals, runtime)
}

fn status_json(url: &str) -> serde_json::Value {
    let c = merkmail::net::client::BlockingClient::new(url, None, ClientConfig::default())
        .expect("client");
    let (_, body) = c.get("/status").expect("status");
    serde_json::from_slice(&body).expect("status JSON")
}

#[test]
fn a_peer_that_garbles_truncates_stalls_errs_or_lies_to_the_shipper_moves_nothing() {
    use std::io::BufRead;
    let tmp = common::scratch_dir();
    let mut tried = 0;
    for fault in [
        PeerFault::Garbage,
        PeerFault::Truncated,
        PeerFault::Stall,
        PeerFault::ServerError,
        PeerFault::LyingAck,
    ] {
        let what = format!("{fault:?}");
        let (fake, journals, runtime) = faulty_peer(fault);
        let data = tmp.path().join(format!("{fault:?}"));
        let fake_url = format!("http://{fake}");
        // A short shutdown budget: the stalled shipper is abandoned after it.
        let config = tmp.path().join(format!("{fault:?}.toml"));
        std::fs::write(&config, "shutdown_timeout_ms = 1000\n").expect("config");
        let mut cmd = common::command([
            "serve",
            "--config",
            &config.display().to_string(),
            "--data",
            &data.display().to_string(),
            "--node-id",
            "a",
            "--listen",
            "127.0.0.1:0",
            "--token",
            PEER,
            "--admin-token",
            ADMIN,
            "--peer",
            &fake_url,
        ]);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut guard = common::ChildGuard::from_child(child);
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let addr = common::listening_addr(&line).unwrap_or_else(|| panic!("{what}: {line:?}"));
        let url = format!("http://{addr}");
        let mail = merkmail::net::remote::MailClient::new(&url, Some(ADMIN)).expect("client");
        mail.append("alice", "INBOX", vec![message(1), message(2)], &[], 1)
            .expect("append");
        let root = mail.root().expect("root").root;
        // Wait (bounded) until the shipper has tried at least twice.
        let deadline = Instant::now() + Duration::from_secs(20);
        let retries = !matches!(fault, PeerFault::Stall | PeerFault::LyingAck);
        while retries && journals.load(Ordering::SeqCst) < 2 {
            assert!(
                Instant::now() < deadline,
                "{what}: the shipper never retried"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        while journals.load(Ordering::SeqCst) < 1 {
            assert!(
                Instant::now() < deadline,
                "{what}: the shipper never shipped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let peer = status_json(&url)["peers"][0].clone();
        let journal = &peer["journal"];
        match fault {
            PeerFault::LyingAck => {
                // The lie moved the cursor no further than what was sent; a new write is
                // shipped again.
                let sent = journals.load(Ordering::SeqCst);
                mail.append("alice", "INBOX", vec![message(3)], &[], 1)
                    .expect("append");
                let deadline = Instant::now() + Duration::from_secs(20);
                while journals.load(Ordering::SeqCst) <= sent {
                    assert!(
                        Instant::now() < deadline,
                        "{what}: the next write was not shipped"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            PeerFault::Stall => {
                assert_eq!(journal["depth"], 1, "{what}: {peer}");
                assert_eq!(mail.root().expect("root").root, root, "{what}");
            }
            _ => {
                // One journal entry (the batch append touched one mailbox), never acknowledged.
                assert_eq!(journal["depth"], 1, "{what}: nothing acknowledged: {peer}");
                assert!(
                    journal["ship_failures_total"].as_u64().unwrap_or(0) >= 1,
                    "{what}: {peer}"
                );
                assert_eq!(mail.root().expect("root").root, root, "{what}");
            }
        }
        // Still serving.
        let h = exchange(
            addr.parse().expect("addr"),
            &get("/healthz", None),
            b"",
            false,
        );
        assert_eq!(h.status, Some(200), "{what}");
        assert_eq!(
            mail.list_messages("alice", None).map(|m| m.len()).ok(),
            Some(if matches!(fault, PeerFault::LyingAck) {
                3
            } else {
                2
            }),
            "{what}"
        );
        // SIGTERM: a clean exit, even with a shipper stuck on a stalled peer.
        common::stop_serve(&what, &mut guard, Duration::from_secs(30));
        drop(runtime);
        tried += 1;
    }
    counted(tried);
}
