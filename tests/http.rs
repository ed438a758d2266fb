//! The HTTP surface: the server started in this process on 127.0.0.1 port 0 (auth, limits,
//! bad input, every mail route, graceful shutdown, the client's errors), and the real
//! `merkmail serve` driven by the remote CLI, whose output must equal the local CLI's.
//!
//! Loopback only; every wait is bounded (a few seconds at most), every loop counted.

mod common;

use common::Raw;
use merkmail::model::{parse_flag_list, FlagOp};
use merkmail::net::client::{BlockingClient, ClientConfig, ClientError};
use merkmail::net::json::{MailboxView, MessageView, RootView, StatsView};
use merkmail::net::remote::MailClient;
use merkmail::net::{Limits, ServerState};
use merkmail::store::Store;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "correct horse battery staple";

fn message(n: u32) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// An in-process server on its own runtime thread, so tests can use blocking clients and raw
// sockets alike.

/// The in-process server; the methods below are these tests' own.
type TestServer = common::InProcessServer;

impl TestServer {
    fn start(token: Option<&str>, limits: Limits) -> TestServer {
        let store = Arc::new(Store::in_memory("http-test").expect("in-memory store"));
        // One token for both APIs here (a config refuses that; these tests are about auth
        // in general, tests/hostile.rs about the two tokens apart).
        let state =
            Arc::new(ServerState::new(Arc::clone(&store), token, limits).with_admin_token(token));
        TestServer::spawn(store, state)
    }

    fn open() -> TestServer {
        TestServer::start(None, Limits::default())
    }

    fn client(&self, token: Option<&str>) -> BlockingClient {
        BlockingClient::new(&self.url(), token, ClientConfig::default()).expect("client")
    }

    fn mail(&self, token: Option<&str>) -> MailClient {
        MailClient::new(&self.url(), token).expect("mail client")
    }

    fn root(&self) -> String {
        self.store.root().expect("root").hash.to_hex()
    }
}

fn small_limits() -> Limits {
    Limits {
        max_append_body: 4096,
        max_sync_body: 2048,
        max_body: 1024,
        max_items: 5,
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(400),
        drain_timeout: Duration::from_millis(500),
        max_connections: 16,
    }
}

/// One raw HTTP/1.1 exchange: writes `head` and `body`, optionally half-closes, then reads
/// until the server closes (the request says `Connection: close`) or 5 s pass.
fn raw(addr: SocketAddr, head: &str, body: &[u8], half_close: bool) -> Raw {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    if half_close {
        s.shutdown(Shutdown::Write).expect("half close");
    }
    let mut buf = Vec::new();
    // A reset after the answer (we may not have sent all we declared) ends the read too.
    let _ = s.read_to_end(&mut buf);
    Raw::parse(&buf)
}

fn request(method: &str, path: &str, extra: &str, content_length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}Content-Length: {content_length}\r\n\r\n"
    )
}

fn status_of(result: Result<(hyper::StatusCode, bytes::Bytes), ClientError>) -> u16 {
    result.expect("an answer").0.as_u16()
}

fn error_of(answer: (hyper::StatusCode, bytes::Bytes)) -> (u16, String) {
    let v: Value = serde_json::from_slice(&answer.1).unwrap_or_else(|e| {
        panic!(
            "{}: not JSON ({e}): {:?}",
            answer.0,
            String::from_utf8_lossy(&answer.1)
        )
    });
    let error = v["error"].as_str().expect("error field").to_string();
    (answer.0.as_u16(), error)
}

// ---------------------------------------------------------------------------------------------
// Auth.

#[test]
fn healthz_answers_without_a_token() {
    let s = TestServer::start(Some(TOKEN), Limits::default());
    let (status, body) = s.client(None).get("/healthz").expect("answer");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    assert_eq!(
        status_of(s.client(None).post("/healthz", "text/plain", vec![])),
        405
    );
}

#[test]
fn every_v1_route_needs_the_token_and_a_refusal_says_nothing() {
    let s = TestServer::start(Some(TOKEN), Limits::default());
    s.store
        .create_mailbox("alice", "Work")
        .expect("create mailbox");
    let before = s.root();
    let paths = [
        "/v1/mail/root",
        "/v1/mail/stats",
        "/v1/mail/users/alice/mailboxes",
        "/v1/mail/users/nobody/messages",
        "/v1/mail/no/such/route",
        "/v1/sync/root",
        "/v1/nothing",
    ];
    let mut refusals = Vec::new();
    for path in paths {
        for token in [None, Some("wrong"), Some("correct horse battery stapl")] {
            let answer = s.client(token).get(path).expect("answer");
            assert_eq!(answer.0.as_u16(), 401, "{path} with {token:?}");
            refusals.push(answer.1);
        }
    }
    // A write without the token changes nothing.
    let answer = s
        .client(Some("wrong"))
        .post("/v1/mail/users/alice/mailboxes/New", "text/plain", vec![])
        .expect("answer");
    assert_eq!(answer.0.as_u16(), 401);
    refusals.push(answer.1);
    assert_eq!(s.root(), before);
    // Missing and wrong tokens, known and unknown routes: one body, byte for byte.
    assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{refusals:?}");
    let v: Value = serde_json::from_slice(&refusals[0]).expect("JSON");
    assert!(v["error"].as_str().expect("error").contains("unauthorized"));
    // The header carries WWW-Authenticate; a scheme other than Bearer is refused too.
    let r = raw(
        s.addr,
        &request(
            "GET",
            "/v1/mail/root",
            &format!("Authorization: Basic {TOKEN}\r\n"),
            0,
        ),
        b"",
        false,
    );
    assert_eq!(r.status, 401);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.head
    );

    // The right token opens every route.
    let ok = s.client(Some(TOKEN));
    assert_eq!(status_of(ok.get("/v1/mail/root")), 200);
    assert_eq!(status_of(ok.get("/v1/mail/users/alice/mailboxes")), 200);
    assert_eq!(status_of(ok.get("/v1/mail/users/nobody/messages")), 404);
    assert_eq!(status_of(ok.get("/v1/mail/no/such/route")), 404);
    assert_eq!(status_of(ok.get("/v1/nothing")), 404);
    let r = raw(
        s.addr,
        &request(
            "GET",
            "/v1/mail/root",
            &format!("Authorization: bearer {TOKEN}\r\n"),
            0,
        ),
        b"",
        false,
    );
    assert_eq!(r.status, 200, "the scheme name is case-insensitive");
}

#[test]
fn without_a_configured_token_v1_is_open() {
    let s = TestServer::open();
    assert_eq!(status_of(s.client(None).get("/v1/mail/root")), 200);
    assert_eq!(
        status_of(s.client(Some("anything")).get("/v1/mail/root")),
        200
    );
}

#[test]
fn the_peer_hook_sits_behind_auth_and_its_body_limit() {
    let s = TestServer::start(Some(TOKEN), small_limits());
    let c = s.client(Some(TOKEN));
    let (status, error) = error_of(
        c.post("/v1/sync/root", "application/octet-stream", vec![1, 2, 3])
            .expect("answer"),
    );
    assert_eq!(status, 404, "{error}");
    let (status, _) = error_of(
        c.post("/v1/sync/root", "application/octet-stream", vec![0; 2049])
            .expect("answer"),
    );
    assert_eq!(status, 413);
}

// ---------------------------------------------------------------------------------------------
// The mail API, through the typed client the CLI uses.

#[test]
fn every_mail_route_does_what_the_store_does() {
    let s = TestServer::start(Some(TOKEN), Limits::default());
    let m = s.mail(Some(TOKEN));
    let seen = parse_flag_list("\\Seen,$Label1").expect("flags");

    // One message as the raw body; several as one batch.
    assert_eq!(
        m.append("alice", "INBOX", vec![message(1)], &seen, 1_700_000_000)
            .expect("append one"),
        [1]
    );
    assert_eq!(
        m.append(
            "alice",
            "INBOX",
            vec![message(2), message(3), Vec::new()],
            &[],
            7
        )
        .expect("append batch"),
        [2, 3, 4]
    );
    let odd = "Ünï côde & more+%?#/x y";
    let guid = m.create_mailbox("alice", odd).expect("create");
    assert_eq!(
        m.append("alice", odd, vec![message(4)], &[], 9)
            .expect("append to odd"),
        [1]
    );
    assert_eq!(m.fetch("alice", odd, 1).expect("fetch"), message(4));
    assert_eq!(m.fetch("alice", "INBOX", 4).expect("fetch empty"), b""[..]);

    let mailboxes = m.list_mailboxes("alice").expect("mailboxes");
    let local: Vec<MailboxView> = s
        .store
        .list_mailboxes("alice")
        .expect("local")
        .into_iter()
        .map(MailboxView::from)
        .collect();
    assert_eq!(mailboxes, local);
    assert!(mailboxes.iter().any(|mb| mb.guid == guid && mb.name == odd));

    let listed = m.list_messages("alice", None).expect("list");
    let local: Vec<MessageView> = s
        .store
        .list_messages("alice", None)
        .expect("local")
        .iter()
        .map(MessageView::of)
        .collect();
    assert_eq!(listed, local);
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].flags, ["\\Seen"]);
    assert_eq!(listed[0].keywords, ["$Label1"]);
    assert_eq!(listed[0].internal_date, 1_700_000_000);
    assert_eq!(m.list_messages("alice", Some(odd)).expect("one").len(), 1);

    let flags = parse_flag_list("\\Flagged,Junk").expect("flags");
    assert_eq!(
        m.set_flags("alice", "INBOX", 1, FlagOp::Add, &flags)
            .expect("add"),
        ["$Label1", "Junk", "\\Flagged", "\\Seen"]
    );
    assert_eq!(
        m.set_flags("alice", "INBOX", 1, FlagOp::Remove, &seen)
            .expect("remove"),
        ["Junk", "\\Flagged"]
    );
    assert_eq!(
        m.set_flags("alice", "INBOX", 1, FlagOp::Set, &[])
            .expect("set"),
        Vec::<String>::new()
    );
    assert_eq!(m.expunge("alice", "INBOX", &[2, 3]).expect("expunge"), 2);

    m.rename_mailbox("alice", odd, "Archive/2024")
        .expect("rename");
    assert_eq!(
        m.fetch("alice", "Archive/2024", 1).expect("fetch"),
        message(4)
    );
    m.delete_mailbox("alice", "Archive/2024").expect("delete");

    let root: RootView = m.root().expect("root");
    assert_eq!(root.root, s.root());
    assert_eq!(root.messages, 2);
    let stats: StatsView = m.stats().expect("stats");
    assert_eq!(stats, StatsView::of(&s.store).expect("local stats"));
    assert_eq!(stats.messages, 2);
    s.store
        .verify()
        .map(|r| assert!(r.is_ok(), "{:?}", r.problems))
        .expect("verify");
}

#[test]
fn store_errors_map_to_404_409_and_400_and_change_nothing() {
    let s = TestServer::open();
    let m = s.mail(None);
    m.append("alice", "INBOX", vec![message(1)], &[], 1)
        .expect("append");
    m.create_mailbox("alice", "Work").expect("create");
    let before = s.root();
    let cases: Vec<(u16, &str, Result<(), ClientError>)> = vec![
        (
            404,
            "unknown user",
            m.list_messages("nobody", None).map(drop),
        ),
        (404, "unknown user", m.list_mailboxes("bob").map(drop)),
        (
            404,
            "no mailbox",
            m.list_messages("alice", Some("Nope")).map(drop),
        ),
        (404, "UID 9", m.fetch("alice", "INBOX", 9).map(drop)),
        (404, "UID 9", m.expunge("alice", "INBOX", &[1, 9]).map(drop)),
        (
            404,
            "no mailbox",
            m.append("alice", "Nope", vec![message(2)], &[], 1)
                .map(drop),
        ),
        (404, "no mailbox", m.rename_mailbox("alice", "Nope", "Yes")),
        (
            409,
            "already has a mailbox",
            m.create_mailbox("alice", "Work").map(drop),
        ),
        (
            400,
            "INBOX cannot be deleted",
            m.delete_mailbox("alice", "INBOX"),
        ),
        (
            400,
            "mailbox name",
            m.create_mailbox("alice", "a//b").map(drop),
        ),
        (400, "user name", m.list_mailboxes("a/b").map(drop)),
    ];
    for (status, needle, result) in cases {
        let e = result.expect_err(needle);
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status), "{e}");
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        assert!(
            e.to_string().contains(&s.url()),
            "{e} does not name the URL"
        );
    }
    assert_eq!(s.root(), before, "a refused request changed the store");
}

#[test]
fn malformed_requests_are_400_with_a_reason_and_change_nothing() {
    let s = TestServer::start(None, small_limits());
    let m = s.mail(None);
    m.append("alice", "INBOX", vec![message(1)], &[], 1)
        .expect("seed");
    let before = s.root();
    let c = s.client(None);
    let inbox = "/v1/mail/users/alice/mailboxes/INBOX";
    let check = |what: &str, answer, needle: &str| {
        let (status, error) = error_of(answer);
        assert_eq!(status, 400, "{what}: {error}");
        assert!(error.contains(needle), "{what}: {error:?} lacks {needle:?}");
    };

    // Append: the query names flags and the date, nothing else, each once, well-formed.
    for (query, needle) in [
        ("colour=red", "colour"),
        ("date=yesterday", "date"),
        ("date=1&date=2", "more than once"),
        ("flags=%5CRecent", "Recent"),
        ("flags=%5CBogus", "Bogus"),
        ("flags=%FF", "UTF-8"),
    ] {
        let path = format!("{inbox}/messages?{query}");
        let answer = c.post(&path, "message/rfc822", message(2));
        check(&path, answer.expect("answer"), needle);
    }
    // A batch body that is not one.
    let batch = "application/vnd.merkmail.messages";
    for (body, needle) in [(&[0, 0, 0, 9, b'x'][..], "truncated"), (&[], "no message")] {
        let answer = c.post(&format!("{inbox}/messages"), batch, body.to_vec());
        check("batch", answer.expect("answer"), needle);
    }
    // Flags: exactly one of add, remove, set, with valid flags, on a numeric UID.
    for (tail, needle) in [
        ("1/flags", "exactly one"),
        ("1/flags?add=a&set=b", "exactly one"),
        ("1/flags?add=a%20b", "keyword"),
        ("one/flags?add=a", "UID"),
        ("4294967296/flags?add=a", "UID"),
    ] {
        let path = format!("{inbox}/messages/{tail}");
        check(
            &path,
            c.post(&path, "text/plain", vec![]).expect("answer"),
            needle,
        );
    }
    // Expunge: a JSON object with a non-empty list of UIDs and nothing else.
    for (body, needle) in [
        (&b"{\"uids\": [1,"[..], "JSON"),
        (b"\x00\xffgarbage", "JSON"),
        (b"{\"uids\": [\"1\"]}", "JSON"),
        (b"{\"uids\": [1], \"all\": true}", "all"),
        (b"{\"uids\": []}", "empty"),
    ] {
        let answer = c.post(
            &format!("{inbox}/expunge"),
            "application/json",
            body.to_vec(),
        );
        check("expunge", answer.expect("answer"), needle);
    }
    let answer = c.post(
        &format!("{inbox}/expunge?now=1"),
        "application/json",
        b"{\"uids\":[1]}".to_vec(),
    );
    check("expunge?now", answer.expect("answer"), "now");
    // Rename needs ?to=, and INBOX is not renamed.
    let answer = c.post(&format!("{inbox}/rename"), "text/plain", vec![]);
    check("rename", answer.expect("answer"), "to");
    let answer = c.post(&format!("{inbox}/rename?to=Other"), "text/plain", vec![]);
    check("rename INBOX", answer.expect("answer"), "INBOX");
    // Paths and queries that do not decode, and parameters a route does not take.
    for (path, needle) in [
        ("/v1/mail/users/%FF/messages", "UTF-8"),
        ("/v1/mail/root?verbose=1", "verbose"),
        ("/v1/mail/users/alice/mailboxes/INBOX/messages/-1", "UID"),
    ] {
        check(path, c.get(path).expect("answer"), needle);
    }
    assert_eq!(s.root(), before, "a refused request changed the store");
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let s = TestServer::open();
    let c = s.client(None);
    for path in [
        "/index.html",
        "/v2/mail/root",
        "/v1/mail/",
        "/v1/mail/users/a",
        "/v1/mail/root/x",
        "/metrics/x",
    ] {
        let (status, _) = error_of(c.get(path).expect("answer"));
        assert_eq!(status, 404, "{path}");
    }
    let bodiless =
        |method: &str, path: &str| raw(s.addr, &request(method, path, "", 0), b"", false);
    // The operator routes answer GET only.
    for path in ["/", "/status", "/metrics", "/healthz"] {
        assert_eq!(bodiless("POST", path).status, 405, "{path}");
    }
    let r = bodiless("PUT", "/v1/mail/root");
    assert_eq!(r.status, 405);
    assert!(
        r.head.contains("allow: GET") || r.head.contains("Allow: GET"),
        "{}",
        r.head
    );
    let r = bodiless("GET", "/v1/mail/users/a/mailboxes/INBOX/expunge");
    assert_eq!(r.status, 405);
    assert!(r.error().contains("POST"), "{}", r.error());
    let r = bodiless("DELETE", "/v1/mail/users/a/mailboxes/INBOX/messages");
    assert_eq!(r.status, 405);
}

// ---------------------------------------------------------------------------------------------
// Limits and deadlines.

#[test]
fn oversize_bodies_are_413_before_and_while_they_stream() {
    let s = TestServer::start(None, small_limits());
    let before = s.root();
    let append = "/v1/mail/users/alice/mailboxes/INBOX/messages";

    // Declared too large: refused from the headers alone, without sending a byte of body.
    let r = raw(s.addr, &request("POST", append, "", 1 << 20), b"", false);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("4096"), "{}", r.error());

    // Chunked, so the size shows only while it streams.
    let chunk = vec![b'x'; 1000];
    let mut body = Vec::new();
    for _ in 0..5 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST {append} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let r = raw(s.addr, &head, &body, false);
    assert_eq!(r.status, 413);

    // The other routes have the small limit; an append just under its limit is fine.
    let c = s.client(None);
    let (status, _) = error_of(
        c.post(
            "/v1/mail/users/alice/mailboxes/INBOX/expunge",
            "application/json",
            vec![b' '; 1025],
        )
        .expect("answer"),
    );
    assert_eq!(status, 413);
    assert_eq!(s.root(), before);
    assert_eq!(
        status_of(c.post(append, "message/rfc822", vec![b'y'; 4096])),
        201
    );

    // A body far over the limit: the server answers 413 and closes while the client is still
    // writing, so the client may see the 413 or a broken connection, which it then explains.
    match c.post(append, "message/rfc822", vec![b'z'; 4 << 20]) {
        Ok((status, _)) => assert_eq!(status.as_u16(), 413),
        Err(e) => assert!(
            e.to_string().contains("may refuse a body this large"),
            "{e}"
        ),
    }
    assert_eq!(s.store.list_messages("alice", None).expect("list").len(), 1);
}

#[test]
fn lists_over_the_item_limit_are_refused_whole() {
    let s = TestServer::start(None, small_limits());
    let m = s.mail(None);
    let six: Vec<Vec<u8>> = (1..=6).map(message).collect();
    let e = m
        .append("alice", "INBOX", six.clone(), &[], 1)
        .expect_err("6 messages > 5");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(413), "{e}");
    assert!(
        s.store.users().expect("users").is_empty(),
        "nothing appended"
    );
    assert_eq!(
        m.append("alice", "INBOX", six[..5].to_vec(), &[], 1)
            .expect("5 is fine"),
        [1, 2, 3, 4, 5]
    );
    let before = s.root();
    let e = m
        .expunge("alice", "INBOX", &[1, 2, 3, 4, 5, 1])
        .expect_err("6 UIDs > 5");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(413), "{e}");
    assert_eq!(s.root(), before);
}

#[test]
fn a_truncated_body_is_refused_and_changes_nothing() {
    let s = TestServer::start(None, small_limits());
    let before = s.root();
    let append = "/v1/mail/users/alice/mailboxes/INBOX/messages";
    let sent = &message(1)[..20];

    // The client stops sending and closes its side: the body ended early.
    let r = raw(s.addr, &request("POST", append, "", 200), sent, true);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("ended"), "{}", r.error());

    // The client stops sending and waits: the request deadline (400 ms here) answers 408.
    let start = Instant::now();
    let r = raw(s.addr, &request("POST", append, "", 200), sent, false);
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_eq!(s.root(), before);
    assert!(s.store.users().expect("users").is_empty());
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let s = TestServer::start(None, small_limits());
    let mut conn = TcpStream::connect(s.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .expect("write");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    // Whatever hyper said (a 408 or nothing), it was not an answer to the request.
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

// ---------------------------------------------------------------------------------------------
// Shutdown.

/// A server whose requests may take `request_timeout`, and whose shutdown waits up to
/// `drain_timeout` for those in flight.
fn draining_server(request_timeout: Duration, drain_timeout: Duration) -> TestServer {
    let mut limits = small_limits();
    limits.request_timeout = request_timeout;
    limits.drain_timeout = drain_timeout;
    TestServer::start(None, limits)
}

#[test]
fn shutdown_lets_a_request_in_flight_finish_then_stops() {
    let mut s = draining_server(Duration::from_secs(5), Duration::from_secs(5));
    let body = message(1);
    let mut conn = TcpStream::connect(s.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(
        request(
            "POST",
            "/v1/mail/users/alice/mailboxes/INBOX/messages",
            "",
            body.len(),
        )
        .as_bytes(),
    )
    .expect("head");
    conn.write_all(&body[..10]).expect("first part");
    // Let the server start on the request, then begin the shutdown mid-body.
    std::thread::sleep(Duration::from_millis(150));
    s.begin_shutdown();
    std::thread::sleep(Duration::from_millis(150));
    // New connections are no longer served...
    let refused = TcpStream::connect_timeout(&s.addr, Duration::from_secs(1)).map(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let _ = c.write_all(request("GET", "/healthz", "", 0).as_bytes());
        let mut b = Vec::new();
        let _ = c.read_to_end(&mut b);
        b
    });
    assert!(
        refused.as_ref().map_or(true, |b| b.is_empty()),
        "a new connection was served during shutdown: {refused:?}"
    );
    // ...but the one in flight finishes and gets its answer.
    conn.write_all(&body[10..]).expect("rest");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(s.wait(Duration::from_secs(5)), "the server did not stop");
    assert_eq!(s.store.list_messages("alice", None).expect("list").len(), 1);
}

#[test]
fn shutdown_gives_up_on_a_stuck_request_at_the_drain_deadline() {
    let mut s = draining_server(Duration::from_secs(30), Duration::from_millis(300));
    let mut conn = TcpStream::connect(s.addr).expect("connect");
    conn.write_all(
        request(
            "POST",
            "/v1/mail/users/alice/mailboxes/INBOX/messages",
            "",
            100,
        )
        .as_bytes(),
    )
    .expect("head");
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    s.begin_shutdown();
    assert!(s.wait(Duration::from_secs(5)), "the server did not stop");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(s.store.users().expect("users").is_empty());
}

// ---------------------------------------------------------------------------------------------
// The client's errors name the URL and the problem.

#[test]
fn client_errors_name_the_url_and_the_problem() {
    // Nothing listens on a port we just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let e = MailClient::new(&url, None)
        .expect("client")
        .root()
        .expect_err("refused");
    let text = e.to_string();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(
        text.contains(&format!("{url}/v1/mail/root")) && text.contains("refused"),
        "{text}"
    );

    // A server that accepts and never answers: the request deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let start = Instant::now();
    let e = MailClient::with_config(&url, None, config)
        .expect("client")
        .stats()
        .expect_err("timeout");
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains(&url), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(silent);

    // An answer over the cap.
    let s = TestServer::open();
    s.mail(None)
        .append("alice", "INBOX", vec![message(1)], &[], 1)
        .expect("append");
    let small = ClientConfig {
        max_response: 16,
        ..ClientConfig::default()
    };
    let e = MailClient::with_config(&s.url(), None, small)
        .expect("client")
        .fetch("alice", "INBOX", 1)
        .expect_err("too large");
    assert!(
        matches!(e, ClientError::TooLarge { limit: 16, .. }),
        "{e:?}"
    );

    // A bad base URL.
    for bad in ["localhost:1", "ftp://127.0.0.1:1", "http://"] {
        assert!(MailClient::new(bad, None).is_err(), "{bad}");
    }
}

#[test]
fn the_blocking_client_works_from_the_blocking_pool_of_a_runtime() {
    // The sync driver's transport is a blocking function; a server that starts a session
    // runs it on tokio's blocking pool, where a private current-thread runtime may block.
    let s = TestServer::open();
    let url = s.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let c = BlockingClient::new(&url, None, ClientConfig::default()).expect("client");
            c.get("/healthz").map(|(status, _)| status.as_u16())
        })
        .await
        .expect("join")
    });
    assert_eq!(status.expect("answer"), 200);
}

// ---------------------------------------------------------------------------------------------
// The real binary: `merkmail serve` and the remote CLI.

const BIN: &str = env!("CARGO_BIN_EXE_merkmail");

/// Kills the child if the test ends before it does.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Out {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

fn merkmail(args: &[&str], stdin: Option<&[u8]>, token_env: Option<&str>) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MERKMAIL_DATA")
        .env_remove("MERKMAIL_TOKEN")
        .env_remove("MERKMAIL_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token_env {
        cmd.env("MERKMAIL_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("spawn merkmail");
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(input) = stdin {
            pipe.write_all(input).expect("stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    Out {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Hides what legitimately differs between two stores given the same operations: GUIDs of
/// mailboxes created on each (32 hex digits), UIDVALIDITY (the creation second), and roots
/// (stamps carry the time of each change).
/// `mask`, without the lines that give the store file's size (`file_bytes`, or a human
/// `file…` line).
fn without_file_size(text: &[u8]) -> String {
    mask(text)
        .lines()
        .filter(|l| !l.contains("file_bytes") && !l.trim_start().starts_with("file"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn mask(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::new();
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let hex = token.bytes().all(|b| b.is_ascii_hexdigit());
        let digits = token.bytes().all(|b| b.is_ascii_digit());
        if hex && (token.len() == 32 || token.len() == 64) && !digits {
            out.push_str(&format!("<hex{}>", token.len()));
        } else if digits && token.len() == 10 {
            out.push_str("<n10>");
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() {
            token.push(ch);
        } else {
            flush(&mut token, &mut out);
            out.push(ch);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// Two empty stores of the same node id under `dir`: one the CLI opens with --data, one a
/// server will hold, so a command's local and remote output can be compared; and `messages`
/// message files to give both (see [`message_files`]).
fn local_and_served_stores(dir: &Path, messages: u32) -> (PathBuf, PathBuf, Vec<String>) {
    let local = dir.join("local");
    let served = dir.join("served");
    for store in [&local, &served] {
        let out = merkmail(
            &["init", "--data", path(store), "--node-id", "n1"],
            None,
            None,
        );
        assert!(out.ok, "{}", out.stderr);
    }
    (local, served, message_files(dir, messages))
}

#[test]
fn serve_and_the_remote_cli_print_what_the_local_cli_prints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (local, served, files) = local_and_served_stores(tmp.path(), 3);

    let log = tmp.path().join("serve.log");
    let mut server = Guard(
        Command::new(BIN)
            .args(["serve", "--data", path(&served), "--listen", "127.0.0.1:0"])
            .env("MERKMAIL_ADMIN_TOKEN", TOKEN)
            .env("MERKMAIL_TOKEN", "a peer token")
            // Every request logged at debug, into a file the test reads at the end.
            .env("MERKMAIL_LOG", "merkmail=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn serve"),
    );
    let stdout = server.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("serve printed nothing within 10 s");
    let addr = common::listening_addr(&line).unwrap_or_else(|| {
        panic!(
            "unexpected first line {line:?}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let port: u16 = addr
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a loopback address: {addr:?}"));
    assert_ne!(port, 0);
    let url = format!("http://{addr}");

    let odd = "Ünï côde & more+%?#/x y";
    // Each step runs once with --data on the local copy and once with --url on the server.
    let (f1, f2, f3) = (files[0].as_str(), files[1].as_str(), files[2].as_str());
    let steps: Vec<Vec<&str>> = vec![
        vec![
            "append",
            "alice",
            "INBOX",
            f1,
            f2,
            "--flags",
            "\\Seen,$L1",
            "--date",
            "17",
        ],
        vec!["append", "bob", "INBOX", "-", "--date", "5"], // the message comes on stdin
        vec!["mailbox", "create", "alice", "Work/2024"],
        vec!["mailbox", "create", "alice", odd],
        vec![
            "append",
            "alice",
            odd,
            f3,
            "--date",
            "1700000001",
            "--flags",
            "Junk",
        ],
        vec!["append", "alice", "Work/2024", f3, f1, "--date", "1"],
        vec!["flags", "alice", "INBOX", "1", "--add", "\\Flagged,Junk"],
        vec!["flags", "alice", "INBOX", "2", "--set", ""],
        vec!["flags", "alice", "INBOX", "1", "--remove", "Junk"],
        vec!["expunge", "alice", "INBOX", "2"],
        vec!["expunge", "alice", "Work/2024", "1"],
        vec!["mailbox", "rename", "alice", "Work", "Archive"],
        vec!["mailbox", "rename", "alice", "Work/2024", "Archive"],
        vec!["list", "alice"],
        vec!["list", "alice", "--json"],
        vec!["list", "alice", odd, "--json"],
        vec!["list", "bob"],
        vec!["fetch", "alice", odd, "1"],
        vec!["fetch", "bob", "INBOX", "1"],
        vec!["mailbox", "list", "alice"],
        vec!["mailbox", "list", "alice", "--json"],
        vec!["mailbox", "delete", "alice", odd],
        vec!["mailbox", "list", "alice", "--json"],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["root"],
        // Errors fail on both sides and print nothing on stdout.
        vec!["list", "alice", "Nope"],
        vec!["fetch", "alice", "INBOX", "99"],
        vec!["mailbox", "create", "alice", "Archive"],
        vec!["mailbox", "delete", "alice", "INBOX"],
        vec!["flags", "nobody", "INBOX", "1", "--add", "x"],
    ];
    for (i, step) in steps.iter().enumerate() {
        let (sub, rest) = split_sub(step);
        let stdin = rest.contains(&"-").then(|| message(9));
        let mut a: Vec<&str> = sub.clone();
        a.extend(["--data", path(&local)]);
        a.extend(rest.iter().copied());
        let mut b: Vec<&str> = sub.clone();
        b.extend(["--url", &url]);
        // Half the steps pass the token as a flag, half through MERKMAIL_TOKEN.
        if i % 2 == 0 {
            b.extend(["--token", TOKEN]);
        }
        b.extend(rest.iter().copied());
        let lo = merkmail(&a, stdin.as_deref(), None);
        let re = merkmail(&b, stdin.as_deref(), (i % 2 == 1).then_some(TOKEN));
        assert_eq!(
            lo.ok, re.ok,
            "step {i} {b:?}: local {} / remote {}",
            lo.stderr, re.stderr
        );
        let (lo_out, re_out) = if sub.first() == Some(&"stats") {
            // The store file's size is the two files' own (one is held by a server); the rest
            // of the stats must agree.
            (without_file_size(&lo.stdout), without_file_size(&re.stdout))
        } else {
            (mask(&lo.stdout), mask(&re.stdout))
        };
        assert_eq!(lo_out, re_out, "step {i}: {b:?}");
        if !re.ok {
            assert!(re.stdout.is_empty());
            assert!(
                re.stderr.starts_with("merkmail: error: ") && re.stderr.contains(&url),
                "{}",
                re.stderr
            );
        }
    }

    // No token, a wrong token: refused, and the CLI says so.
    let out = merkmail(&["root", "--url", &url], None, None);
    assert!(!out.ok && out.stderr.contains("401"), "{}", out.stderr);
    let out = merkmail(&["root", "--url", &url, "--token", "nope"], None, None);
    assert!(!out.ok && out.stderr.contains("401"), "{}", out.stderr);

    // The reads, unmasked: what the server says about its store, then (once it has stopped)
    // what the local CLI says about the same directory, byte for byte.
    let reads: Vec<Vec<&str>> = vec![
        vec!["list", "alice"],
        vec!["list", "alice", "--json"],
        vec!["list", "bob", "INBOX", "--json"],
        vec!["mailbox", "list", "alice"],
        vec!["mailbox", "list", "alice", "--json"],
        vec!["fetch", "alice", "Archive", "2"],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["root"],
    ];
    let remote: Vec<Vec<u8>> = reads
        .iter()
        .map(|r| {
            let (cmd, rest) = split_sub(r);
            let mut args = cmd.clone();
            args.extend(["--url", url.as_str(), "--token", TOKEN]);
            args.extend(rest);
            let out = merkmail(&args, None, None);
            assert!(out.ok, "{args:?}: {}", out.stderr);
            out.stdout
        })
        .collect();

    // SIGTERM: the server drains and exits 0.
    let pid = server.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = server.0.try_wait().expect("try_wait") {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    // The log: the address, each request with its status, the shutdown; never the token.
    let log = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        log.contains("listening") && log.contains("SIGTERM"),
        "{log}"
    );
    assert!(
        log.contains("status=401") && log.contains("status=201"),
        "{log}"
    );
    assert!(
        !log.contains(TOKEN) && !log.contains("horse"),
        "the token was logged"
    );

    for (r, remote) in reads.iter().zip(&remote) {
        let (cmd, rest) = split_sub(r);
        let mut args = cmd.clone();
        args.extend(["--data", path(&served)]);
        args.extend(rest);
        let out = merkmail(&args, None, None);
        assert!(out.ok, "{args:?}: {}", out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(remote),
            "{args:?}"
        );
    }
    let out = merkmail(&["verify", "--data", path(&served)], None, None);
    assert!(out.ok, "{}", String::from_utf8_lossy(&out.stdout));
}

fn split_sub<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let n = if args[0] == "mailbox" { 2 } else { 1 };
    (args[..n].to_vec(), args[n..].to_vec())
}

/// `m1.eml` … `m{count}.eml` in `dir`, holding `message(n)`, each modified at 10⁹ + n seconds
/// (for `--date-from-file`); their paths.
fn message_files(dir: &Path, count: u32) -> Vec<String> {
    (1..=count)
        .map(|n| {
            let f = dir.join(format!("m{n}.eml"));
            std::fs::write(&f, message(n)).expect("write message");
            let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + u64::from(n));
            std::fs::File::options()
                .write(true)
                .open(&f)
                .and_then(|file| file.set_modified(when))
                .expect("set mtime");
            path(&f).to_string()
        })
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[test]
fn serve_refuses_a_bad_address_and_an_empty_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    assert!(
        merkmail(
            &["init", "--data", path(&dir), "--node-id", "n1"],
            None,
            None
        )
        .ok
    );
    let data = path(&dir);
    let refused: [(&[&str], &str); 4] = [
        (
            &["serve", "--data", data, "--listen", "not-an-address"],
            "not-an-address",
        ),
        (
            &[
                "serve",
                "--data",
                data,
                "--listen",
                "127.0.0.1:0",
                "--token",
                "",
            ],
            "token",
        ),
        // --data and --url together are a usage error; neither is one too.
        (
            &["root", "--data", data, "--url", "http://127.0.0.1:1"],
            "cannot be used with",
        ),
        (&["root"], "--url"),
    ];
    for (args, needle) in refused {
        let out = merkmail(args, None, None);
        assert!(
            !out.ok && out.stderr.contains(needle),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// Batch work over --url prints what it prints locally, one request each: UID sets for
/// flags and expunge, many UIDs, --date-from-file, --mbox; and a closed stdout ends
/// `list --url` quietly with SIGPIPE.
#[test]
fn batch_commands_over_url_print_what_they_print_locally() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (local, served, files) = local_and_served_stores(tmp.path(), 300);
    let mbox = tmp.path().join("in.mbox");
    std::fs::write(
        &mbox,
        b"From a Thu Nov 29 14:33:59 2007\nSubject: one\n\n>From x\n\nFrom b Thu Nov 29 14:34:00 2007\r\nSubject: two\r\n\r\n",
    )
    .expect("write mbox");
    let mut cmd = common::command(["serve", "--data", path(&served), "--listen", "127.0.0.1:0"]);
    cmd.env("MERKMAIL_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let (child, line) = common::spawn_for_first_line(cmd, Duration::from_secs(10));
    let _server = common::ChildGuard::from_child(child);
    let addr =
        common::listening_addr(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let url = format!("http://{addr}");

    let mut append: Vec<&str> = vec!["append", "alice", "INBOX", "--date-from-file"];
    append.extend(files.iter().map(String::as_str));
    let steps: Vec<Vec<&str>> = vec![
        append,
        vec![
            "append",
            "alice",
            "INBOX",
            "--mbox",
            path(&mbox),
            "--date",
            "7",
        ],
        vec!["expunge", "alice", "INBOX", "4"],
        vec!["flags", "alice", "INBOX", "1:3,5:6,*", "--add", "Junk"],
        vec!["flags", "alice", "INBOX", "6:5", "--set", "\\Seen"],
        vec!["flags", "alice", "INBOX", "7", "8", "--remove", "Junk"],
        vec!["flags", "alice", "INBOX", "9", "--add", "One"],
        vec!["expunge", "alice", "INBOX", "10:20,*"],
        vec!["expunge", "alice", "INBOX", "21", "22"],
        // Errors fail on both sides, change nothing and print nothing on stdout.
        vec!["flags", "alice", "INBOX", "1000:2000", "--add", "X"],
        vec!["flags", "alice", "INBOX", "4", "--add", "X"],
        vec!["expunge", "alice", "INBOX", "0"],
        vec!["expunge", "alice", "INBOX", "1:"],
        vec!["expunge", "alice", "INBOX", "1", "4"],
        vec!["list", "alice", "--json"],
        vec!["fetch", "alice", "INBOX", "301"],
        vec!["fetch", "alice", "INBOX", "302"],
    ];
    for (i, step) in steps.iter().enumerate() {
        let (sub, rest) = split_sub(step);
        let mut a: Vec<&str> = sub.clone();
        a.extend(["--data", path(&local)]);
        a.extend(rest.iter().copied());
        let mut b: Vec<&str> = sub.clone();
        b.extend(["--url", &url, "--token", TOKEN]);
        b.extend(rest.iter().copied());
        let lo = merkmail(&a, None, None);
        let re = merkmail(&b, None, None);
        assert_eq!(
            lo.ok, re.ok,
            "step {i} {b:?}: local {} / remote {}",
            lo.stderr, re.stderr
        );
        assert_eq!(mask(&lo.stdout), mask(&re.stdout), "step {i}: {b:?}");
        if !re.ok {
            assert!(re.stdout.is_empty(), "step {i}");
        }
    }
    let listed = merkmail(
        &["list", "alice", "--url", &url, "--token", TOKEN, "--json"],
        None,
        None,
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("list --json");
    let first = &listed[0];
    assert_eq!(first["internal_date"], 1_000_000_001);
    assert_eq!(listed.as_array().map(Vec::len), Some(302 - 1 - 12 - 2));

    let mut child = common::command(["list", "alice", "--url", &url, "--token", TOKEN, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn list");
    // 287 messages as JSON are about 70 KiB, more than a pipe holds: the command is still
    // writing when the reader goes away.
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("first line");
    drop(reader);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
