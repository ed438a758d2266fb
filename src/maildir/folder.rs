//! Mailbox names ⇄ Maildir++ folder directory names, and the `subscriptions` file.
//!
//! merkmail names are UTF-8 with '/' between levels; Maildir++ keeps every folder as one flat
//! directory `.<a>.<b>` under the root, each level encoded in IMAP modified UTF-7 (Dovecot's
//! default, `mailbox_list_utf8 = no`). Because '.' is the on-disk separator, a level holding '.'
//! cannot be stored; we refuse it, as Dovecot does by default ("Character not allowed in mailbox
//! name: '.'"), rather than invent an escape that other tools would not read.

use crate::maildir::{utf7, MaildirError, INBOX};

/// Linux NAME_MAX: a Maildir++ folder is a single directory entry, so the whole encoded name
/// (every level) must fit in one.
const MAX_DIR_NAME_BYTES: usize = 255;

/// Why one level of a mailbox name cannot be stored, or `None` if it can.
fn component_problem(component: &str) -> Option<String> {
    if component.is_empty() {
        return Some("empty level (leading, trailing or doubled '/')".into());
    }
    if component == "." || component == ".." {
        return Some(format!("level {component:?} would escape the directory"));
    }
    if component.contains('.') {
        return Some(
            "'.' is the Maildir++ hierarchy separator and cannot appear in a level".into(),
        );
    }
    if let Some(c) = component.chars().find(|c| c.is_control()) {
        return Some(format!("control character {c:?}"));
    }
    None
}

/// The directory (relative to the Maildir root) that holds `mailbox`: "" for INBOX, else
/// `.` followed by the levels in modified UTF-7 joined with '.': "Sent/2024" → ".Sent.2024".
///
/// Refused: empty levels (so also a leading '/'), "." and "..", levels containing '.', NUL and
/// other control characters, case variants of "INBOX" other than "INBOX" itself (IMAP treats
/// them as the inbox, so storing one as a folder would be ambiguous), and names whose encoding
/// exceeds 255 bytes.
pub fn folder_dir_name(mailbox: &str) -> Result<String, MaildirError> {
    let refuse = |problem: String| MaildirError::InvalidMailboxName {
        name: mailbox.to_string(),
        problem,
    };
    if mailbox == INBOX {
        return Ok(String::new());
    }
    if mailbox.eq_ignore_ascii_case(INBOX) {
        return Err(refuse("differs from \"INBOX\" only in case".into()));
    }
    let mut dir = String::with_capacity(mailbox.len() + 1);
    for component in mailbox.split('/') {
        if let Some(problem) = component_problem(component) {
            return Err(refuse(problem));
        }
        dir.push('.');
        dir.push_str(&utf7::encode(component));
    }
    if dir.len() > MAX_DIR_NAME_BYTES {
        return Err(refuse(format!(
            "encoded directory name is {} bytes, more than {MAX_DIR_NAME_BYTES}",
            dir.len()
        )));
    }
    Ok(dir)
}

/// The inverse of [`folder_dir_name`]: ".Sent.2024" → "Sent/2024", decoding modified UTF-7
/// strictly. An empty string is the root, i.e. INBOX.
pub fn mailbox_name_from_dir(dir_name: &str) -> Result<String, MaildirError> {
    let refuse = |problem: String| MaildirError::InvalidFolderDir {
        dir: dir_name.to_string(),
        problem,
    };
    if dir_name.is_empty() {
        return Ok(INBOX.to_string());
    }
    let Some(rest) = dir_name.strip_prefix('.') else {
        return Err(refuse("does not start with '.'".into()));
    };
    let mut levels = Vec::new();
    for encoded in rest.split('.') {
        let level =
            utf7::decode(encoded).map_err(|e| refuse(format!("level {encoded:?}: {}", e.0)))?;
        if level.contains('/') {
            return Err(refuse(format!("level {level:?} contains '/'")));
        }
        levels.push(level);
    }
    let name = levels.join("/");
    // Re-encoding must give the same directory: this rejects empty levels, controls, and any
    // other name that export would refuse, so import and export accept the same set.
    match folder_dir_name(&name) {
        Ok(back) if back == dir_name => Ok(name),
        Ok(back) => Err(refuse(format!(
            "not canonical (would be written as {back:?})"
        ))),
        Err(MaildirError::InvalidMailboxName { problem, .. }) => Err(refuse(problem)),
        Err(other) => Err(refuse(other.to_string())),
    }
}

/// Parses a `subscriptions` file into mailbox names. Dovecot 2.x writes version 2: a
/// "V\t2\n\n" header, then one name per line with levels separated by TAB (tab-escaped with
/// \x01) and each level in modified UTF-7. Older files (version 1) have no header and one name
/// per line, either in the on-disk form ("Sent.2024") or with '/' ("Sent/2024").
///
/// Lines that cannot be decoded are returned as errors beside the good names, never dropped in
/// silence.
pub fn parse_subscriptions(text: &str) -> (Vec<String>, Vec<String>) {
    let (body, v2) = match text.strip_prefix("V\t2\n\n") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let mut names = Vec::new();
    let mut errors = Vec::new();
    for line in body.lines() {
        if line.is_empty() {
            continue;
        }
        let levels: Result<Vec<String>, String> = if v2 {
            line.split('\t').map(tab_unescape).collect()
        } else if line.contains('/') {
            Ok(line.split('/').map(str::to_string).collect())
        } else {
            Ok(line.split('.').map(str::to_string).collect())
        };
        let decoded = levels.and_then(|levels| {
            if levels.len() == 1
                && levels
                    .first()
                    .is_some_and(|l| l.eq_ignore_ascii_case(INBOX))
            {
                return Ok(INBOX.to_string());
            }
            let dir: String = levels.iter().map(|l| format!(".{l}")).collect();
            mailbox_name_from_dir(&dir).map_err(|e| e.to_string())
        });
        match decoded {
            Ok(name) => names.push(name),
            Err(e) => errors.push(format!("subscriptions line {line:?}: {e}")),
        }
    }
    (names, errors)
}

/// Reverses Dovecot's tab escaping (\x01 followed by '1', 't', 'r' or 'n').
fn tab_unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            other => return Err(format!("bad tab escape \\x01{other:?}")),
        }
    }
    Ok(out)
}

/// Writes a `subscriptions` file (version 2) as Dovecot 2.3 does. Names must already be valid
/// ([`folder_dir_name`] accepts them); the encoded levels are printable ASCII, so no tab
/// escaping is ever needed.
pub fn format_subscriptions(names: &[String]) -> Result<String, MaildirError> {
    let mut out = String::from("V\t2\n\n");
    for name in names {
        if name == INBOX {
            out.push_str(INBOX);
        } else {
            let dir = folder_dir_name(name)?;
            let levels: Vec<&str> = dir.split('.').skip(1).collect();
            out.push_str(&levels.join("\t"));
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_map_to_directories() {
        let cases = [
            ("INBOX", ""),
            ("Sent", ".Sent"),
            ("Sent/2024", ".Sent.2024"),
            (
                "~peter/mail/台北/日本語",
                ".~peter.mail.&U,BTFw-.&ZeVnLIqe-",
            ),
            ("a&b", ".a&-b"),
            ("INBOX/sub", ".INBOX.sub"),
            ("with space", ".with space"),
        ];
        for (name, dir) in cases {
            assert_eq!(folder_dir_name(name).ok().as_deref(), Some(dir), "{name}");
            assert_eq!(
                mailbox_name_from_dir(dir).ok().as_deref(),
                Some(name),
                "{dir}"
            );
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        let long = "x".repeat(300);
        let bad = [
            "",
            "../x",
            "a/../b",
            "/abs",
            "a/",
            "a//b",
            ".",
            "..",
            "a/./b",
            "a.b",
            ".hidden",
            "nul\0byte",
            "tab\there",
            "line\nbreak",
            "del\u{7f}",
            "c1\u{85}",
            "inbox",
            "Inbox",
            long.as_str(),
        ];
        for name in bad {
            match folder_dir_name(name) {
                Err(MaildirError::InvalidMailboxName { .. }) => {}
                other => panic!("{name:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_directories_are_refused() {
        let bad = [
            "Sent",
            ".",
            "..",
            ".a..b",
            ".a.",
            ".&U,BTFw-&ZeVnLIqe-",
            ".&AGE-",
            ".&",
            ".p\u{e4}",
            ".&AAA-",
            ".INBOX",
            ".inbox",
            ".&AC8-",
        ];
        for dir in bad {
            match mailbox_name_from_dir(dir) {
                Err(MaildirError::InvalidFolderDir { .. }) => {}
                other => panic!("{dir:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn subscriptions_in_every_form() {
        let v2 = "V\t2\n\nSent\t2024\n&U,BTFw-\t&ZeVnLIqe-\nINBOX\na&-b\n";
        let (names, errors) = parse_subscriptions(v2);
        assert_eq!(names, ["Sent/2024", "台北/日本語", "INBOX", "a&b"]);
        assert!(errors.is_empty());
        let v1 = "Sent.2024\nArchive/Old\nINBOX\n\n.bad..\n";
        let (names, errors) = parse_subscriptions(v1);
        assert_eq!(names, ["Sent/2024", "Archive/Old", "INBOX"]);
        assert_eq!(errors.len(), 1);
        let list: Vec<String> = ["Sent/2024", "台北/日本語", "INBOX", "a&b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(format_subscriptions(&list).ok().as_deref(), Some(v2));
    }

    fn level() -> impl Strategy<Value = String> {
        "[^./\\p{Cc}]{1,12}".prop_filter("not INBOX", |s| !s.eq_ignore_ascii_case("inbox"))
    }

    proptest! {
        #[test]
        fn mailbox_dir_mailbox_round_trip(levels in prop::collection::vec(level(), 1..4)) {
            let name = levels.join("/");
            if let Ok(dir) = folder_dir_name(&name) {
                prop_assert_eq!(mailbox_name_from_dir(&dir).ok(), Some(name));
            } else {
                // Only the length limit may refuse these names.
                prop_assert!(utf7::encode(&name).len() > 200);
            }
        }

        #[test]
        fn dir_name_parsing_never_panics(dir in "\\.[&A-Za-z0-9+,.\\-]{0,30}") {
            let _ = mailbox_name_from_dir(&dir);
        }

        #[test]
        fn subscriptions_round_trip(names in prop::collection::btree_set(prop::collection::vec(level(), 1..3), 0..5)) {
            let names: Vec<String> = names.into_iter().map(|l| l.join("/")).collect();
            if let Ok(text) = format_subscriptions(&names) {
                let (back, errors) = parse_subscriptions(&text);
                prop_assert!(errors.is_empty());
                prop_assert_eq!(back, names);
            }
        }
    }
}
