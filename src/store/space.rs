//! Where the store file's bytes go, per table, from redb's own accounting: what `merkmail
//! space` prints, and what docs/PERFORMANCE.md ("Replica size") measured with it.

use super::error::StoreError;
use super::tables::*;
use super::Store;
use redb::{Key, ReadTransaction, ReadableTableMetadata, TableDefinition, TableHandle, Value};

/// One table's pages and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpace {
    pub name: String,
    pub rows: u64,
    pub leaf_pages: u64,
    pub branch_pages: u64,
    /// Keys and values as inserted.
    pub stored_bytes: u64,
    /// Keys in branch pages, and the pages' own headers.
    pub metadata_bytes: u64,
    /// Bytes of the table's pages that hold nothing (partly filled pages, and the rest of a
    /// page run that redb rounded up to a power of two).
    pub fragmented_bytes: u64,
}

/// The whole file: its tables, and what redb counts as allocated and free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Space {
    pub page_size: u64,
    /// The file's size (`None` for an in-memory store).
    pub file_bytes: Option<u64>,
    /// Pages in use, by every table and redb's own.
    pub allocated_pages: u64,
    /// Bytes redb counts as fragmented over the whole file: the tables', its own tables',
    /// and the free pages it keeps for reuse.
    pub fragmented_bytes: u64,
    pub tables: Vec<TableSpace>,
}

fn table<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<TableSpace>, StoreError> {
    let t = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let s = t.stats()?;
    Ok(Some(TableSpace {
        name: def.name().to_string(),
        rows: t.len()?,
        leaf_pages: s.leaf_pages(),
        branch_pages: s.branch_pages(),
        stored_bytes: s.stored_bytes(),
        metadata_bytes: s.metadata_bytes(),
        fragmented_bytes: s.fragmented_bytes(),
    }))
}

impl Store {
    /// Where the file's bytes go: every table's pages, and the file's allocated and free
    /// pages. Reads only (a write transaction is begun for redb's file-wide figures, then
    /// aborted).
    pub fn space(&self) -> Result<Space, StoreError> {
        let whole = {
            let txn = self.begin_write()?;
            let stats = txn.stats()?;
            txn.abort()?;
            stats
        };
        let txn = self.read_txn()?;
        let found = [
            table(&txn, META)?,
            table(&txn, USERS)?,
            table(&txn, MAILBOXES)?,
            table(&txn, MESSAGES)?,
            table(&txn, TOMBSTONES)?,
            table(&txn, MAILBOX_TOMBSTONES)?,
            table(&txn, BODIES)?,
            table(&txn, BODY_PIECES)?,
            table(&txn, BODY_TAILS)?,
            table(&txn, BODY_REFS)?,
            table(&txn, STAGED)?,
            table(&txn, DAMAGED)?,
            table(&txn, TREE)?,
            table(&txn, SOURCES)?,
            table(&txn, IDENTITIES)?,
            table(&txn, USER_KILLS)?,
            table(&txn, JOURNAL)?,
            table(&txn, JOURNAL_PEERS)?,
            table(&txn, JOURNAL_INBOUND)?,
            table(&txn, JOURNAL_SENDERS)?,
            table(&txn, MIRROR_FILES)?,
            table(&txn, MIRROR_UNLINKS)?,
            table(&txn, MIRROR_FOLDERS)?,
            table(&txn, MIRROR_OWED)?,
            table(&txn, MIRROR_PRINTS)?,
            table(&txn, MIRROR_HOMES)?,
            table(&txn, MIRROR_BODY_SIZES)?,
        ];
        Ok(Space {
            page_size: whole.page_size() as u64,
            file_bytes: self.file_size()?,
            allocated_pages: whole.allocated_pages(),
            fragmented_bytes: whole.fragmented_bytes(),
            tables: found.into_iter().flatten().collect(),
        })
    }
}
