//! The redb tables and what their keys and values hold (keys are built in keys.rs).

use redb::{TableDefinition, WriteTransaction};

/// "format" → u32, "node_id" → UTF-8, "hlc" → last stamp (12 bytes), "counters" → postcard,
/// "journal_head" → u64be (the last journal sequence number handed out), "journal_bound" →
/// u64be (how many entries a peer may lag before it overflows).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// user → postcard(UserRecord)
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// user 00 guid → postcard(MailboxRecord)
pub const MAILBOXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mailboxes");
/// user 00 guid uid:u32be → entry hash (32 bytes) ‖ postcard(MessageRecord). The entry hash
/// sits in front so that rehashing a bucket reads 32 bytes per message and decodes nothing.
pub const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// user 00 guid uid:u32be digest:32 → postcard(Tombstone)
pub const TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tombstones");
/// user 00 guid → postcard(MailboxTombstone)
pub const MAILBOX_TOMBSTONES: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("mailbox_tombstones");
/// Format 2 and earlier: digest → raw message bytes. Opening such a store moves them into
/// BODY_PIECES and BODY_TAILS (format 3); the table is then empty.
pub const BODIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bodies");
/// digest:32 piece:u32be → [`super::body::PIECE`] bytes of the body, from its start: each
/// row fills one redb page exactly (single-instance storage; store/body.rs says why).
pub const BODY_PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("body_pieces");
/// digest → the body's bytes after its last whole piece (all of a small body; empty for a
/// body of whole pieces). A body is held in the table iff it has a row here.
pub const BODY_TAILS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("body_tails");
/// digest → number of live messages that use the body
pub const BODY_REFS: TableDefinition<&[u8], u64> = TableDefinition::new("body_refs");
/// digest → staged-at ms (u64be) ‖ MD5 (16) ‖ size (u64be): bodies a peer sent ahead of the
/// changes that use them, with what was checked when they were staged. The body itself is
/// held (BODY_PIECES, BODY_TAILS) and the mark holds one of its references, which the change
/// that takes it inherits (store/replica.rs). Marks written by format 2 are 8 bytes (the time
/// only: the change reads the body to check it); format 2's marks with the bytes inline are
/// turned into held ones when the store is upgraded.
pub const STAGED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("staged_bodies");
/// digest → postcard(DamagedMark): held bodies whose bytes no longer match their digest (bit
/// rot), found by `verify --bodies` or on a read; the daemon's checker replaces them from a
/// peer (store/body.rs). Local only, not replicated. Stores made before it lack the table:
/// readers treat a missing table as empty.
pub const DAMAGED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("damaged_bodies");
/// NodeKey encoding → NodeValue encoding (40 bytes)
pub const TREE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tree");
/// user 00 guid source-name → uid: which Maildir files were imported where (local only,
/// not replicated), so that importing the same Maildir again adds nothing.
pub const SOURCES: TableDefinition<&[u8], u32> = TableDefinition::new("sources");

/// user 00 guid digest:32 appended:12 kind:1 uid:u32be → empty (kind 0: the identity is live
/// at that UID) or postcard(Stamp) (kind 1: a writer's expunge of it at that UID, with its
/// stamp). Format 2; identity.rs keeps it in step with MESSAGES and TOMBSTONES.
pub const IDENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("identities");

/// user 00 digest:32 appended:12 → postcard(Stamp): identities a writer expunged in any mailbox
/// of the user, with the latest such expunge's stamp. A same-name merge can leave one append
/// in two mailboxes (a mailbox renamed concurrently merges into two winners); every writer's
/// append gets a fresh append stamp, so the same identity in two mailboxes only comes from
/// merges, and an expunge of it holds in all of them. Dropped with the purge.
pub const USER_KILLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("user_kills");

/// seq → postcard(JournalRecord): which keys a local write touched (journal.rs). Written in
/// the write's own transaction; trimmed below the smallest peer cursor.
pub const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// peer name (its configured URL) → postcard(PeerState): cursor (last acknowledged seq),
/// whether it overflowed, and since when.
pub const JOURNAL_PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_peers");
/// sender node id 00 seq:u64be → postcard(ShippedEntry), with the bodies its live messages
/// need: entries received and acknowledged, not yet applied.
pub const JOURNAL_INBOUND: TableDefinition<&[u8], &[u8]> = TableDefinition::new("journal_inbound");
/// sender node id → postcard(SenderState): the last seq received, gaps seen, whether a Merkle
/// session with the sender is owed.
pub const JOURNAL_SENDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_senders");

/// Live-Maildir stores only (store/mirror.rs): user 00 guid uid:u32be → postcard(FileRow),
/// the file that holds each message and the flags its name showed when index and disk agreed.
pub const MIRROR_FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mirror_files");
/// user 00 guid base-name → postcard(Vec<String>) of the flags the file's name showed when
/// index and disk last agreed (empty bytes: not known, a row from before format 4): files the
/// index no longer holds that the disk still owes a removal. The flags let the removal look
/// for `cur/<base>:2,<flags>` before it lists the folder.
pub const MIRROR_UNLINKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mirror_unlinks");
/// user 00 guid → postcard(FolderRow): each mailbox's folder as index and disk last agreed.
pub const MIRROR_FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mirror_folders");
/// user 00 guid → the stamp of the last write that changed the mailbox, then (format 4) one
/// byte, 1 if MIRROR_OWED_UIDS names every message changed since its folder last agreed with
/// the index, 0 if not (a mark from before format 4): the durable outbox of mailboxes whose
/// folder must be brought in step.
pub const MIRROR_OWED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mirror_owed");

/// user 00 guid uid:u32be → the stamp of the last write that changed the message at that UID
/// (added, changed or removed) since its folder last agreed with the index: what the index →
/// disk half of a pass must look at, so that it need not look at every message (format 4).
pub const MIRROR_OWED_UIDS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("mirror_owed_uids");

/// user 00 guid → bytes the Maildir side gives no meaning here: what a mailbox's folder
/// directories looked like when index and disk last agreed, so a pass can leave a folder
/// that shows no change unread.
pub const MIRROR_PRINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mirror_prints");

/// digest:32 ++ user 00 guid uid:u32be → empty: the messages whose file on disk holds each
/// body (a live-Maildir store reads bodies from them; store/file_bodies.rs).
pub const MIRROR_HOMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mirror_homes");
/// digest:32 → size: every body a live-Maildir store holds (its bytes are in a file, or in
/// BODIES until delivered).
pub const MIRROR_BODY_SIZES: TableDefinition<&[u8], u64> =
    TableDefinition::new("mirror_body_sizes");

/// digest:32 → file name: a live-Maildir store's body that no Maildir file holds yet, kept
/// as a file of its own in the spool directory (`spool/` beside the store) until a delivery
/// puts it in a folder (by a hard link where it can) and a pass sees it there.
pub const MIRROR_SPOOL: TableDefinition<&[u8], &str> = TableDefinition::new("mirror_spool");

/// Creates every table, so that read transactions on a new store find them all.
pub fn create_all(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(USERS)?;
    txn.open_table(MAILBOXES)?;
    txn.open_table(MESSAGES)?;
    txn.open_table(TOMBSTONES)?;
    txn.open_table(IDENTITIES)?;
    txn.open_table(USER_KILLS)?;
    txn.open_table(MAILBOX_TOMBSTONES)?;
    txn.open_table(BODIES)?;
    txn.open_table(BODY_PIECES)?;
    txn.open_table(BODY_TAILS)?;
    txn.open_table(MIRROR_SPOOL)?;
    txn.open_table(BODY_REFS)?;
    txn.open_table(TREE)?;
    txn.open_table(SOURCES)?;
    txn.open_table(STAGED)?;
    txn.open_table(JOURNAL)?;
    txn.open_table(JOURNAL_PEERS)?;
    txn.open_table(JOURNAL_INBOUND)?;
    txn.open_table(JOURNAL_SENDERS)?;
    txn.open_table(DAMAGED)?;
    txn.open_table(MIRROR_FILES)?;
    txn.open_table(MIRROR_UNLINKS)?;
    txn.open_table(MIRROR_FOLDERS)?;
    txn.open_table(MIRROR_OWED)?;
    txn.open_table(MIRROR_OWED_UIDS)?;
    txn.open_table(MIRROR_PRINTS)?;
    txn.open_table(MIRROR_HOMES)?;
    txn.open_table(MIRROR_BODY_SIZES)?;
    Ok(())
}
