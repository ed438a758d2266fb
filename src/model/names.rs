//! Validation of user and mailbox names: the only names that may enter the store.

use std::fmt;
use thiserror::Error;

pub const INBOX: &str = "INBOX";

/// Why a name was refused. Refusing changes nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("user name {0:?} is invalid: {1}")]
    User(String, &'static str),
    #[error("mailbox name {0:?} is invalid: {1}")]
    Mailbox(String, &'static str),
}

/// Checks a user name: 1–255 bytes of UTF-8, no control characters, no '/'.
pub fn validate_user(name: &str) -> Result<(), NameError> {
    let bad = |why| Err(NameError::User(name.to_string(), why));
    if name.is_empty() || name.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    if name.contains('/') {
        return bad("'/' is not allowed");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not user names");
    }
    Ok(())
}

/// Whether `id` can name a node: 1 to 64 characters from A-Z a-z 0-9 . _ - (so it holds no
/// 00 byte, which the store's inbound keys rely on).
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A validated mailbox name: UTF-8, '/' as the hierarchy separator, 1–1024 bytes, no empty
/// components, and INBOX spelled in upper case whatever case it was given in (IMAP treats
/// INBOX case-insensitively; every other name is case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxName(String);

impl MailboxName {
    pub fn parse(name: &str) -> Result<MailboxName, NameError> {
        let bad = |why| Err(NameError::Mailbox(name.to_string(), why));
        if name.is_empty() || name.len() > 1024 {
            return bad("must be 1 to 1024 bytes");
        }
        if name.chars().any(char::is_control) {
            return bad("control characters are not allowed");
        }
        if name.split('/').any(|part| part.is_empty()) {
            return bad(
                "empty hierarchy components (leading, trailing or doubled '/') are not allowed",
            );
        }
        if name.split('/').any(|part| part == "." || part == "..") {
            return bad("'.' and '..' are not mailbox names");
        }
        let canonical = match name.split_once('/') {
            None if name.eq_ignore_ascii_case(INBOX) => INBOX.to_string(),
            Some((first, rest)) if first.eq_ignore_ascii_case(INBOX) => format!("{INBOX}/{rest}"),
            _ => name.to_string(),
        };
        Ok(MailboxName(canonical))
    }

    pub fn inbox() -> MailboxName {
        MailboxName(INBOX.to_string())
    }

    pub fn is_inbox(&self) -> bool {
        self.0 == INBOX
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` lies strictly below `parent` in the hierarchy.
    pub fn is_below(&self, parent: &MailboxName) -> bool {
        self.0.len() > parent.0.len() + 1
            && self.0.starts_with(parent.as_str())
            && self.0.as_bytes()[parent.0.len()] == b'/'
    }
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for good in ["alice", "bob@example.org", "Zoë"] {
            assert_eq!(validate_user(good), Ok(()), "{good}");
        }
        for bad in ["", "a/b", "a\nb", "a\0b", "..", &"x".repeat(256)] {
            assert!(validate_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mailbox_names() {
        let check = |input: &str, expected: Option<&str>| {
            let got = MailboxName::parse(input).ok();
            assert_eq!(got.as_ref().map(MailboxName::as_str), expected, "{input:?}");
        };
        check("INBOX", Some("INBOX"));
        check("inbox", Some("INBOX"));
        check("Inbox/Sub", Some("INBOX/Sub"));
        check("Archive/2024", Some("Archive/2024"));
        check("Entwürfe", Some("Entwürfe"));
        check("", None);
        check("/abs", None);
        check("a//b", None);
        check("a/", None);
        check("a/../b", None);
        check("tab\there", None);
    }

    #[test]
    fn hierarchy() {
        let a = MailboxName::parse("a").unwrap();
        assert!(MailboxName::parse("a/b").unwrap().is_below(&a));
        assert!(!MailboxName::parse("ab").unwrap().is_below(&a));
        assert!(!a.is_below(&a));
    }
}
