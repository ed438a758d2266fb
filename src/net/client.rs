//! A small HTTP/1.1 client for talking to a merkmail server: `http://` or `https://` (rustls;
//! the CAs it trusts come from [`ClientConfig::tls`]), a connect timeout, a deadline per
//! request, a cap on the answer's size, and a bearer token. [`Client`] is async;
//! [`BlockingClient`] wraps it in a current-thread runtime for the CLI.
//!
//! Every error names the URL and the problem (connection refused, timeout, the server's
//! status and its JSON error message).

use super::tls::{ClientTls, TlsError};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;
use thiserror::Error;

/// Timeouts and caps of a [`Client`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time to set up the TCP connection: 10 s.
    pub connect_timeout: Duration,
    /// Time from sending a request to having its whole answer: 120 s.
    pub request_timeout: Duration,
    /// Largest answer body accepted: 1 GiB (a `list --json` of a very large store is big).
    pub max_response: usize,
    /// Whom `https://` URLs must be certified by: `None` trusts the web PKI's roots (built
    /// in); a cluster with its own CA gives [`ClientTls::from_ca_file`].
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            max_response: 1 << 30,
            tls: None,
        }
    }
}

/// Why a request got no usable answer. Each message starts with the URL.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The base URL cannot be used (not `http://host[:port][/prefix]`).
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    /// No connection could be made (refused, unreachable, connect timeout).
    #[error("{url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    /// The whole answer did not arrive within the request timeout.
    #[error("{url}: no complete answer within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The answer's body is larger than `max_response`.
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    /// The connection broke, or the answer was not HTTP.
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered with an error status; `message` is its JSON `error` (or the body).
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// The answer is not what the route promises (e.g. malformed JSON).
    #[error("{url}: unexpected answer: {reason}")]
    Decode { url: String, reason: String },
    /// The blocking wrapper could not start its runtime.
    #[error("cannot start the HTTP client: {0}")]
    Runtime(std::io::Error),
    /// The TLS trust (a CA file) could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl ClientError {
    /// The error for a non-2xx answer: the server's JSON `{"error": …}` if it sent one,
    /// else the start of the body.
    pub fn from_status(url: &str, status: StatusCode, body: &[u8]) -> ClientError {
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let message = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => e.error,
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                let text = text.trim();
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no explanation")
                        .to_string()
                } else {
                    text.to_string()
                }
            }
        };
        ClientError::Status {
            url: url.to_string(),
            status,
            message,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An async client bound to one server (`http(s)://host:port`, optionally with a path prefix).
/// Cheap to clone; connections are pooled and kept alive.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<HeaderValue>,
    /// Headers sent with every request (e.g. the daemon's node id).
    extra: Vec<(hyper::header::HeaderName, HeaderValue)>,
    config: ClientConfig,
    inner: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the server at `base_url`. Checks the URL; makes no connection yet.
    pub fn new(
        base_url: &str,
        token: Option<&str>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = base_url
            .parse()
            .map_err(|e| bad(&format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported; use http:// or https://"
                )))
            }
            None => return Err(bad("give a URL such as http://127.0.0.1:8025")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("the URL has no host"));
        }
        if uri.query().is_some() {
            return Err(bad("the base URL must not have a query"));
        }
        let token = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| bad("the token must be printable ASCII"))
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let tls = match &config.tls {
            Some(tls) => tls.config(),
            None => ClientTls::web_pki()
                .map_err(|e| bad(&format!("cannot set up TLS: {e}")))?
                .config(),
        };
        // The scheme picks: http:// stays plain, https:// goes through rustls.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Client {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            extra: Vec::new(),
            config,
            inner,
        })
    }

    /// Sends `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Result<Client, ClientError> {
        let value = HeaderValue::from_str(value).map_err(|_| ClientError::Url {
            url: self.base.clone(),
            reason: format!("header {name} must be printable ASCII"),
        })?;
        self.extra
            .push((hyper::header::HeaderName::from_static(name), value));
        Ok(self)
    }

    /// The full URL of `path_and_query` (which starts with `/`, already percent-encoded).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// `GET`: the status and the whole body, whatever the status.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.request(Method::GET, path, None, Bytes::new()).await
    }

    /// `POST` of `body` as `content_type`: the status and the whole body, whatever the status.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.request(Method::POST, path, Some(content_type), Bytes::from(body))
            .await
    }

    /// `DELETE`: the status and the whole body, whatever the status.
    pub async fn delete(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.request(Method::DELETE, path, None, Bytes::new()).await
    }

    /// Any request. `path` starts with `/` and is already percent-encoded. Only transport
    /// problems are errors here; use [`expect_success`] to turn a 4xx/5xx into one.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = self.url(path);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        for (name, value) in &self.extra {
            req = req.header(name, value.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| ClientError::Url {
            url: url.clone(),
            reason: format!("cannot build a request: {e}"),
        })?;
        let after = self.config.request_timeout;
        let sent = req.body().size_hint().exact().unwrap_or(0);
        tokio::time::timeout(after, self.exchange(&url, req, sent))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                after,
            })?
    }

    async fn exchange(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
        sent: u64,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self.inner.request(req).await.map_err(|e| {
            let mut reason = innermost(&e);
            // A server refuses an oversize body with 413 from its Content-Length and closes
            // the connection; a large body still being written then fails to send, and the
            // 413 is lost. Say what most likely happened.
            if !e.is_connect() && sent > 1 << 20 {
                reason.push_str(&format!(
                    " (while sending {sent} bytes: the server may refuse a body this large)"
                ));
            }
            if e.is_connect() {
                ClientError::Connect {
                    url: url.to_string(),
                    reason,
                }
            } else {
                ClientError::Transport {
                    url: url.to_string(),
                    reason,
                }
            }
        })?;
        let status = response.status();
        let limit = self.config.max_response;
        let too_large = || ClientError::TooLarge {
            url: url.to_string(),
            limit,
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = response.into_body();
        let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n.min(1 << 20) as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Transport {
                url: url.to_string(),
                reason: format!("reading the answer: {}", innermost(&e)),
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((status, buf.freeze()))
    }
}

/// The body of a 2xx answer, or [`ClientError::Status`] with the server's message.
pub fn expect_success(
    url: &str,
    (status, body): (StatusCode, Bytes),
) -> Result<Bytes, ClientError> {
    if status.is_success() {
        Ok(body)
    } else {
        Err(ClientError::from_status(url, status, &body))
    }
}

/// The most specific message in an error's chain ("Connection refused (os error 111)"
/// rather than "client error (Connect)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// [`Client`] for code that is not async (the CLI): each call runs on a private
/// current-thread runtime.
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    pub fn new(
        base_url: &str,
        token: Option<&str>,
        config: ClientConfig,
    ) -> Result<BlockingClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let client = Client::new(base_url, token, config)?;
        Ok(BlockingClient { runtime, client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn get(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.runtime.block_on(self.client.get(path))
    }

    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.runtime
            .block_on(self.client.post(path, content_type, body))
    }

    pub fn delete(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.runtime.block_on(self.client.delete(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        let ok = |u: &str| Client::new(u, None, ClientConfig::default()).map(|c| c.url("/x"));
        assert_eq!(
            ok("http://127.0.0.1:1").expect("ok"),
            "http://127.0.0.1:1/x"
        );
        assert_eq!(ok("http://h:1/pre/").expect("ok"), "http://h:1/pre/x");
        assert_eq!(ok("https://h:1").expect("ok"), "https://h:1/x");
        for bad in ["127.0.0.1:1", "ftp://h", "http://h/?q", "not a url", ""] {
            assert!(ok(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Client::new("http://h", Some("bad\ntoken"), ClientConfig::default()).is_err());
    }

    #[test]
    fn status_errors_carry_the_servers_message() {
        let e = ClientError::from_status(
            "http://h/v1/x",
            StatusCode::NOT_FOUND,
            br#"{"error":"unknown user \"x\""}"#,
        );
        assert_eq!(
            e.to_string(),
            r#"http://h/v1/x: HTTP 404 Not Found: unknown user "x""#
        );
        let e = ClientError::from_status("http://h/", StatusCode::BAD_GATEWAY, b"");
        assert_eq!(
            e.to_string(),
            "http://h/: HTTP 502 Bad Gateway: Bad Gateway"
        );
    }
}
