//! Taking a request apart safely: the bearer token, the body under a size limit, path
//! segments and query parameters, each percent-decoded and checked to be UTF-8.

use super::error::ApiError;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH};
use hyper::HeaderMap;
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;

/// The server's token, kept only as its blake3 hash: comparing two fixed-length hashes in
/// constant time reveals neither the token's bytes nor its length.
#[derive(Clone)]
pub(crate) struct Token([u8; 32]);

impl Token {
    pub(crate) fn new(token: &str) -> Token {
        Token(*blake3::hash(token.as_bytes()).as_bytes())
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`, once. Two
    /// `Authorization` headers are refused whatever they hold: a proxy and the server could
    /// otherwise disagree on which one counts.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some(given) = value.to_str().ok().and_then(bearer) else {
            return false;
        };
        let given = blake3::hash(given.as_bytes());
        bool::from(given.as_bytes().ct_eq(&self.0))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// The credentials of an `Authorization` header with the Bearer scheme (the scheme's name is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches(' '))
        .filter(|t| !t.is_empty())
}

/// Reads the whole body, refusing it with 413 as soon as it is known to exceed `limit`:
/// from `Content-Length` before a byte is read, or while it streams in.
pub(crate) async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = declared_length(headers)?;
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    // Trust a declared length for the first allocation only up to 1 MiB: a peer that
    // announces a large body and never sends it should not cost us that much memory.
    let capacity = declared.map_or(0, |n| n.min(1 << 20) as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            // hyper reports a body cut short as an io::Error of kind UnexpectedEof below
            // its own "error reading a body from connection".
            let mut cause: &(dyn std::error::Error + 'static) = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let eof = cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
            if e.is_incomplete_message() || eof {
                ApiError::bad_request("the request body ended before its declared length")
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}: {cause}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            if let Some(n) = declared.filter(|_| buf.len() + data.len() > buf.capacity()) {
                // Past the first MiB the peer is sending what it declared: make room for all
                // of it once, rather than doubling (an 8.5 MiB batch would take 16 MiB).
                buf.reserve((n as usize).saturating_sub(buf.len()));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    // hyper has already refused a malformed or repeated Content-Length; this is belt and braces.
    headers
        .get(CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))
        })
        .transpose()
}

/// The path's segments, each percent-decoded: `/v1/mail/users/al%2Fice` gives
/// `["v1", "mail", "users", "al/ice"]`. A `+` stays a `+` in a path.
pub(crate) fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(|raw| {
            percent_decode_str(raw)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "path segment {raw:?} is not UTF-8 once percent-decoded"
                    ))
                })
        })
        .collect()
}

/// Query parameters, decoded as HTML forms encode them (`+` is a space, `%2B` a plus), with
/// only the names a route takes, each at most once.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = decode_component(name)?;
            let value = decode_component(value)?;
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(if allowed.is_empty() {
                    format!("unknown query parameter {name:?}: this route takes none")
                } else {
                    format!(
                        "unknown query parameter {name:?}: this route takes {}",
                        allowed.join(", ")
                    )
                }));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
            pairs.push((name, value));
        }
        Ok(Query(pairs))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn decode_component(raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "query component {raw:?} is not UTF-8 once percent-decoded"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn token_admits_only_its_own_bearer() {
        let t = Token::new("s3cret");
        for (header, ok) in [
            ("Bearer s3cret", true),
            ("bearer s3cret", true),
            ("BEARER  s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cret2", false),
            ("Basic s3cret", false),
            ("Bearer", false),
            ("Bearer ", false),
            ("s3cret", false),
        ] {
            assert_eq!(t.admits(&with_auth(header)), ok, "{header:?}");
        }
        assert!(!t.admits(&HeaderMap::new()));
        // The right token twice, or beside a wrong one, in either order: refused.
        for pair in [
            ["Bearer s3cret", "Bearer s3cret"],
            ["Bearer s3cret", "Bearer wrong"],
            ["Bearer wrong", "Bearer s3cret"],
        ] {
            let mut h = HeaderMap::new();
            for v in pair {
                h.append(AUTHORIZATION, HeaderValue::from_str(v).expect("header"));
            }
            assert!(!t.admits(&h), "{pair:?}");
        }
    }

    #[test]
    fn segments_are_percent_decoded_one_by_one() {
        assert_eq!(
            segments("/v1/mail/users/al%2Fice/mailboxes/a+b%20c").expect("ok"),
            ["v1", "mail", "users", "al/ice", "mailboxes", "a+b c"]
        );
        assert_eq!(segments("/x/caf%C3%A9").expect("ok"), ["x", "café"]);
        assert!(segments("/x/%FF").is_err());
    }

    #[test]
    fn query_takes_known_names_once_and_decodes_them() {
        let q =
            Query::parse(Some("flags=%5CSeen%2C%24L+1&date=5"), &["flags", "date"]).expect("ok");
        assert_eq!(q.get("flags"), Some("\\Seen,$L 1"));
        assert_eq!(q.get("date"), Some("5"));
        assert_eq!(q.get("other"), None);
        assert!(Query::parse(Some("x=1"), &["flags"]).is_err());
        assert!(Query::parse(Some("date=1&date=2"), &["date"]).is_err());
        assert!(Query::parse(Some("date=%FF"), &["date"]).is_err());
        assert!(Query::parse(None, &[]).expect("empty").get("x").is_none());
        assert_eq!(
            Query::parse(Some("set="), &["set"]).expect("ok").get("set"),
            Some("")
        );
    }
}
