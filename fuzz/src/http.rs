//! Every request the server accepts, through the real router: the input is an HTTP request in
//! a loose text form, sent over 127.0.0.1 to `net::server::run` (started for this input) serving
//! the fixture store as built (`fixture::with_fixture`).
//!
//! Checked: the server answers (no panic, no dropped connection, within the deadline), never
//! with a 500; an answer in 4xx, and any GET or HEAD, leaves the root and the counters as they
//! were; the store verifies afterwards.
//!
//! Input form: `METHOD TARGET` on the first line, then `Name: value` header lines, then an
//! empty line and the body (the rest of the input, bytes as they are). `Content-Length` and
//! `Host` are set by the client; header lines that are not valid HTTP are skipped.

use crate::fixture;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use merkmail::net::server::{counts_view, run, Hooks, JournalPosition, RoundRefused};
use merkmail::net::{Limits, ServerState};
use merkmail::status::{Mode, StatusView};
use merkmail::store::Store;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The peer and admin token of the server under test; seeds carry it.
pub const TOKEN: &str = "fuzz-token";
/// How long one request may take before the check fails as a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// Small limits, so that inputs of a few KiB reach the 413 paths too.
pub fn limits() -> Limits {
    Limits {
        max_append_body: 16 << 10,
        max_sync_body: 64 << 10,
        max_body: 4 << 10,
        max_items: 100,
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(1),
        max_connections: 4,
    }
}

/// The daemon's side as the server sees it: no peers (so `POST /v1/sync/start` is refused
/// before it dials anything), nothing waits, the status comes from the store.
struct FuzzHooks(Arc<Store>);

impl Hooks for FuzzHooks {
    fn status(&self) -> StatusView {
        StatusView {
            node: self.0.node_id().to_string(),
            root: self.0.root().map(|r| r.hash.to_hex()).unwrap_or_default(),
            counts: self
                .0
                .counters()
                .map(|c| counts_view(&c))
                .unwrap_or_default(),
            mode: Mode::Async,
            ..StatusView::default()
        }
    }

    fn wrote(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }

    fn journal_received(&self, _from: &str) {}

    fn journal_position(&self, _from: &str) -> Option<JournalPosition> {
        None
    }

    fn session_round(&self, _from: &str) -> Result<(), RoundRefused> {
        Ok(())
    }

    fn starting(&self) -> bool {
        false
    }

    fn roots_equal(&self, _from: &str, _at_ms: u64) {}

    fn session_applied(&self) {}

    fn is_peer(&self, _url: &str) -> Option<bool> {
        Some(false)
    }

    fn node_id(&self) -> String {
        self.0.node_id().to_string()
    }
}

/// The request an input describes, or `None` if it does not describe one (no method, a
/// target that is not a path).
pub fn parse(data: &[u8]) -> Option<Request<Full<Bytes>>> {
    let (head, body) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    if method == Method::CONNECT {
        // CONNECT takes an authority, not a path; the client would refuse to send it.
        return None;
    }
    let uri: Uri = target.parse().ok()?;
    if uri.scheme().is_some() || !target.starts_with('/') {
        return None;
    }
    let mut req = Request::builder().method(method).uri(uri);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "host" | "connection" | "upgrade" | "expect"
        ) {
            continue;
        }
        req = req.header(name, value);
    }
    req.header("host", "127.0.0.1")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Sends the request `data` describes to a server over the fixture store as built, and checks the
/// answer and the store.
pub fn check(data: &[u8]) {
    let Some(req) = parse(data) else {
        return;
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let store = fixture::with_fixture(Arc::clone);
    let before = (
        store.root().expect("root"),
        store.counters().expect("counters"),
    );
    let Some(status) = runtime().block_on(exchange(Arc::clone(&store), req)) else {
        return;
    };
    let after = (
        store.root().expect("root"),
        store.counters().expect("counters"),
    );
    assert!(
        status != StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {path}: 500 Internal Server Error"
    );
    if status.is_client_error() || method == Method::GET || method == Method::HEAD {
        assert_eq!(
            before, after,
            "{method} {path} answered {status} but changed the store"
        );
    }
    let report = store.verify().expect("verify runs");
    assert!(
        report.is_ok(),
        "{method} {path} ({status}): verify: {report:?}"
    );
}

/// One request to a server of its own; the status it answered with, or `None` if the client
/// refused to send the request at all.
async fn exchange(store: Arc<Store>, req: Request<Full<Bytes>>) -> Option<StatusCode> {
    let hooks = Arc::new(FuzzHooks(Arc::clone(&store)));
    let state = Arc::new(ServerState::new(store, Some(TOKEN), limits()).with_hooks(hooks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async move {
        let _ = stopped.await;
    }));
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(conn);
        let reply = sender.send_request(req).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if e.is_user() => return None,
            Err(e) => panic!("the server dropped the request: {e}"),
        };
        let status = reply.status();
        // The whole answer arrives (a body cut short would be a server fault).
        let body = reply.into_body().collect().await;
        assert!(body.is_ok(), "the answer's body broke off: {body:?}");
        drop(sender);
        let _ = conn.await;
        Some(status)
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    match answer {
        Ok(status) => status,
        Err(_) => panic!("no answer within {ANSWER_WITHIN:?}"),
    }
}
