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
