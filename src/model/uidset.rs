//! IMAP sequence sets of UIDs (RFC 9051 §9 `sequence-set`, as `UID STORE`/`UID EXPUNGE` take
//! them): `1:5,7,9:*`, parsed once into a type that cannot hold an invalid set.

use std::fmt;

/// One end of a range: a UID, or `*`, the largest UID in the mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UidBound {
    Uid(u32),
    Largest,
}

/// A parsed sequence set of UIDs. Like IMAP, it names the existing messages among the UIDs
/// it covers; [`UidSet::resolve`] picks those out of a mailbox's UIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UidSet {
    /// Each element as written: a single UID is a range with equal ends. `5:1` is kept as
    /// written and read as `1:5`.
    ranges: Vec<(UidBound, UidBound)>,
}

/// The messages a command names: plain UIDs, each of which must exist (what `expunge 1 2`
/// always meant), or a sequence set, which names the existing messages among its UIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UidSelection {
    Each(Vec<u32>),
    Set(UidSet),
}

/// Why a sequence set was refused; nothing is read or changed when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidSetError {
    #[error("empty UID set")]
    Empty,
    #[error("invalid UID set {set:?}: {element:?} is not a UID, `*` or a range A:B")]
    Malformed { set: String, element: String },
    #[error("invalid UID set {set:?}: UIDs start at 1")]
    Zero { set: String },
}

impl UidSet {
    /// Parses `1:5,7,9:*`. Every element is a UID (1 to 2³²−1), `*`, or two of those joined
    /// by `:`; empty elements, `0` and anything else are refused.
    pub fn parse(text: &str) -> Result<UidSet, UidSetError> {
        if text.is_empty() {
            return Err(UidSetError::Empty);
        }
        let malformed = |element: &str| UidSetError::Malformed {
            set: text.to_string(),
            element: element.to_string(),
        };
        let bound = |part: &str, element: &str| -> Result<UidBound, UidSetError> {
            if part == "*" {
                return Ok(UidBound::Largest);
            }
            // IMAP's nz-number: digits only, no sign, no leading zero.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(element));
            }
            match part.parse::<u32>() {
                Ok(0) => Err(UidSetError::Zero {
                    set: text.to_string(),
                }),
                Ok(_) if part.starts_with('0') => Err(malformed(element)),
                Ok(uid) => Ok(UidBound::Uid(uid)),
                Err(_) => Err(malformed(element)),
            }
        };
        let mut ranges = Vec::new();
        for element in text.split(',') {
            let range = match element.split_once(':') {
                Some((a, b)) => (bound(a, element)?, bound(b, element)?),
                None => {
                    let one = bound(element, element)?;
                    (one, one)
                }
            };
            ranges.push(range);
        }
        Ok(UidSet { ranges })
    }

    /// The union of several sets (the command line takes many).
    pub fn union(sets: impl IntoIterator<Item = UidSet>) -> UidSet {
        UidSet {
            ranges: sets.into_iter().flat_map(|s| s.ranges).collect(),
        }
    }

    /// The UIDs of `existing` (a mailbox's UIDs, ascending) that the set names, ascending.
    /// `*` is the largest of them; with none, the set names nothing.
    pub fn resolve(&self, existing: &[u32]) -> Vec<u32> {
        let Some(&largest) = existing.last() else {
            return Vec::new();
        };
        let value = |b: UidBound| match b {
            UidBound::Uid(u) => u,
            UidBound::Largest => largest,
        };
        let spans: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (value(a), value(b));
                (a.min(b), a.max(b))
            })
            .collect();
        existing
            .iter()
            .copied()
            .filter(|uid| spans.iter().any(|&(lo, hi)| lo <= *uid && *uid <= hi))
            .collect()
    }
}

impl fmt::Display for UidSet {
    /// The set in IMAP's syntax, so it can travel in a request and be parsed again.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bound = |b: UidBound| match b {
            UidBound::Uid(u) => u.to_string(),
            UidBound::Largest => "*".to_string(),
        };
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{}", bound(a))?;
            } else {
                write!(f, "{}:{}", bound(a), bound(b))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(set: &str, existing: &[u32], expected: &[u32]) {
        let parsed = UidSet::parse(set).expect(set);
        assert_eq!(
            parsed.resolve(existing),
            expected,
            "{set} over {existing:?}"
        );
        assert_eq!(
            UidSet::parse(&parsed.to_string()).expect("round trip"),
            parsed
        );
    }

    #[test]
    fn sets_name_existing_uids() {
        let mail = [1, 2, 3, 5, 7, 9, 12];
        check("1:5,7,9:*", &mail, &[1, 2, 3, 5, 7, 9, 12]);
        check("5:1", &mail, &[1, 2, 3, 5]);
        check("*", &mail, &[12]);
        check("*:10", &mail, &[12]);
        check("4", &mail, &[]);
        check("100:200", &mail, &[]);
        check("3,3,2:3", &mail, &[2, 3]);
        check("1:*", &[], &[]);
        check("4294967295", &[4294967295], &[4294967295]);
    }

    #[test]
    fn invalid_sets_are_refused() {
        for bad in [
            "",
            "0",
            "1:",
            ":1",
            "a",
            "1,",
            ",1",
            "1:0",
            "1::2",
            "-1",
            "+1",
            "01",
            "4294967296",
            " 1",
        ] {
            assert!(UidSet::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(UidSet::parse(""), Err(UidSetError::Empty));
        assert!(matches!(UidSet::parse("0"), Err(UidSetError::Zero { .. })));
    }
}
