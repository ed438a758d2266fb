//! Byte keys for the record tables. `user 00 guid` prefixes keep a user's mailboxes, and a
//! mailbox's messages, next to each other; UIDs are big-endian so key order is UID order.

use crate::model::MailboxGuid;

pub fn mailbox(user: &str, guid: MailboxGuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 17);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&guid.0);
    k
}

pub fn message(user: &str, guid: MailboxGuid, uid: u32) -> Vec<u8> {
    let mut k = mailbox(user, guid);
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

/// Tombstones are keyed by UID and digest: a UID clash leaves two tombstones on one UID.
pub fn tombstone(
    user: &str,
    guid: MailboxGuid,
    uid: u32,
    digest: &crate::model::Digest,
) -> Vec<u8> {
    let mut k = message(user, guid, uid);
    k.extend_from_slice(&digest.0);
    k
}

/// The inclusive range of tombstone keys of a mailbox with UIDs in `first..=last`.
pub fn tombstone_range(user: &str, guid: MailboxGuid, first: u32, last: u32) -> (Vec<u8>, Vec<u8>) {
    let mut end = message(user, guid, last);
    end.extend_from_slice(&[0xff; 32]);
    (message(user, guid, first), end)
}

pub fn source(user: &str, guid: MailboxGuid, name: &str) -> Vec<u8> {
    let mut k = mailbox(user, guid);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The inclusive range of a user's mailbox keys.
pub fn user_range(user: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = user.as_bytes().to_vec();
    start.push(0);
    let mut end = start.clone();
    end.extend_from_slice(&[0xff; 17]);
    (start, end)
}

/// The inclusive range of message (or tombstone) keys of a mailbox with UIDs in `first..=last`.
pub fn uid_range(user: &str, guid: MailboxGuid, first: u32, last: u32) -> (Vec<u8>, Vec<u8>) {
    (message(user, guid, first), message(user, guid, last))
}

/// Splits a message key back into its parts.
pub fn split_message(key: &[u8]) -> Option<(String, MailboxGuid, u32)> {
    let nul = key.iter().position(|&b| b == 0)?;
    let user = std::str::from_utf8(&key[..nul]).ok()?.to_string();
    let rest = key.get(nul + 1..)?;
    if rest.len() != 20 {
        return None;
    }
    let guid: [u8; 16] = rest[..16].try_into().ok()?;
    let uid = u32::from_be_bytes(rest[16..].try_into().ok()?);
    Some((user, MailboxGuid(guid), uid))
}

/// Splits a tombstone key back into its user, mailbox and UID.
pub fn split_tombstone(key: &[u8]) -> Option<(String, MailboxGuid, u32)> {
    split_message(key.get(..key.len().checked_sub(32)?)?)
}

/// Splits a key that starts `user 00 guid` into them and the rest.
pub fn split_mailbox_prefix(key: &[u8]) -> Option<(String, MailboxGuid, &[u8])> {
    let nul = key.iter().position(|&b| b == 0)?;
    let user = std::str::from_utf8(&key[..nul]).ok()?.to_string();
    let guid: [u8; 16] = key.get(nul + 1..nul + 17)?.try_into().ok()?;
    Some((user, MailboxGuid(guid), key.get(nul + 17..)?))
}

/// Splits a mailbox key back into its parts.
pub fn split_mailbox(key: &[u8]) -> Option<(String, MailboxGuid)> {
    let nul = key.iter().position(|&b| b == 0)?;
    let user = std::str::from_utf8(&key[..nul]).ok()?.to_string();
    let guid: [u8; 16] = key.get(nul + 1..)?.try_into().ok()?;
    Some((user, MailboxGuid(guid)))
}
