//! System flags and keywords, each carrying the stamp of its last change (per-flag LWW).

use super::stamp::Stamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// The five system flags a message can carry, in their canonical spelling.
pub const SYSTEM_FLAGS: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("flag {0:?} is invalid: {1}")]
pub struct FlagError(pub String, pub &'static str);

/// A validated flag: one of [`SYSTEM_FLAGS`] (matched case-insensitively, stored canonically)
/// or a keyword (an IMAP atom such as `$Label1` or `Junk`, kept as given).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlagName(String);

impl FlagName {
    pub fn parse(raw: &str) -> Result<FlagName, FlagError> {
        let bad = |why| Err(FlagError(raw.to_string(), why));
        if let Some(rest) = raw.strip_prefix('\\') {
            return match SYSTEM_FLAGS.iter().find(|f| f[1..].eq_ignore_ascii_case(rest)) {
                Some(flag) => Ok(FlagName((*flag).to_string())),
                None if rest.eq_ignore_ascii_case("Recent") => {
                    bad("\\Recent is a session flag and cannot be stored")
                }
                None => bad("unknown system flag (expected \\Seen, \\Answered, \\Flagged, \\Deleted or \\Draft)"),
            };
        }
        if raw.is_empty() || raw.len() > 255 {
            return bad("keywords must be 1 to 255 bytes");
        }
        // IMAP atom characters: printable ASCII without atom-specials.
        if !raw
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"(){%*\"]".contains(&b))
        {
            return bad("keywords must be printable ASCII without spaces or any of (){%*\"]");
        }
        Ok(FlagName(raw.to_string()))
    }

    pub fn is_system(&self) -> bool {
        self.0.starts_with('\\')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a comma-separated flag list such as `\Seen,\Flagged,$Label1`; blanks are ignored.
pub fn parse_flag_list(list: &str) -> Result<Vec<FlagName>, FlagError> {
    let mut out: Vec<FlagName> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(FlagName::parse)
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// One flag's replicated state: whether it is set, and the stamp of the change that made it so.
/// A cleared flag keeps its entry, so a later merge knows the clear is newer than an old set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagState {
    pub set: bool,
    pub stamp: Stamp,
}

/// How a flag command changes a message's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOp {
    Add,
    Remove,
    /// Exactly these flags afterwards; every other set flag is cleared.
    Set,
}

/// A message's flags and keywords with their stamps, ordered by name (the hash depends on it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagSet(BTreeMap<FlagName, FlagState>);

impl FlagSet {
    /// Flags given at append time, all stamped with the append's stamp.
    pub fn initial(flags: &[FlagName], stamp: Stamp) -> FlagSet {
        FlagSet(
            flags
                .iter()
                .map(|f| (f.clone(), FlagState { set: true, stamp }))
                .collect(),
        )
    }

    /// Every entry, set or cleared, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&FlagName, &FlagState)> {
        self.0.iter()
    }

    /// The flags currently set, in name order.
    pub fn live(&self) -> impl Iterator<Item = &FlagName> {
        self.0.iter().filter(|(_, s)| s.set).map(|(f, _)| f)
    }

    pub fn is_set(&self, flag: &str) -> bool {
        self.0.iter().any(|(f, s)| s.set && f.as_str() == flag)
    }

    /// Applies a flag command stamped `stamp`. Returns whether anything changed; flags whose
    /// state does not change keep their old stamp, so a no-op leaves the root alone.
    pub fn apply(&mut self, op: FlagOp, flags: &[FlagName], stamp: Stamp) -> bool {
        let mut targets: BTreeMap<FlagName, bool> = BTreeMap::new();
        match op {
            FlagOp::Add => targets.extend(flags.iter().map(|f| (f.clone(), true))),
            FlagOp::Remove => targets.extend(flags.iter().map(|f| (f.clone(), false))),
            FlagOp::Set => {
                targets.extend(self.live().map(|f| (f.clone(), false)));
                targets.extend(flags.iter().map(|f| (f.clone(), true)));
            }
        }
        let mut changed = false;
        for (flag, want) in targets {
            let current = self.0.get(&flag).map(|s| s.set).unwrap_or(false);
            if current != want {
                self.0.insert(flag, FlagState { set: want, stamp });
                changed = true;
            }
        }
        changed
    }

    /// Per-flag last-writer-wins: for each flag the state with the larger stamp survives.
    /// Commutative, associative and idempotent, so replicas agree whatever order merges run in.
    pub fn merge(&mut self, other: &FlagSet) {
        for (flag, theirs) in &other.0 {
            match self.0.get(flag) {
                Some(ours) if ours.stamp >= theirs.stamp => {}
                _ => {
                    self.0.insert(flag.clone(), *theirs);
                }
            }
        }
    }

    /// The largest stamp of any entry (the message's last flag change), if any.
    pub fn latest(&self) -> Option<Stamp> {
        self.0.values().map(|s| s.stamp).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::model::stamp::test_stamp as st;

    #[test]
    fn parsing() {
        let check = |input: &str, expected: Result<&str, ()>| {
            let got = FlagName::parse(input)
                .map(|f| f.as_str().to_string())
                .map_err(|_| ());
            assert_eq!(got, expected.map(str::to_string), "{input:?}");
        };
        check("\\seen", Ok("\\Seen"));
        check("\\FLAGGED", Ok("\\Flagged"));
        check("$Label1", Ok("$Label1"));
        check("Junk", Ok("Junk"));
        check("\\Recent", Err(()));
        check("\\Foo", Err(()));
        check("two words", Err(()));
        check("paren(", Err(()));
        check("", Err(()));
        assert_eq!(parse_flag_list(" \\Seen, ,$X,\\seen").unwrap().len(), 2);
        assert!(parse_flag_list("\\Seen,bad flag").is_err());
    }

    #[test]
    fn set_clears_other_flags_and_keeps_unchanged_stamps() {
        let seen = FlagName::parse("\\Seen").unwrap();
        let flagged = FlagName::parse("\\Flagged").unwrap();
        let mut set = FlagSet::initial(&[seen.clone(), flagged.clone()], st(1));
        assert!(set.apply(FlagOp::Set, std::slice::from_ref(&seen), st(2)));
        assert_eq!(set.live().collect::<Vec<_>>(), vec![&seen]);
        assert_eq!(set.0[&seen].stamp, st(1));
        assert_eq!(
            set.0[&flagged],
            FlagState {
                set: false,
                stamp: st(2)
            }
        );
        assert!(
            !set.apply(FlagOp::Add, &[seen], st(3)),
            "adding a set flag is a no-op"
        );
    }

    fn arb_flagset() -> impl Strategy<Value = FlagSet> {
        prop::collection::btree_map(
            prop::sample::select(vec!["\\Seen", "\\Flagged", "$A", "$B"]),
            (any::<bool>(), 0u64..5, 0u32..3),
            0..4,
        )
        .prop_map(|m| {
            FlagSet(
                m.into_iter()
                    .map(|(k, (set, ms, node))| {
                        (
                            FlagName::parse(k).unwrap(),
                            FlagState {
                                set,
                                stamp: Stamp {
                                    ms,
                                    counter: 0,
                                    node,
                                },
                            },
                        )
                    })
                    .collect(),
            )
        })
    }

    proptest! {
        // Equal stamps with different states cannot be minted by real clocks (the node tag
        // differs), so the generator may produce ties; the property holds for distinct stamps.
        #[test]
        fn merge_is_commutative_associative_idempotent(a in arb_flagset(), b in arb_flagset(), c in arb_flagset()) {
            let distinct = |x: &FlagSet, y: &FlagSet| x.0.iter().all(|(k, s)| y.0.get(k).is_none_or(|t| t.stamp != s.stamp || t == s));
            prop_assume!(distinct(&a, &b) && distinct(&b, &c) && distinct(&a, &c));
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.merge(&a);
            prop_assert_eq!(aa, a);
        }
    }
}
