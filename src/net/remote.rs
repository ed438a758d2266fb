//! The mail API as typed, blocking calls: what the CLI uses when given `--url`. Each call is
//! one request and answers with the same views ([`super::json`]) the local commands build, so
//! the CLI prints the same bytes either way.

use super::client::{expect_success, BlockingClient, ClientConfig, ClientError};
use super::json::{
    Appended, Created, ExpungeRequest, Expunged, Flags, FlagsChanged, MailboxView, MessageView,
    RootView, StatsView,
};
use super::mail::{encode_batch, BATCH_CONTENT_TYPE};
use crate::model::{FlagName, FlagOp, MailboxGuid, UidSelection};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;

/// Everything but RFC 3986's unreserved characters is escaped, `/` and `+` included, so a
/// mailbox called `Work/2024` stays one path segment and a `+` is never read as a space.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment or query value, percent-encoded.
pub fn encode(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

/// A flag list as the API takes it: names joined with commas.
fn flag_list(flags: &[FlagName]) -> String {
    flags
        .iter()
        .map(FlagName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// A flag change's query key.
fn op_name(op: FlagOp) -> &'static str {
    match op {
        FlagOp::Add => "add",
        FlagOp::Remove => "remove",
        FlagOp::Set => "set",
    }
}

/// The mail API of one server.
pub struct MailClient {
    http: BlockingClient,
}

impl MailClient {
    pub fn new(url: &str, token: Option<&str>) -> Result<MailClient, ClientError> {
        Self::with_config(url, token, ClientConfig::default())
    }

    pub fn with_config(
        url: &str,
        token: Option<&str>,
        config: ClientConfig,
    ) -> Result<MailClient, ClientError> {
        Ok(MailClient {
            http: BlockingClient::new(url, token, config)?,
        })
    }

    fn mailbox_path(user: &str, mailbox: &str) -> String {
        format!(
            "/v1/mail/users/{}/mailboxes/{}",
            encode(user),
            encode(mailbox)
        )
    }

    fn json<T: DeserializeOwned>(&self, path: &str, body: Bytes) -> Result<T, ClientError> {
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: self.http.client().url(path),
            reason: e.to_string(),
        })
    }

    fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        expect_success(&self.http.client().url(path), self.http.get(path)?)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.get_bytes(path)?;
        self.json(path, body)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let answer = self.http.post(path, content_type, body)?;
        let body = expect_success(&self.http.client().url(path), answer)?;
        self.json(path, body)
    }

    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.post(path, "application/octet-stream", Vec::new())
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{name}`.
    pub fn create_mailbox(&self, user: &str, name: &str) -> Result<MailboxGuid, ClientError> {
        let created: Created = self.post_empty(&Self::mailbox_path(user, name))?;
        Ok(created.guid)
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{name}/rename?to={new}`.
    pub fn rename_mailbox(&self, user: &str, name: &str, new: &str) -> Result<(), ClientError> {
        let path = format!(
            "{}/rename?to={}",
            Self::mailbox_path(user, name),
            encode(new)
        );
        let _: serde_json::Value = self.post_empty(&path)?;
        Ok(())
    }

    /// `DELETE /v1/mail/users/{user}/mailboxes/{name}`.
    pub fn delete_mailbox(&self, user: &str, name: &str) -> Result<(), ClientError> {
        let path = Self::mailbox_path(user, name);
        expect_success(&self.http.client().url(&path), self.http.delete(&path)?)?;
        Ok(())
    }

    /// `GET /v1/mail/users/{user}/mailboxes`.
    pub fn list_mailboxes(&self, user: &str) -> Result<Vec<MailboxView>, ClientError> {
        self.get(&format!("/v1/mail/users/{}/mailboxes", encode(user)))
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{mailbox}/messages?flags=…&date=…`: one message as
    /// the raw body, several as one batch (one transaction either way). Returns the UIDs.
    pub fn append(
        &self,
        user: &str,
        mailbox: &str,
        messages: Vec<Vec<u8>>,
        flags: &[FlagName],
        internal_date: i64,
    ) -> Result<Vec<u32>, ClientError> {
        let path = format!(
            "{}/messages?date={internal_date}",
            Self::mailbox_path(user, mailbox)
        );
        self.append_at(path, messages, flags)
    }

    /// Like [`MailClient::append`], with each message's own INTERNALDATE (`?dates=D1,D2,…`),
    /// still one request and one transaction.
    pub fn append_dated(
        &self,
        user: &str,
        mailbox: &str,
        messages: Vec<Vec<u8>>,
        flags: &[FlagName],
        internal_dates: &[i64],
    ) -> Result<Vec<u32>, ClientError> {
        let dates: Vec<String> = internal_dates.iter().map(i64::to_string).collect();
        let path = format!(
            "{}/messages?dates={}",
            Self::mailbox_path(user, mailbox),
            encode(&dates.join(","))
        );
        self.append_at(path, messages, flags)
    }

    /// Posts the messages to `path` (an append path with its date already in the query).
    fn append_at(
        &self,
        mut path: String,
        messages: Vec<Vec<u8>>,
        flags: &[FlagName],
    ) -> Result<Vec<u32>, ClientError> {
        if !flags.is_empty() {
            path.push_str("&flags=");
            path.push_str(&encode(&flag_list(flags)));
        }
        let (content_type, body) = match <[Vec<u8>; 1]>::try_from(messages) {
            Ok([one]) => ("message/rfc822", one),
            Err(many) => {
                let body = encode_batch(&many).map_err(|reason| ClientError::Url {
                    url: self.http.client().url(&path),
                    reason,
                })?;
                (BATCH_CONTENT_TYPE, body)
            }
        };
        let appended: Appended = self.post(&path, content_type, body)?;
        Ok(appended.uids)
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{mailbox}/messages/{uid}/flags?add|remove|set=…`.
    /// Returns the flags set afterwards.
    pub fn set_flags(
        &self,
        user: &str,
        mailbox: &str,
        uid: u32,
        op: FlagOp,
        flags: &[FlagName],
    ) -> Result<Vec<String>, ClientError> {
        let path = format!(
            "{}/messages/{uid}/flags?{}={}",
            Self::mailbox_path(user, mailbox),
            op_name(op),
            encode(&flag_list(flags))
        );
        let now: Flags = self.post_empty(&path)?;
        Ok(now.flags)
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{mailbox}/expunge` with `{"uids": […]}`.
    pub fn expunge(&self, user: &str, mailbox: &str, uids: &[u32]) -> Result<usize, ClientError> {
        self.expunge_in(user, mailbox, &UidSelection::Each(uids.to_vec()))
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{mailbox}/expunge` with `{"uids": […]}` or
    /// `{"uid_set": "…"}`: one request, one transaction.
    pub fn expunge_in(
        &self,
        user: &str,
        mailbox: &str,
        selection: &UidSelection,
    ) -> Result<usize, ClientError> {
        let path = format!("{}/expunge", Self::mailbox_path(user, mailbox));
        let body = self.selection_body(&path, selection)?;
        let done: Expunged = self.post(&path, "application/json", body)?;
        Ok(done.expunged)
    }

    /// `POST /v1/mail/users/{user}/mailboxes/{mailbox}/flags?add|remove|set=…` with the
    /// messages in the body as for [`MailClient::expunge_in`]: one request, one transaction.
    /// Returns each message's UID and flags afterwards, in UID order.
    pub fn set_flags_in(
        &self,
        user: &str,
        mailbox: &str,
        selection: &UidSelection,
        op: FlagOp,
        flags: &[FlagName],
    ) -> Result<Vec<(u32, Vec<String>)>, ClientError> {
        let path = format!(
            "{}/flags?{}={}",
            Self::mailbox_path(user, mailbox),
            op_name(op),
            encode(&flag_list(flags))
        );
        let body = self.selection_body(&path, selection)?;
        let changed: FlagsChanged = self.post(&path, "application/json", body)?;
        Ok(changed
            .messages
            .into_iter()
            .map(|m| (m.uid, m.flags))
            .collect())
    }

    /// The JSON body naming the messages: `{"uids": […]}` or `{"uid_set": "…"}`.
    fn selection_body(&self, path: &str, selection: &UidSelection) -> Result<Vec<u8>, ClientError> {
        let request = match selection {
            UidSelection::Each(uids) => ExpungeRequest {
                uids: uids.clone(),
                uid_set: None,
            },
            UidSelection::Set(set) => ExpungeRequest {
                uids: Vec::new(),
                uid_set: Some(set.to_string()),
            },
        };
        serde_json::to_vec(&request).map_err(|e| ClientError::Decode {
            url: self.http.client().url(path),
            reason: e.to_string(),
        })
    }

    /// `GET /v1/mail/users/{user}/messages`, or `…/mailboxes/{mailbox}/messages`.
    pub fn list_messages(
        &self,
        user: &str,
        mailbox: Option<&str>,
    ) -> Result<Vec<MessageView>, ClientError> {
        match mailbox {
            None => self.get(&format!("/v1/mail/users/{}/messages", encode(user))),
            Some(m) => self.get(&format!("{}/messages", Self::mailbox_path(user, m))),
        }
    }

    /// `GET /v1/mail/users/{user}/mailboxes/{mailbox}/messages/{uid}`: the raw bytes.
    pub fn fetch(&self, user: &str, mailbox: &str, uid: u32) -> Result<Bytes, ClientError> {
        self.get_bytes(&format!(
            "{}/messages/{uid}",
            Self::mailbox_path(user, mailbox)
        ))
    }

    /// `GET /v1/mail/root`.
    pub fn root(&self) -> Result<RootView, ClientError> {
        self.get("/v1/mail/root")
    }

    /// `GET /v1/mail/stats`.
    pub fn stats(&self) -> Result<StatsView, ClientError> {
        self.get("/v1/mail/stats")
    }
}

/// `GET /status` of the server behind `client`: the snapshot's JSON, as the server sent it
/// (`merkmail status` prints it or its terminal view).
pub fn status_json(client: &BlockingClient) -> Result<Bytes, ClientError> {
    let answer = client.get(super::routes::STATUS)?;
    expect_success(&client.client().url(super::routes::STATUS), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_escape_everything_but_unreserved() {
        assert_eq!(encode("Work/2024"), "Work%2F2024");
        assert_eq!(encode("a+b c"), "a%2Bb%20c");
        assert_eq!(encode("\\Seen,$L"), "%5CSeen%2C%24L");
        assert_eq!(encode("café-1_2.~"), "caf%C3%A9-1_2.~");
    }
}
