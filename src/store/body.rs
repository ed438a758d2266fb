//! Where message bodies live. Behind a small trait so that a later backend can leave bodies
//! in a live Dovecot Maildir and keep only the index and the tree in redb.
//!
//! Also the marks on damaged bodies (bit rot): a body whose bytes no longer hash to its digest
//! is marked in DAMAGED until a good copy replaces it (from a peer, by the daemon's checker, or
//! from any change that brings the same body along) or it is freed.

use super::error::StoreError;
use super::tables::{BODY_PIECES, BODY_REFS, BODY_TAILS, DAMAGED};
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
    /// A file on disk now holds the body (a live Maildir's delivery or scan found it there):
    /// a copy kept until then is no longer needed. The caller has checked that no session's
    /// staging mark still wants the copy.
    fn housed(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        remove_bytes(txn, digest).map(|_| ())
    }
    /// Called by the store just before a durable commit (which also makes every commit made
    /// without waiting for the disk before it durable): whatever those transactions wrote
    /// outside redb that their rows point at must be on disk first.
    fn before_commit(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Called by the store's write path when a write transaction has ended: `committed`, or
    /// failed and was aborted, so that what it wrote outside redb can go with it.
    fn after_transaction(&self, _committed: bool) {}
    /// A file that holds the body's bytes alone, if this store keeps it in one (a live
    /// Maildir's spool): a delivery may link it rather than write the bytes again.
    fn spooled_file(
        &self,
        _txn: &ReadTransaction,
        _digest: &Digest,
    ) -> Result<Option<std::path::PathBuf>, StoreError> {
        Ok(None)
    }
    /// Removes the files a store kept outside redb that no committed row names any more: those
    /// of bodies let go since the last sweep, or (`everything`) every such file, also what a
    /// crash or an aborted transaction left. Runs in a write transaction of its own, so no
    /// other writer is half-way. Returns how many went.
    fn sweep(&self, _txn: &WriteTransaction, _everything: bool) -> Result<u64, StoreError> {
        Ok(0)
    }
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

/// redb's page size: its default, which merkmail never changes (a store's pages keep the
/// size they were made with).
const PAGE: usize = 4096;
/// A BODY_PIECES key: the digest, then the piece's number (u32, big-endian).
const PIECE_KEY: usize = 36;
/// How many bytes of a body one BODY_PIECES row holds: what fills one redb page exactly. A
/// leaf holding one row spends 4 bytes on its header and 4 + 4 on the key's and value's
/// lengths; two pieces never fit one page, so every piece gets a page of its own and no
/// page is larger.
///
/// Why pieces: redb gives a leaf that holds a value larger than a page a run of pages of the
/// next power of two (8, 16, 32 KiB …). Whole bodies under their digest took 1.49 × the mail
/// for a corpus of real-sized mail, and the runs of different sizes left free space that
/// later runs could not reuse (docs/PERFORMANCE.md, "Replica size"). Pieces fill their pages;
/// the tails, all smaller than a page, share leaves like any small rows.
pub const PIECE: usize = PAGE - 4 - 8 - PIECE_KEY;

fn piece_key(digest: &Digest, piece: u32) -> [u8; PIECE_KEY] {
    let mut k = [0u8; PIECE_KEY];
    k[..32].copy_from_slice(&digest.0);
    k[32..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// Stores a body's bytes under its digest (in place of any held there): whole pieces in
/// BODY_PIECES, the rest in BODY_TAILS.
pub(super) fn put_bytes(
    txn: &WriteTransaction,
    digest: &Digest,
    bytes: &[u8],
) -> Result<(), StoreError> {
    remove_bytes(txn, digest)?;
    let mut pieces = txn.open_table(BODY_PIECES)?;
    let whole = bytes.len() / PIECE;
    for (i, piece) in bytes.chunks_exact(PIECE).enumerate() {
        let n = u32::try_from(i)
            .map_err(|_| StoreError::Invalid(format!("body {digest} is too large to store")))?;
        pieces.insert(piece_key(digest, n).as_slice(), piece)?;
    }
    txn.open_table(BODY_TAILS)?
        .insert(digest.0.as_slice(), &bytes[whole * PIECE..])?;
    Ok(())
}

/// Removes a body's bytes; returns their length if it was held.
pub(super) fn remove_bytes(
    txn: &WriteTransaction,
    digest: &Digest,
) -> Result<Option<u64>, StoreError> {
    let Some(tail) = txn
        .open_table(BODY_TAILS)?
        .remove(digest.0.as_slice())?
        .map(|v| v.value().len() as u64)
    else {
        return Ok(None);
    };
    let mut pieces = txn.open_table(BODY_PIECES)?;
    let (start, end) = (piece_key(digest, 0), piece_key(digest, u32::MAX));
    let mut n = 0u64;
    for item in pieces.extract_from_if(start.as_slice()..=end.as_slice(), |_, _| true)? {
        item?;
        n += 1;
    }
    Ok(Some(n * PIECE as u64 + tail))
}

/// Whether a body's bytes are held.
pub(super) fn has_bytes(
    tails: &impl ReadableTable<&'static [u8], &'static [u8]>,
    digest: &Digest,
) -> Result<bool, StoreError> {
    Ok(tails.get(digest.0.as_slice())?.is_some())
}

/// A held body's bytes, put back together from its pieces and tail.
pub(super) fn assemble(
    pieces: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tails: &impl ReadableTable<&'static [u8], &'static [u8]>,
    digest: &Digest,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(tail) = tails.get(digest.0.as_slice())? else {
        return Ok(None);
    };
    let tail = tail.value();
    let (start, end) = (piece_key(digest, 0), piece_key(digest, u32::MAX));
    let mut bytes = Vec::new();
    for (i, item) in pieces.range(start.as_slice()..=end.as_slice())?.enumerate() {
        let (k, v) = item?;
        if k.value().get(32..) != Some(piece_key(digest, i as u32)[32..].as_ref())
            || v.value().len() != PIECE
        {
            return Err(StoreError::Corrupt(format!(
                "body {digest}: piece {i} is missing or malformed"
            )));
        }
        if i == 0 {
            bytes.reserve_exact(PIECE * 4 + tail.len());
        }
        bytes.extend_from_slice(v.value());
    }
    bytes.extend_from_slice(tail);
    Ok(Some(bytes))
}

/// A held body's bytes, in a write transaction.
pub(super) fn get_bytes(
    txn: &WriteTransaction,
    digest: &Digest,
) -> Result<Option<Vec<u8>>, StoreError> {
    assemble(
        &txn.open_table(BODY_PIECES)?,
        &txn.open_table(BODY_TAILS)?,
        digest,
    )
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
        put_bytes(txn, digest, bytes)?;
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
        remove_bytes(txn, digest)
    }

    fn read(&self, txn: &ReadTransaction, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        assemble(
            &txn.open_table(BODY_PIECES)?,
            &txn.open_table(BODY_TAILS)?,
            digest,
        )
    }

    fn holds(&self, txn: &ReadTransaction, digest: &Digest) -> Result<bool, StoreError> {
        Ok(txn
            .open_table(BODY_REFS)?
            .get(digest.0.as_slice())?
            .is_some())
    }

    fn references(&self, txn: &ReadTransaction) -> Result<Vec<(Digest, u64)>, StoreError> {
        let out = counted_bodies(txn, BODY_TAILS, "bytes")?;
        let bodies = txn.open_table(BODY_TAILS)?;
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
        if !has_bytes(&txn.open_table(BODY_TAILS)?, digest)? {
            return Ok(false);
        }
        self.insert(txn, digest, bytes)?;
        unmark_damaged(txn, digest)?;
        Ok(true)
    }

    fn count(&self, txn: &ReadTransaction) -> Result<u64, StoreError> {
        Ok(txn.open_table(BODY_TAILS)?.len()?)
    }

    fn for_each(&self, txn: &ReadTransaction, f: &mut BodyVisitor<'_>) -> Result<(), StoreError> {
        let pieces = txn.open_table(BODY_PIECES)?;
        let tails = txn.open_table(BODY_TAILS)?;
        for item in tails.iter()? {
            let (k, _) = item?;
            let digest: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("malformed body key".into()))?;
            let digest = Digest(digest);
            let bytes = assemble(&pieces, &tails, &digest)?
                .ok_or_else(|| StoreError::Corrupt(format!("body {digest} vanished")))?;
            f(digest, &bytes)?;
        }
        Ok(())
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{BODIES, META, STAGED};
    use crate::store::{NewMessage, Store, DB_FILE};
    use redb::ReadableDatabase;

    /// Puts a store back the way format 2 kept bodies: each whole in BODIES, and a staging
    /// mark of an older merkmail with its bytes inline (no reference held).
    fn downgrade_to_format_2(file: &std::path::Path, inline: &[u8]) {
        let db = redb::Database::open(file).expect("open redb");
        let txn = db.begin_write().expect("write");
        {
            let digests: Vec<Digest> = txn
                .open_table(BODY_TAILS)
                .expect("tails")
                .iter()
                .expect("iter")
                .map(|i| Digest(i.expect("item").0.value().try_into().expect("digest")))
                .collect();
            for d in digests {
                let bytes = get_bytes(&txn, &d).expect("get").expect("held");
                remove_bytes(&txn, &d).expect("remove");
                txn.open_table(BODIES)
                    .expect("bodies")
                    .insert(d.0.as_slice(), bytes.as_slice())
                    .expect("insert");
            }
            let mut mark = 1u64.to_be_bytes().to_vec();
            mark.extend_from_slice(inline);
            txn.open_table(STAGED)
                .expect("staged")
                .insert(Digest::of(inline).0.as_slice(), mark.as_slice())
                .expect("mark");
            txn.open_table(META)
                .expect("meta")
                .insert("format", 2u32.to_be_bytes().as_slice())
                .expect("format");
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn a_format_2_store_has_its_bodies_moved_into_pieces_when_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bodies: Vec<Vec<u8>> = [10, PIECE, 3 * PIECE + 5]
            .iter()
            .map(|&n| {
                let mut b = format!("Subject: {n}\r\n\r\n").into_bytes();
                b.resize(n.max(b.len()), b'y');
                b
            })
            .collect();
        let root = {
            let store = Store::init(dir.path(), "n").expect("init");
            let msgs = bodies
                .iter()
                .map(|b| NewMessage {
                    bytes: b.clone(),
                    ..NewMessage::default()
                })
                .collect();
            store.append("u", "INBOX", msgs).expect("append");
            store.root().expect("root")
        };
        let file = dir.path().join(DB_FILE);
        downgrade_to_format_2(&file, b"an old inline mark");
        {
            let db = redb::Database::open(&file).expect("open redb");
            let txn = db.begin_read().expect("read");
            assert_eq!(
                txn.open_table(BODIES).expect("bodies").len().expect("len"),
                3
            );
            assert_eq!(
                txn.open_table(BODY_TAILS)
                    .expect("tails")
                    .len()
                    .expect("len"),
                0
            );
        }

        let store = Store::open(dir.path()).expect("the upgrade opens it");
        assert_eq!(store.root().expect("root"), root, "the tree is untouched");
        for (uid, b) in (1u32..).zip(&bodies) {
            assert_eq!(&store.fetch("u", "INBOX", uid).expect("fetch"), b);
        }
        assert_eq!(
            store.staged_bodies().expect("staged"),
            0,
            "the inline mark went"
        );
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
        let space = store.space().expect("space");
        let rows = |name: &str| space.tables.iter().find(|t| t.name == name).map(|t| t.rows);
        assert_eq!(rows("bodies"), Some(0));
        assert_eq!(rows("body_tails"), Some(3));
        assert_eq!(rows("body_pieces"), Some(4));
        drop(store);
        let db = redb::Database::open(&file).expect("open redb");
        let txn = db.begin_read().expect("read");
        let format = txn
            .open_table(META)
            .expect("meta")
            .get("format")
            .expect("get")
            .map(|v| v.value().to_vec());
        assert_eq!(
            format,
            Some(super::super::FORMAT_VERSION.to_be_bytes().to_vec())
        );
    }
}
