//! Where message bodies live. Behind a small trait so that a later backend can leave bodies
//! in a live Dovecot Maildir and keep only the index and the tree in redb.
//!
//! Also the marks on damaged bodies (bit rot): a body whose bytes no longer hash to its digest
//! is marked in DAMAGED until a good copy replaces it (from a peer, by the daemon's checker, or
//! from any change that brings the same body along) or it is freed.

use super::error::StoreError;
use super::tables::{BODIES, BODY_REFS, DAMAGED};
use crate::model::Digest;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// What [`BodyStore::for_each`] calls with each body: its digest and its bytes.
pub type BodyVisitor<'a> = dyn FnMut(Digest, &[u8]) -> Result<(), StoreError> + 'a;

/// Single-instance body storage with reference counts.
///
/// Calls happen inside the store's write transaction, so a body and the message that refers
/// to it are committed (or lost) together.
pub trait BodyStore: Send + Sync {
    /// Adds a reference to the body with `digest`, storing `bytes` if it is not held yet.
    /// Returns true when the body was new. The caller has checked that `digest` matches.
    fn acquire(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, StoreError>;
    /// Adds a reference to a body whose bytes a mail server's file holds (a live Maildir's
    /// scanner found the message on disk): nothing is stored but the count and the size.
    /// Returns true when the body was new. Only a live-Maildir store's bodies can.
    fn acquire_on_disk(
        &self,
        _txn: &WriteTransaction,
        digest: &Digest,
        _size: u64,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Corrupt(format!(
            "body {digest}: this store holds its bodies itself; none can live in a file"
        )))
    }
    /// At the end of a transaction in which the file `base` of `user`'s `mailbox` stopped
    /// holding the message it held (expunged, moved to another UID): if the body is still
    /// referenced and no other file holds it, its bytes are kept from that file before the
    /// file is removed. Nothing to do for a store that holds its bodies itself.
    fn keep_from_file(
        &self,
        _txn: &WriteTransaction,
        _digest: &Digest,
        _place: (&str, &str, &str),
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Adds a reference to a body that is already held (a copy within the store).
    fn add_ref(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError>;
    /// Drops a reference. A body whose last reference goes is not freed yet: a change later in
    /// the same transaction may take it again (a message moving to another UID).
    fn release(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError>;
    /// How many live messages use the body now (0 when none or not held).
    fn references_of(&self, txn: &WriteTransaction, digest: &Digest) -> Result<u64, StoreError>;
    /// At the end of a transaction: frees the body if no reference remains. Returns the
    /// freed size, if freed.
    fn collect(&self, txn: &WriteTransaction, digest: &Digest) -> Result<Option<u64>, StoreError>;
    fn read(&self, txn: &ReadTransaction, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether the body is held (without reading it).
    fn holds(&self, txn: &ReadTransaction, digest: &Digest) -> Result<bool, StoreError>;
    /// Every held body's digest and reference count (for `verify`).
    fn references(&self, txn: &ReadTransaction) -> Result<Vec<(Digest, u64)>, StoreError>;
    /// Overwrites a held body's bytes with a good copy (the caller has checked them against
    /// `digest`) and clears its damage mark. Returns false, changing nothing, if the body is
    /// not held.
    fn replace(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, StoreError>;
    /// How many bodies are held.
    fn count(&self, txn: &ReadTransaction) -> Result<u64, StoreError>;
    /// Calls `f` with every held body, in digest order (for `verify --bodies`).
    fn for_each(&self, txn: &ReadTransaction, f: &mut BodyVisitor<'_>) -> Result<(), StoreError>;
    /// Body bytes written since the store was opened, aborted transactions included: what
    /// the tests hold the replication path to (every body written once).
    fn bytes_written(&self) -> u64;
}

/// Why a body is marked damaged: when it was found, and what its bytes hash to now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedMark {
    /// Milliseconds since the Unix epoch.
    pub found_ms: u64,
    /// The digest of the bytes found (not the one they are stored under).
    pub actual: Digest,
}

/// Marks a body damaged (again: the newest finding wins).
pub(crate) fn mark_damaged(
    txn: &WriteTransaction,
    digest: &Digest,
    mark: &DamagedMark,
) -> Result<(), StoreError> {
    let value = super::tx::encode(mark)?;
    txn.open_table(DAMAGED)?
        .insert(digest.0.as_slice(), value.as_slice())?;
    Ok(())
}

/// Clears a body's damage mark; returns whether there was one.
pub(crate) fn unmark_damaged(txn: &WriteTransaction, digest: &Digest) -> Result<bool, StoreError> {
    Ok(txn
        .open_table(DAMAGED)?
        .remove(digest.0.as_slice())?
        .is_some())
}

/// Every damage mark, in digest order. A store made before the table existed has none.
pub(crate) fn damaged_marks(
    txn: &ReadTransaction,
) -> Result<Vec<(Digest, DamagedMark)>, StoreError> {
    let table = match txn.open_table(DAMAGED) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let digest: [u8; 32] = k
            .value()
            .try_into()
            .map_err(|_| StoreError::Corrupt("malformed damaged-body key".into()))?;
        out.push((
            Digest(digest),
            super::tx::decode(v.value(), "a damaged-body mark")?,
        ));
    }
    Ok(out)
}

/// Counts one more reference to `digest`; returns the count before (`None`: not held).
pub(super) fn count_ref(
    txn: &WriteTransaction,
    digest: &Digest,
) -> Result<Option<u64>, StoreError> {
    let mut refs = txn.open_table(BODY_REFS)?;
    let current = refs.get(digest.0.as_slice())?.map(|v| v.value());
    refs.insert(digest.0.as_slice(), current.unwrap_or(0) + 1)?;
    Ok(current)
}

/// At the end of a transaction: forgets the count of a body no message uses any more (and
/// its damage mark). Returns whether it did; the caller frees the bytes.
pub(super) fn forget_unreferenced(
    txn: &WriteTransaction,
    digest: &Digest,
) -> Result<bool, StoreError> {
    let mut refs = txn.open_table(BODY_REFS)?;
    if refs.get(digest.0.as_slice())?.map(|v| v.value()) != Some(0) {
        return Ok(false);
    }
    refs.remove(digest.0.as_slice())?;
    unmark_damaged(txn, digest)?;
    Ok(true)
}

/// Every counted body with its count, each of which must have an entry in `held` (its
/// bytes, or its recorded size: `what` says which, for the error).
pub(super) fn counted_bodies<V: redb::Value + 'static>(
    txn: &ReadTransaction,
    held: redb::TableDefinition<&'static [u8], V>,
    what: &str,
) -> Result<Vec<(Digest, u64)>, StoreError> {
    let refs = txn.open_table(BODY_REFS)?;
    let held = txn.open_table(held)?;
    let mut out = Vec::new();
    for item in refs.iter()? {
        let (k, v) = item?;
        let digest: [u8; 32] = k
            .value()
            .try_into()
            .map_err(|_| StoreError::Corrupt("malformed body key".into()))?;
        if held.get(k.value())?.is_none() {
            return Err(StoreError::Corrupt(format!(
                "body {} has references but no {what}",
                Digest(digest)
            )));
        }
        out.push((Digest(digest), v.value()));
    }
    Ok(out)
}

/// Bodies inside the redb file itself: the default.
#[derive(Default)]
pub struct RedbBodies {
    written: AtomicU64,
}

impl RedbBodies {
    /// Counts body bytes written by a wrapper of this store (the live-Maildir spool).
    pub(super) fn count_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    fn insert(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        txn.open_table(BODIES)?.insert(digest.0.as_slice(), bytes)?;
        self.written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl BodyStore for RedbBodies {
    fn acquire(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        let current = count_ref(txn, digest)?;
        // A body released earlier in this transaction (count 0) is still stored.
        if current.is_none() {
            self.insert(txn, digest, bytes)?;
        } else if unmark_damaged(txn, digest)? {
            // A good copy came along (the caller checked it) for a body that rotted here.
            self.insert(txn, digest, bytes)?;
            tracing::info!(%digest, "damaged body replaced by a good copy that a change brought");
        }
        Ok(current.is_none())
    }

    fn add_ref(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        let mut refs = txn.open_table(BODY_REFS)?;
        let Some(current) = refs.get(digest.0.as_slice())?.map(|v| v.value()) else {
            return Err(StoreError::Corrupt(format!(
                "body {digest} is referenced but not stored"
            )));
        };
        refs.insert(digest.0.as_slice(), current + 1)?;
        Ok(())
    }

    fn release(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        let mut refs = txn.open_table(BODY_REFS)?;
        let current = refs
            .get(digest.0.as_slice())?
            .map(|v| v.value())
            .unwrap_or(0);
        // At zero the body stays until `collect`, at the end of the transaction.
        refs.insert(digest.0.as_slice(), current.saturating_sub(1))?;
        Ok(())
    }

    fn references_of(&self, txn: &WriteTransaction, digest: &Digest) -> Result<u64, StoreError> {
        let refs = txn.open_table(BODY_REFS)?;
        let n = refs.get(digest.0.as_slice())?.map_or(0, |v| v.value());
        Ok(n)
    }

    fn collect(&self, txn: &WriteTransaction, digest: &Digest) -> Result<Option<u64>, StoreError> {
        if !forget_unreferenced(txn, digest)? {
            return Ok(None);
        }
        let mut bodies = txn.open_table(BODIES)?;
        let freed = bodies
            .remove(digest.0.as_slice())?
            .map(|v| v.value().len() as u64);
        Ok(freed)
    }

    fn read(&self, txn: &ReadTransaction, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let bodies = txn.open_table(BODIES)?;
        Ok(bodies.get(digest.0.as_slice())?.map(|v| v.value().to_vec()))
    }

    fn holds(&self, txn: &ReadTransaction, digest: &Digest) -> Result<bool, StoreError> {
        Ok(txn
            .open_table(BODY_REFS)?
            .get(digest.0.as_slice())?
            .is_some())
    }

    fn references(&self, txn: &ReadTransaction) -> Result<Vec<(Digest, u64)>, StoreError> {
        let out = counted_bodies(txn, BODIES, "bytes")?;
        let bodies = txn.open_table(BODIES)?;
        if bodies.len()? != out.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "{} bodies stored but {} have reference counts",
                bodies.len()?,
                out.len()
            )));
        }
        Ok(out)
    }

    fn replace(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        if txn.open_table(BODIES)?.get(digest.0.as_slice())?.is_none() {
            return Ok(false);
        }
        self.insert(txn, digest, bytes)?;
        unmark_damaged(txn, digest)?;
        Ok(true)
    }

    fn count(&self, txn: &ReadTransaction) -> Result<u64, StoreError> {
        Ok(txn.open_table(BODIES)?.len()?)
    }

    fn for_each(&self, txn: &ReadTransaction, f: &mut BodyVisitor<'_>) -> Result<(), StoreError> {
        let bodies = txn.open_table(BODIES)?;
        for item in bodies.iter()? {
            let (k, v) = item?;
            let digest: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("malformed body key".into()))?;
            f(Digest(digest), v.value())?;
        }
        Ok(())
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}
