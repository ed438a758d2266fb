//! Named points inside a Maildir pass where a test can act: `serve` SIGKILLs itself at one when
//! started with `MERKMAIL_FAULT` (the crash tests, instead of killing after a delay), and an
//! in-process test makes there the write another thread of the daemon could make at that
//! moment (a peer's move while the pass works on the disk).
//!
//! The hook belongs to the thread that runs the pass ([`with_hook`]), so tests running side by
//! side in one process never see each other's hooks. With no hook a point costs one
//! thread-local read.

use std::cell::RefCell;
use std::rc::Rc;

/// A moment inside a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassPoint {
    /// Files no one had numbered got their UIDs (the uidlist lines are written), and the
    /// index has not taken them yet.
    Numbered,
    /// A folder's disk → index writes (new mail, flag changes, expunges seen on disk) are
    /// committed; its index → disk half has not begun and its print is not kept.
    Imported,
    /// A batch of deliveries (one message at least) is renamed into `cur/`; its uidlist lines
    /// are not written yet.
    Renamed,
    /// A folder's disk work (unlinks, flag renames, deliveries: at least one) is done and its
    /// lock released; the pass has not recorded it in the index (no file row, no print, still
    /// owed).
    Placed,
}

impl PassPoint {
    /// Every point, in the order a pass reaches them.
    pub const ALL: [PassPoint; 4] = [
        PassPoint::Numbered,
        PassPoint::Imported,
        PassPoint::Renamed,
        PassPoint::Placed,
    ];

    /// The name `MERKMAIL_FAULT` uses.
    pub fn name(self) -> &'static str {
        match self {
            PassPoint::Numbered => "numbered",
            PassPoint::Imported => "imported",
            PassPoint::Renamed => "renamed",
            PassPoint::Placed => "placed",
        }
    }
}

/// Where to crash: the `nth` time (1-based) a pass reaches `point`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub point: PassPoint,
    pub nth: u32,
}

/// Why a `MERKMAIL_FAULT` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("MERKMAIL_FAULT {given:?}: want <point>[@<n>], point one of numbered, imported, renamed, placed, n from 1")]
pub struct FaultError {
    pub given: String,
}

impl Fault {
    /// Parses `<point>` or `<point>@<n>` (`renamed@2`: the second time a batch is renamed).
    pub fn parse(text: &str) -> Result<Fault, FaultError> {
        let refused = || FaultError {
            given: text.to_string(),
        };
        let (name, nth) = match text.split_once('@') {
            Some((name, n)) => (name, n.parse::<u32>().map_err(|_| refused())?),
            None => (text, 1),
        };
        let point = PassPoint::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(refused)?;
        if nth == 0 {
            return Err(refused());
        }
        Ok(Fault { point, nth })
    }
}

type Hook = Rc<dyn Fn(PassPoint)>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Runs `f` with `hook` called at every [`PassPoint`] this thread reaches meanwhile; the hook
/// that was there before is back afterwards.
pub fn with_hook<R>(hook: impl Fn(PassPoint) + 'static, f: impl FnOnce() -> R) -> R {
    let before = HOOK.with(|h| h.borrow_mut().replace(Rc::new(hook)));
    // Put back even if `f` panics, so a failed test leaves no hook on a reused thread.
    struct Restore(Option<Hook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            HOOK.with(|h| *h.borrow_mut() = before);
        }
    }
    let _restore = Restore(before);
    f()
}

/// Whether this thread has a hook: a pass that would spread users over threads runs them
/// here instead, one after the other, so that the hook sees every point.
pub(crate) fn hooked() -> bool {
    HOOK.with(|h| h.borrow().is_some())
}

/// Called by the pass at `point`.
pub(crate) fn reached(point: PassPoint) {
    // Cloned out first: the hook may itself run code that reaches a point.
    let hook = HOOK.with(|h| h.borrow().clone());
    if let Some(hook) = hook {
        hook(point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_fault_is_a_point_and_a_count() {
        let check = |text: &str, want: Option<(PassPoint, u32)>| {
            let got = Fault::parse(text).ok().map(|f| (f.point, f.nth));
            assert_eq!(got, want, "{text}");
        };
        check("renamed", Some((PassPoint::Renamed, 1)));
        check("imported@3", Some((PassPoint::Imported, 3)));
        check("placed@1", Some((PassPoint::Placed, 1)));
        check("numbered", Some((PassPoint::Numbered, 1)));
        check("placed@0", None);
        check("placed@", None);
        check("placed@x", None);
        check("Renamed", None);
        check("", None);
        check("@2", None);
    }

    #[test]
    fn a_hook_sees_the_points_of_its_own_thread_only_and_is_removed_after() {
        let seen = Rc::new(Cell::new(0));
        let count = Rc::clone(&seen);
        with_hook(
            move |p| {
                assert_eq!(p, PassPoint::Placed);
                count.set(count.get() + 1);
            },
            || {
                reached(PassPoint::Placed);
                std::thread::spawn(|| reached(PassPoint::Imported))
                    .join()
                    .expect("other thread");
                reached(PassPoint::Placed);
            },
        );
        reached(PassPoint::Imported);
        assert_eq!(seen.get(), 2);
    }
}
