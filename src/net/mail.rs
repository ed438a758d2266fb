//! The mail API under `/v1/mail/`: one route per mail command of the CLI, answering with the
//! shapes in [`super::json`]. docs/HTTP.md lists the routes.

use super::error::{reply, ApiError, Reply};
use super::json::{
    Appended, Created, Done, ExpungeRequest, Expunged, Flags, FlagsChanged, MailboxView,
    MessageFlags, MessageView, RootView, StatsView,
};
use super::request::{segments, Query};
use super::router::{read_within, within};
use super::server::ServerState;
use crate::model::{parse_flag_list, Digest, FlagName, FlagOp, Md5, UidSelection, UidSet};
use crate::store::NewMessage;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{HeaderMap, Method, Request, StatusCode};
use tokio::time::Instant;

/// The content type of a batch append: several messages in one request (one transaction).
pub(crate) const BATCH_CONTENT_TYPE: &str = "application/vnd.merkmail.messages";

/// The mail routes, from the path alone.
enum Route {
    Root,
    Stats,
    Mailboxes {
        user: String,
    },
    UserMessages {
        user: String,
    },
    Mailbox {
        user: String,
        mailbox: String,
    },
    Rename {
        user: String,
        mailbox: String,
    },
    Expunge {
        user: String,
        mailbox: String,
    },
    Messages {
        user: String,
        mailbox: String,
    },
    Message {
        user: String,
        mailbox: String,
        uid: u32,
    },
    Flags {
        user: String,
        mailbox: String,
        uid: u32,
    },
    /// A flag change on many messages, named in the body.
    ManyFlags {
        user: String,
        mailbox: String,
    },
}

impl Route {
    fn parse(path: &str) -> Result<Route, ApiError> {
        let segs = segments(path)?;
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let owned = |s: &str| s.to_string();
        let no_route = || ApiError::not_found(format!("no route {path}"));
        let route = match segs.as_slice() {
            ["v1", "mail", "root"] => Route::Root,
            ["v1", "mail", "stats"] => Route::Stats,
            ["v1", "mail", "users", u, "mailboxes"] => Route::Mailboxes { user: owned(u) },
            ["v1", "mail", "users", u, "messages"] => Route::UserMessages { user: owned(u) },
            ["v1", "mail", "users", u, "mailboxes", m, rest @ ..] => {
                let (user, mailbox) = (owned(u), owned(m));
                match rest {
                    [] => Route::Mailbox { user, mailbox },
                    ["rename"] => Route::Rename { user, mailbox },
                    ["expunge"] => Route::Expunge { user, mailbox },
                    ["flags"] => Route::ManyFlags { user, mailbox },
                    ["messages"] => Route::Messages { user, mailbox },
                    ["messages", uid] => Route::Message {
                        user,
                        mailbox,
                        uid: parse_uid(uid)?,
                    },
                    ["messages", uid, "flags"] => Route::Flags {
                        user,
                        mailbox,
                        uid: parse_uid(uid)?,
                    },
                    _ => return Err(no_route()),
                }
            }
            _ => return Err(no_route()),
        };
        Ok(route)
    }

    /// The methods the route takes, for 405's `Allow`.
    fn allow(&self) -> &'static str {
        match self {
            Route::Root
            | Route::Stats
            | Route::Mailboxes { .. }
            | Route::UserMessages { .. }
            | Route::Message { .. } => "GET",
            Route::Mailbox { .. } => "POST, DELETE",
            Route::Rename { .. }
            | Route::Expunge { .. }
            | Route::Flags { .. }
            | Route::ManyFlags { .. } => "POST",
            Route::Messages { .. } => "GET, POST",
        }
    }
}

fn parse_uid(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>().map_err(|_| {
        ApiError::bad_request(format!(
            "UID {raw:?} is not a number from 0 to {}",
            u32::MAX
        ))
    })
}

/// The append's `md5=` or `digest=`: one hex hash per message, comma-separated, in the order
/// sent. The store refuses the whole append if any message's bytes do not match.
fn expected_hashes<T: std::str::FromStr<Err = String>>(
    raw: Option<&str>,
    name: &str,
    messages: usize,
) -> Result<Option<Vec<T>>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let hashes = raw
        .split(',')
        .map(|h| h.trim().parse::<T>())
        .collect::<Result<Vec<T>, String>>()
        .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
    if hashes.len() != messages {
        return Err(ApiError::bad_request(format!(
            "{name} names {} hash(es) but the body holds {messages} message(s)",
            hashes.len()
        )));
    }
    Ok(Some(hashes))
}

pub(crate) async fn handle(
    state: &ServerState,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply, ApiError> {
    let route = Route::parse(req.uri().path())?;
    if !route
        .allow()
        .split(", ")
        .any(|m| m == req.method().as_str())
    {
        return Err(ApiError::method_not_allowed(route.allow()));
    }
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let query = parts.uri.query();
    let limits = &state.limits;
    let is = |m: Method| method == m;
    match route {
        Route::Messages { user, mailbox } if is(Method::POST) => {
            let q = Query::parse(query, &["flags", "date", "dates", "md5", "digest"])?;
            let flags = parse_flag_list(q.get("flags").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let seconds = |d: &str| {
                d.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "date {d:?} is not a whole number of seconds since the epoch"
                    ))
                })
            };
            let internal_date = match q.get("date") {
                Some(d) => seconds(d)?,
                None => now_secs(),
            };
            if q.get("date").is_some() && q.get("dates").is_some() {
                return Err(ApiError::bad_request("give ?date= or ?dates=, not both"));
            }
            let dates = q
                .get("dates")
                .map(|list| {
                    list.split(',')
                        .map(seconds)
                        .collect::<Result<Vec<i64>, _>>()
                })
                .transpose()?;
            let batch = is_batch(&parts.headers);
            let body = read_within(body, &parts.headers, limits.max_append_body, deadline).await?;
            let bodies = if batch {
                decode_batch(&body, limits.max_items)?
            } else {
                vec![body]
            };
            if let Some(dates) = &dates {
                if dates.len() != bodies.len() {
                    return Err(ApiError::bad_request(format!(
                        "dates names {} date(s) but the body holds {} message(s)",
                        dates.len(),
                        bodies.len()
                    )));
                }
            }
            let md5s = expected_hashes::<Md5>(q.get("md5"), "md5", bodies.len())?;
            let digests = expected_hashes::<Digest>(q.get("digest"), "digest", bodies.len())?;
            let messages: Vec<NewMessage> = bodies
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| NewMessage {
                    // No copy when the body is one message (the usual case).
                    bytes: Vec::from(bytes),
                    flags: flags.clone(),
                    internal_date: dates.as_ref().map_or(internal_date, |d| d[i]),
                    md5: md5s.as_ref().map(|m| m[i]),
                    digest: digests.as_ref().map(|d| d[i]),
                    ..NewMessage::default()
                })
                .collect();
            within(deadline, async {
                let outcomes = state
                    .with_store(move |s| s.append(&user, &mailbox, messages))
                    .await?;
                let uids = outcomes.iter().map(|o| o.uid).collect();
                Ok(reply::json(StatusCode::CREATED, &Appended { uids }))
            })
            .await
        }
        Route::Expunge { user, mailbox } if is(Method::POST) => {
            Query::parse(query, &[])?;
            let body = read_within(body, &parts.headers, limits.max_body, deadline).await?;
            let selection = selection(&body, limits.max_items)?;
            within(deadline, async {
                let n = state
                    .with_store(move |s| s.expunge_in(&user, &mailbox, &selection))
                    .await?;
                Ok(reply::json(StatusCode::OK, &Expunged { expunged: n }))
            })
            .await
        }
        Route::ManyFlags { user, mailbox } if is(Method::POST) => {
            let (op, flags) = flag_change(query)?;
            let body = read_within(body, &parts.headers, limits.max_body, deadline).await?;
            let selection = selection(&body, limits.max_items)?;
            within(deadline, async {
                let changed = state
                    .with_store(move |s| s.set_flags_in(&user, &mailbox, &selection, op, &flags))
                    .await?;
                let messages = changed
                    .into_iter()
                    .map(|(uid, now)| MessageFlags {
                        uid,
                        flags: now.iter().map(|f| f.as_str().to_string()).collect(),
                    })
                    .collect();
                Ok(reply::json(StatusCode::OK, &FlagsChanged { messages }))
            })
            .await
        }
        route => {
            // The remaining routes take no body; read (and drop) it under the small limit,
            // so the connection stays usable for the next request.
            read_within(body, &parts.headers, limits.max_body, deadline).await?;
            within(deadline, bodiless(state, route, &method, query)).await
        }
    }
}

/// A user's messages in one mailbox, or (with `None`) in every mailbox.
async fn list_messages(
    state: &ServerState,
    user: String,
    mailbox: Option<String>,
) -> Result<Reply, ApiError> {
    let list = state
        .with_store(move |s| s.list_messages(&user, mailbox.as_deref()))
        .await?;
    Ok(reply::json(
        StatusCode::OK,
        &list.iter().map(MessageView::of).collect::<Vec<_>>(),
    ))
}

/// The routes whose input is all in the path and the query.
async fn bodiless(
    state: &ServerState,
    route: Route,
    method: &Method,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    match (route, method) {
        (Route::Root, &Method::GET) => {
            Query::parse(query, &[])?;
            let root = state.with_store(|s| s.root()).await?;
            Ok(reply::json(
                StatusCode::OK,
                &RootView {
                    root: root.hash.to_hex(),
                    messages: root.count,
                },
            ))
        }
        (Route::Stats, &Method::GET) => {
            Query::parse(query, &[])?;
            Ok(reply::json(
                StatusCode::OK,
                &state.with_store(StatsView::of).await?,
            ))
        }
        (Route::Mailboxes { user }, &Method::GET) => {
            Query::parse(query, &[])?;
            let list = state.with_store(move |s| s.list_mailboxes(&user)).await?;
            let list: Vec<MailboxView> = list.into_iter().map(MailboxView::from).collect();
            Ok(reply::json(StatusCode::OK, &list))
        }
        (Route::UserMessages { user }, &Method::GET) => {
            Query::parse(query, &[])?;
            list_messages(state, user, None).await
        }
        (Route::Messages { user, mailbox }, &Method::GET) => {
            Query::parse(query, &[])?;
            list_messages(state, user, Some(mailbox)).await
        }
        (Route::Mailbox { user, mailbox }, &Method::POST) => {
            Query::parse(query, &[])?;
            let guid = state
                .with_store(move |s| s.create_mailbox(&user, &mailbox))
                .await?;
            Ok(reply::json(StatusCode::CREATED, &Created { guid }))
        }
        (Route::Mailbox { user, mailbox }, &Method::DELETE) => {
            Query::parse(query, &[])?;
            state
                .with_store(move |s| s.delete_mailbox(&user, &mailbox))
                .await?;
            Ok(reply::json(StatusCode::OK, &Done { ok: true }))
        }
        (Route::Rename { user, mailbox }, &Method::POST) => {
            let q = Query::parse(query, &["to"])?;
            let to = q
                .get("to")
                .ok_or_else(|| ApiError::bad_request("give the new name as ?to=NAME"))?
                .to_string();
            state
                .with_store(move |s| s.rename_mailbox(&user, &mailbox, &to))
                .await?;
            Ok(reply::json(StatusCode::OK, &Done { ok: true }))
        }
        (Route::Message { user, mailbox, uid }, &Method::GET) => {
            Query::parse(query, &[])?;
            let bytes = state
                .with_store(move |s| s.fetch(&user, &mailbox, uid))
                .await?;
            Ok(reply::bytes(StatusCode::OK, "message/rfc822", bytes))
        }
        (Route::Flags { user, mailbox, uid }, &Method::POST) => {
            let (op, flags) = flag_change(query)?;
            let now = state
                .with_store(move |s| s.set_flags(&user, &mailbox, uid, op, &flags))
                .await?;
            Ok(reply::json(
                StatusCode::OK,
                &Flags {
                    flags: now.iter().map(|f| f.as_str().to_string()).collect(),
                },
            ))
        }
        (route, _) => Err(ApiError::method_not_allowed(route.allow())),
    }
}

fn check_items(n: usize, max: usize, what: &str) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{n} {what} in one request is more than this server's limit of {max}"),
        ));
    }
    Ok(())
}

/// The flag change a flags route's query asks for: exactly one of add, remove and set.
fn flag_change(query: Option<&str>) -> Result<(FlagOp, Vec<FlagName>), ApiError> {
    let q = Query::parse(query, &["add", "remove", "set"])?;
    let (op, list) = match (q.get("add"), q.get("remove"), q.get("set")) {
        (Some(l), None, None) => (FlagOp::Add, l),
        (None, Some(l), None) => (FlagOp::Remove, l),
        (None, None, Some(l)) => (FlagOp::Set, l),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of ?add=FLAGS, ?remove=FLAGS or ?set=FLAGS",
            ))
        }
    };
    let flags = parse_flag_list(list).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((op, flags))
}

/// The messages an expunge or a flag change on many names: `{"uids": [...]}` or
/// `{"uid_set": "1:5,*"}`, checked before the store is reached.
fn selection(body: &Bytes, max_items: usize) -> Result<UidSelection, ApiError> {
    let request: ExpungeRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"uids\": [1, 2]}} or {{\"uid_set\": \"1:5,7\"}}: {e}"
        ))
    })?;
    match (request.uids.is_empty(), request.uid_set) {
        (false, None) => {
            check_items(request.uids.len(), max_items, "UIDs")?;
            Ok(UidSelection::Each(request.uids))
        }
        (true, Some(set)) => UidSet::parse(&set)
            .map(UidSelection::Set)
            .map_err(|e| ApiError::bad_request(e.to_string())),
        (true, None) => Err(ApiError::bad_request("uids must not be empty")),
        (false, Some(_)) => Err(ApiError::bad_request("give uids or uid_set, not both")),
    }
}

fn is_batch(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(BATCH_CONTENT_TYPE))
}

/// A batch: each message as a 4-byte big-endian length followed by that many bytes.
pub(crate) fn encode_batch<B: AsRef<[u8]>>(messages: &[B]) -> Result<Vec<u8>, String> {
    let total: usize = messages.iter().map(|m| 4 + m.as_ref().len()).sum();
    let mut out = Vec::with_capacity(total);
    for m in messages {
        let m = m.as_ref();
        let len = u32::try_from(m.len())
            .map_err(|_| format!("a message of {} bytes is too large to send", m.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(m);
    }
    Ok(out)
}

pub(crate) fn decode_batch(body: &Bytes, max_items: usize) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let Some(len) = body.get(at..at + 4) else {
            return Err(ApiError::bad_request(format!(
                "the batch is truncated: {} stray bytes at offset {at} where a 4-byte length belongs",
                body.len() - at
            )));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "the batch is truncated: message {} says {len} bytes, {} are left",
                    out.len() + 1,
                    body.len() - start
                ))
            })?;
        check_items(out.len() + 1, max_items, "messages")?;
        out.push(body.slice(start..end));
        at = end;
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("the batch holds no message"));
    }
    Ok(out)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_and_rejects_truncation() {
        let messages: Vec<&[u8]> = vec![b"one", b"", b"three"];
        let body = Bytes::from(encode_batch(&messages).expect("encode"));
        let back = decode_batch(&body, 10).expect("decode");
        assert_eq!(back, [&b"one"[..], b"", b"three"]);
        for cut in 1..body.len() {
            let short = body.slice(..cut);
            // Some cuts land on a message boundary and decode to fewer messages; none panic.
            if let Ok(got) = decode_batch(&short, 10) {
                assert!(got.len() < 3);
            }
        }
        assert!(decode_batch(&Bytes::new(), 10).is_err());
        let err = decode_batch(&body, 2).expect_err("over the item limit");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert_eq!(
            decode_batch(&huge, 10).expect_err("truncated").status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn routes_parse_from_percent_encoded_paths() {
        assert!(matches!(
            Route::parse("/v1/mail/users/al%20ice/mailboxes/Work%2F2024/messages/7/flags"),
            Ok(Route::Flags { user, mailbox, uid: 7 }) if user == "al ice" && mailbox == "Work/2024"
        ));
        for bad in [
            "/v1/mail",
            "/v1/mail/",
            "/v1/mail/users",
            "/v1/mail/users/a/mailboxes/b/other",
            "/v1/mail/root/",
        ] {
            let e = Route::parse(bad).err().expect(bad);
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{bad}");
        }
        let e = Route::parse("/v1/mail/users/a/mailboxes/b/messages/x1")
            .err()
            .expect("bad uid");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
