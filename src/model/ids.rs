//! Identifiers and content hashes as newtypes, so a GUID is never passed where a digest belongs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        // Hex in human-readable formats (JSON), raw bytes in binary ones (postcard).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(d).map($name)
                }
            }
        }

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|e| {
                    format!("{} must be {} hex digits: {e}", stringify!($name), 2 * $len)
                })?;
                Ok($name(out))
            }
        }
    };
}

hex_id!(
    /// A mailbox's identity: stable across renames, the same on every replica.
    MailboxGuid,
    16
);
hex_id!(
    /// blake3 of a message's raw bytes: the identity the tree and the clash rules use.
    Digest,
    32
);
hex_id!(
    /// MD5 of a message's raw bytes: the interoperable content id (UIDL, "UID/MD5" pairs).
    Md5,
    16
);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }
}

impl Md5 {
    pub fn of(bytes: &[u8]) -> Md5 {
        use md5::Digest as _;
        Md5(md5::Md5::digest(bytes).into())
    }
}

/// A body's bytes with their digest, hashed once, when it was made: what staging takes, so
/// that a body checked against the digest it was asked for is not hashed again to be
/// stored. The two cannot be set apart: the only ways to make one hash the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedBody<'a> {
    digest: Digest,
    bytes: &'a [u8],
}

impl<'a> CheckedBody<'a> {
    pub fn new(bytes: &'a [u8]) -> CheckedBody<'a> {
        CheckedBody {
            digest: Digest::of(bytes),
            bytes,
        }
    }

    /// The bytes, if they hash to `expected`.
    pub fn matching(bytes: &'a [u8], expected: &Digest) -> Option<CheckedBody<'a>> {
        Some(CheckedBody::new(bytes)).filter(|b| b.digest == *expected)
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl MailboxGuid {
    /// A GUID laid out as Dovecot's `guid_128_generate` lays one out: the creation time's
    /// nanoseconds (little-endian, below 10^9), its seconds since the epoch (little-endian),
    /// then 8 bytes that make it unique (Dovecot: its pid and a hash of its host name). A
    /// mailbox's creation time is then a property of its GUID, which never changes and which
    /// every replica holds alike: the same-name rule ranks mailboxes by it
    /// ([`crate::model::same_name_rank`]). `nanos` is taken modulo 10^9.
    pub fn from_time(secs: u32, nanos: u32, unique: [u8; 8]) -> MailboxGuid {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&(nanos % 1_000_000_000).to_le_bytes());
        out[4..8].copy_from_slice(&secs.to_le_bytes());
        out[8..].copy_from_slice(&unique);
        MailboxGuid(out)
    }

    /// The creation time (seconds, nanoseconds) this GUID carries in Dovecot's layout
    /// ([`MailboxGuid::from_time`]), or `None` when its first four bytes are no nanosecond
    /// count (10^9 or more): a GUID of another layout, such as the random ones older merkmail
    /// versions made (about 77 % of them are told apart this way) or INBOX's derived one.
    pub fn created(&self) -> Option<(u32, u32)> {
        let g = self.0;
        let nanos = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
        let secs = u32::from_le_bytes([g[4], g[5], g[6], g[7]]);
        (nanos < 1_000_000_000).then_some((secs, nanos))
    }
}

/// INBOX's GUID is derived from the user name, so two servers that each created the same
/// user's INBOX on their own hold one mailbox and reconcile it instead of duplicating it.
pub fn inbox_guid(user: &str) -> MailboxGuid {
    let mut hasher = blake3::Hasher::new_derive_key("merkmail 2026 inbox guid");
    hasher.update(user.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    MailboxGuid(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_guid_depends_only_on_the_user() {
        assert_eq!(inbox_guid("alice"), inbox_guid("alice"));
        assert_ne!(inbox_guid("alice"), inbox_guid("bob"));
    }

    #[test]
    fn a_guid_carries_its_creation_time_in_dovecots_layout() {
        // Dovecot 2.3's GUID of a folder made at 2023-11-14 22:13:20.5 UTC: nanoseconds and
        // seconds little-endian, then pid and host hash.
        let dovecot: MailboxGuid = "0065cd1d00f153654d2f0000a1b2c3d4".parse().expect("hex");
        assert_eq!(dovecot.created(), Some((1_700_000_000, 500_000_000)));
        for (secs, nanos) in [(0, 0), (1_700_000_000, 999_999_999), (u32::MAX, 1)] {
            let g = MailboxGuid::from_time(secs, nanos, [7; 8]);
            assert_eq!(g.created(), Some((secs, nanos)));
        }
        assert_eq!(
            MailboxGuid::from_time(5, 1_000_000_001, [0; 8]).created(),
            Some((5, 1))
        );
        assert_eq!(MailboxGuid([0xff; 16]).created(), None);
    }

    #[test]
    fn md5_matches_the_rfc_1321_test_vector() {
        assert_eq!(Md5::of(b"abc").to_hex(), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn hex_round_trip_and_bad_input() {
        let g = inbox_guid("x");
        assert_eq!(g.to_hex().parse::<MailboxGuid>(), Ok(g));
        assert!("zz".parse::<MailboxGuid>().is_err());
        assert!("00".parse::<Digest>().is_err());
    }
}
