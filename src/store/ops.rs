//! The mail operations: each one validates, then runs as one write transaction.

use super::error::StoreError;
use super::keys;
use super::read::{each_message, message_uids};
use super::tables::{MAILBOXES, MESSAGES, META, USERS};
use super::tx::{decode, decode_message, encode, Tx};
use super::Store;
use crate::merkle::NodeKey;
use crate::model::{
    inbox_guid, validate_user, Digest, FlagName, FlagOp, FlagSet, MailboxGuid, MailboxName,
    MailboxRecord, MailboxTombstone, Md5, MessageRecord, Stamp, Tombstone, UidSelection,
    UserRecord,
};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

/// Running totals kept in the meta table, updated in every transaction, so `stats` is O(1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub users: u64,
    pub mailboxes: u64,
    pub messages: u64,
    /// Sum of live messages' sizes (a body shared by two messages counts twice).
    pub message_bytes: u64,
    /// Distinct bodies held, and their bytes (single-instance storage).
    pub bodies: u64,
    pub body_bytes: u64,
    pub tombstones: u64,
    pub mailbox_tombstones: u64,
}

/// A message to append.
#[derive(Clone, Debug, Default)]
pub struct NewMessage {
    pub bytes: Vec<u8>,
    pub flags: Vec<FlagName>,
    /// Seconds since the Unix epoch.
    pub internal_date: i64,
    /// A UID to keep (from a Dovecot uidlist); used only if it is not below UIDNEXT.
    pub uid: Option<u32>,
    /// Keep `uid` even below UIDNEXT when no message holds it: a live Maildir's file that
    /// the mail server numbered, whose UID its IMAP clients have seen.
    pub exact_uid: bool,
    /// Where the message came from (a Maildir file's base name); a source already imported
    /// into the mailbox is skipped, which makes re-running an import harmless.
    pub source: Option<String>,
    /// The MD5 the sender says the bytes have (e.g. the mail API's `md5=`); bytes that do not
    /// match are refused and nothing is appended.
    pub md5: Option<Md5>,
    /// The digest (blake3) the sender says the bytes have; checked like `md5`.
    pub digest: Option<Digest>,
}

/// What happened to one appended message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub uid: u32,
    /// The source had been imported before; nothing was added.
    pub skipped: bool,
    /// The UID asked for could not be kept (it was below UIDNEXT); `uid` is a new one.
    pub renumbered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MailboxInfo {
    pub guid: MailboxGuid,
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub subscribed: bool,
    pub messages: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    pub mailbox: String,
    pub guid: MailboxGuid,
    pub uid: u32,
    pub record: MessageRecord,
}

/// The mailbox an import writes into, and whether the source's UIDs can be kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedMailbox {
    pub guid: MailboxGuid,
    pub keep_uids: bool,
}

fn mailboxes_of(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: &str,
) -> Result<Vec<MailboxRecord>, StoreError> {
    let (start, end) = keys::user_range(user);
    let mut out = Vec::new();
    for item in table.range(start.as_slice()..=end.as_slice())? {
        let (_, v) = item?;
        out.push(decode(v.value(), "a mailbox")?);
    }
    Ok(out)
}

/// INBOX's UIDVALIDITY, derived from the user like its GUID: two servers that each create a
/// user's INBOX (deliveries on both during a split) then agree, and their mail reconciles by
/// UID instead of one side being renumbered. INBOX is never deleted, so a UIDVALIDITY is never
/// reused for other UIDs. An import may still adopt a Maildir's own.
pub fn inbox_uidvalidity(user: &str) -> u32 {
    let g = inbox_guid(user).0;
    // Non-zero and below 2^31, which some IMAP clients treat as signed.
    (u32::from_be_bytes([g[0], g[1], g[2], g[3]]) & 0x7fff_ffff).max(1)
}

fn unknown_mailbox(user: &str, name: &MailboxName) -> StoreError {
    StoreError::UnknownMailbox {
        user: user.to_string(),
        mailbox: name.to_string(),
    }
}

impl Tx<'_> {
    /// Removes a mailbox with its messages, their tombstones, its import sources and its
    /// UID-range nodes. The caller records the mailbox tombstone. A mailbox merged into
    /// another (`keep_kills`) keeps its writers' expunges: a replica that still holds it
    /// moves its messages into the other, and these must not come back with them.
    pub(crate) fn delete_mailbox_records(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        keep_kills: bool,
    ) -> Result<(), StoreError> {
        if self.get_mailbox(user, guid)?.is_none() {
            return Ok(());
        }
        for uid in message_uids(&self.messages, user, guid, (0, u32::MAX))? {
            self.remove_message(user, guid, uid)?;
        }
        // The mailbox tombstone stands for its messages' tombstones from now on.
        let (start, end) = keys::tombstone_range(user, guid, 0, u32::MAX);
        let removed = self
            .tombstones
            .extract_from_if(start.as_slice()..=end.as_slice(), |_, v| {
                !keep_kills
                    || postcard::from_bytes::<Tombstone>(v).map_or(true, |t| t.origin.is_none())
            })?
            .count() as u64;
        self.counters.tombstones = self.counters.tombstones.saturating_sub(removed);
        let (istart, iend) = super::identity::mailbox_range(user, guid);
        let kind_at = istart.len() + 32 + 12;
        self.identities
            .retain_in(istart.as_slice()..=iend.as_slice(), |k, _| {
                keep_kills && k.get(kind_at).is_some_and(|kind| *kind != 0)
            })?;
        let sstart = keys::mailbox(user, guid);
        let mut send = sstart.clone();
        send.push(0xff);
        self.sources
            .retain_in(sstart.as_slice()..=send.as_slice(), |_, _| false)?;
        let (nstart, nend) = NodeKey::mailbox_uid_range(user, guid);
        self.tree
            .retain_in(nstart.as_slice()..=nend.as_slice(), |_, _| false)?;
        self.mailboxes
            .remove(keys::mailbox(user, guid).as_slice())?;
        self.dirty.mark_mailbox(user, guid);
        self.touch_deleted(user, guid);
        self.owe_mirror(user, guid);
        self.counters.mailboxes -= 1;
        Ok(())
    }
    fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        Ok(self.users.get(user)?.is_some())
    }

    /// Brings a user into being with its INBOX, if it does not exist yet.
    fn ensure_user(&mut self, user: &str) -> Result<(), StoreError> {
        validate_user(user)?;
        if self.user_exists(user)? {
            return Ok(());
        }
        let stamp = self.stamp();
        self.users
            .insert(user, encode(&UserRecord { created: stamp })?.as_slice())?;
        self.counters.users += 1;
        let inbox = MailboxName::inbox().to_string();
        let (guid, uidvalidity) = (inbox_guid(user), inbox_uidvalidity(user));
        self.add_mailbox(user, guid, inbox, uidvalidity, true, stamp)?;
        Ok(())
    }

    /// The user's INBOX, made if the user has none. A user can exist without one: a peer's
    /// records create the user with the first mailbox they bring, and the INBOX may come a
    /// transaction later (an initial copy applies a large user in several). An INBOX made
    /// here has the GUID and UIDVALIDITY derived from the user, as [`Tx::ensure_user`]
    /// gives it, whatever a Maildir's uidlist says: every server then makes the same INBOX,
    /// and two INBOXes that took mail on both sides reconcile as one mailbox (by UID, or by
    /// the UIDVALIDITY rule) instead of clashing by name, where one would be merged into the
    /// other and its mail renumbered. The caller has ensured the user.
    fn ensure_inbox(&mut self, user: &str) -> Result<MailboxRecord, StoreError> {
        if let Some(record) = self.find_mailbox(user, &MailboxName::inbox())? {
            return Ok(record);
        }
        let guid = inbox_guid(user);
        // Its tombstone (a same-name merge into an INBOX that is gone too) gives way, as a
        // replicated record brought back does.
        if self
            .mailbox_tombstones
            .remove(keys::mailbox(user, guid).as_slice())?
            .is_some()
        {
            self.counters.mailbox_tombstones -= 1;
        }
        let stamp = self.stamp();
        let inbox = MailboxName::inbox().to_string();
        self.add_mailbox(user, guid, inbox, inbox_uidvalidity(user), true, stamp)?;
        self.get_mailbox(user, guid)?
            .ok_or_else(|| unknown_mailbox(user, &MailboxName::inbox()))
    }

    /// Writes a new, empty mailbox (UIDNEXT 1, every stamp `stamp`) and counts it.
    fn add_mailbox(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        name: String,
        uidvalidity: u32,
        subscribed: bool,
        stamp: Stamp,
    ) -> Result<(), StoreError> {
        let record = MailboxRecord {
            guid,
            name,
            uidvalidity,
            uidnext: 1,
            subscribed,
            name_stamp: stamp,
            subscribed_stamp: stamp,
            last_change: stamp,
        };
        self.put_mailbox(user, &record)?;
        self.counters.mailboxes += 1;
        Ok(())
    }

    /// UIDVALIDITY for a new mailbox: the time in seconds, as Dovecot does.
    fn new_uidvalidity(&self) -> u32 {
        u32::try_from(self.now_ms() / 1000)
            .unwrap_or(u32::MAX)
            .max(1)
    }

    fn find_mailbox(
        &self,
        user: &str,
        name: &MailboxName,
    ) -> Result<Option<MailboxRecord>, StoreError> {
        if name.is_inbox() {
            if let Some(record) = self.get_mailbox(user, inbox_guid(user))? {
                return Ok(Some(record));
            }
            // An INBOX under another GUID (made by an older merkmail, which took a Maildir's
            // or a random one) is still the user's INBOX: the name search below finds it.
        }
        Ok(self
            .user_mailboxes(user)?
            .into_iter()
            .find(|m| m.name == name.as_str()))
    }

    /// Finds a mailbox by name; an INBOX is created on demand when `create_inbox` is set.
    pub(super) fn resolve(
        &mut self,
        user: &str,
        name: &MailboxName,
        create_inbox: bool,
    ) -> Result<MailboxRecord, StoreError> {
        validate_user(user)?;
        if name.is_inbox() && create_inbox {
            self.ensure_user(user)?;
            return self.ensure_inbox(user);
        } else if !self.user_exists(user)? {
            return Err(StoreError::UnknownUser(user.to_string()));
        }
        self.find_mailbox(user, name)?
            .ok_or_else(|| unknown_mailbox(user, name))
    }

    pub(crate) fn remove_message(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let Some(old) = self
            .messages
            .remove(keys::message(user, guid, uid).as_slice())?
        else {
            return Ok(None);
        };
        let (_, record) = decode_message(old.value())?;
        drop(old);
        self.identities
            .remove(super::identity::live_key(user, guid, uid, &record).as_slice())?;
        self.dirty.mark_message(user, guid, uid);
        self.touch_message(user, guid, uid);
        self.owe_message(user, guid, uid);
        self.file_leaves(user, guid, uid, &record.digest)?;
        self.counters.messages -= 1;
        self.counters.message_bytes = self.counters.message_bytes.saturating_sub(record.size);
        self.bodies.release(self.txn, &record.digest)?;
        self.released.insert(record.digest);
        Ok(Some(record))
    }
}

impl Store {
    /// Creates a mailbox (and the user, with its INBOX, if it is new). Returns its GUID.
    pub fn create_mailbox(&self, user: &str, name: &str) -> Result<MailboxGuid, StoreError> {
        let name = MailboxName::parse(name)?;
        validate_user(user)?;
        self.write(|tx| {
            let existed = tx.user_exists(user)? && tx.find_mailbox(user, &name)?.is_some();
            tx.ensure_user(user)?;
            if name.is_inbox() {
                return if existed {
                    Err(StoreError::MailboxExists {
                        user: user.to_string(),
                        mailbox: name.to_string(),
                    })
                } else {
                    Ok(tx.ensure_inbox(user)?.guid)
                };
            }
            if tx.find_mailbox(user, &name)?.is_some() {
                return Err(StoreError::MailboxExists {
                    user: user.to_string(),
                    mailbox: name.to_string(),
                });
            }
            let stamp = tx.stamp();
            let guid = self.new_guid();
            let uidvalidity = tx.new_uidvalidity();
            tx.add_mailbox(user, guid, name.to_string(), uidvalidity, false, stamp)?;
            Ok(guid)
        })
    }

    /// Renames a mailbox and every mailbox below it (`a` → `b` also moves `a/x` to `b/x`).
    pub fn rename_mailbox(&self, user: &str, old: &str, new: &str) -> Result<(), StoreError> {
        let old = MailboxName::parse(old)?;
        let new = MailboxName::parse(new)?;
        if old.is_inbox() || new.is_inbox() {
            return Err(StoreError::Invalid(
                "INBOX cannot be renamed, and no mailbox can be renamed to INBOX".into(),
            ));
        }
        if new.is_below(&old) {
            return Err(StoreError::Invalid(format!(
                "cannot rename {old:?} to {new:?}, which lies below it"
            )));
        }
        self.write(|tx| {
            let target = tx.resolve(user, &old, false)?;
            let all = tx.user_mailboxes(user)?;
            let moving: Vec<MailboxRecord> = all
                .iter()
                .filter(|m| {
                    m.guid == target.guid
                        || MailboxName::parse(&m.name).is_ok_and(|n| n.is_below(&old))
                })
                .cloned()
                .collect();
            let stamp = tx.stamp();
            let moving_guids: Vec<MailboxGuid> = moving.iter().map(|m| m.guid).collect();
            for mut mailbox in moving {
                let renamed = format!("{new}{}", &mailbox.name[old.as_str().len()..]);
                let renamed = MailboxName::parse(&renamed)?;
                // Only mailboxes that stay put can be in the way: the moving ones vacate
                // their names (renaming P/Q to P may pass over P/Q/Q's old name).
                if all
                    .iter()
                    .any(|m| m.name == renamed.as_str() && !moving_guids.contains(&m.guid))
                {
                    return Err(StoreError::MailboxExists {
                        user: user.to_string(),
                        mailbox: renamed.to_string(),
                    });
                }
                mailbox.name = renamed.to_string();
                mailbox.name_stamp = stamp;
                mailbox.last_change = stamp;
                tx.put_mailbox(user, &mailbox)?;
            }
            Ok(())
        })
    }

    /// Deletes a mailbox and its messages, leaving a mailbox tombstone. INBOX cannot be deleted.
    pub fn delete_mailbox(&self, user: &str, name: &str) -> Result<(), StoreError> {
        let name = MailboxName::parse(name)?;
        if name.is_inbox() {
            return Err(StoreError::Invalid("INBOX cannot be deleted".into()));
        }
        self.write(|tx| {
            let mailbox = tx.resolve(user, &name, false)?;
            let guid = mailbox.guid;
            tx.delete_mailbox_records(user, guid, false)?;
            let stamp = tx.stamp();
            let tomb = MailboxTombstone {
                guid,
                name: mailbox.name.clone(),
                stamp,
                merged_into: None,
            };
            tx.mailbox_tombstones.insert(
                keys::mailbox(user, guid).as_slice(),
                encode(&tomb)?.as_slice(),
            )?;
            tx.counters.mailbox_tombstones += 1;
            Ok(())
        })
    }

    /// Subscribes or unsubscribes a mailbox.
    pub fn subscribe(&self, user: &str, name: &str, subscribed: bool) -> Result<(), StoreError> {
        let name = MailboxName::parse(name)?;
        self.write(|tx| {
            let mut mailbox = tx.resolve(user, &name, true)?;
            if mailbox.subscribed != subscribed {
                let stamp = tx.stamp();
                mailbox.subscribed = subscribed;
                mailbox.subscribed_stamp = stamp;
                mailbox.last_change = stamp;
                tx.put_mailbox(user, &mailbox)?;
            }
            Ok(())
        })
    }

    /// Appends messages in one transaction and returns what happened to each, in order.
    /// Appending to INBOX brings a new user into being; other mailboxes must exist.
    pub fn append(
        &self,
        user: &str,
        mailbox: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.append_with(user, mailbox, messages, false)
    }

    /// [`Store::append`] of messages a live Maildir's pass found in their files (each with its
    /// `source`, the file's base name, and the UID the uidlist gives it). Placed at their own
    /// UIDs, they leave index and disk agreeing, so the mailbox is not marked owed to the disk
    /// for them (docs/MAILDIR.md, "What a pass owes the disk"): the pass needs no index → disk
    /// half. One that must take another UID (another message holds its UID in the index)
    /// leaves the mailbox owed, as does a mailbox this append makes.
    pub fn append_found(
        &self,
        user: &str,
        mailbox: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.append_with(user, mailbox, messages, true)
    }

    fn append_with(
        &self,
        user: &str,
        mailbox: &str,
        messages: Vec<NewMessage>,
        found: bool,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let name = MailboxName::parse(mailbox)?;
        self.write(|tx| append_in(tx, user, &name, messages, found))
    }

    /// Changes one message's flags. Returns the flags set afterwards.
    pub fn set_flags(
        &self,
        user: &str,
        mailbox: &str,
        uid: u32,
        op: FlagOp,
        flags: &[FlagName],
    ) -> Result<Vec<FlagName>, StoreError> {
        let name = MailboxName::parse(mailbox)?;
        self.write(|tx| {
            let mut record = tx.resolve(user, &name, false)?;
            let guid = record.guid;
            let mut message =
                tx.get_message(user, guid, uid)?
                    .ok_or_else(|| StoreError::UnknownUid {
                        user: user.to_string(),
                        mailbox: name.to_string(),
                        uid,
                    })?;
            let stamp = tx.stamp();
            if message.flags.apply(op, flags, stamp) {
                tx.put_message(user, guid, uid, &message)?;
                record.last_change = stamp;
                // last_change is not hashed: writing the record does not move the tree.
                let value = encode(&record)?;
                tx.mailboxes
                    .insert(keys::mailbox(user, guid).as_slice(), value.as_slice())?;
            }
            Ok(message.flags.live().cloned().collect())
        })
    }

    /// Expunges messages, leaving a tombstone for each. Any unknown UID fails the whole call.
    pub fn expunge(&self, user: &str, mailbox: &str, uids: &[u32]) -> Result<usize, StoreError> {
        self.expunge_in(user, mailbox, &UidSelection::Each(uids.to_vec()))
    }

    /// Gets a mailbox ready for an import: creates it if missing (with the source's
    /// UIDVALIDITY when one is given), and says whether the source's UIDs can be kept. A
    /// pristine mailbox (no UID ever assigned) adopts the source's UIDVALIDITY.
    ///
    /// A new mailbox takes `guid` (a Dovecot mailbox GUID from the source) when the user has no
    /// mailbox or tombstone with it, so servers importing the same Maildir agree on the GUID.
    /// INBOX never does: a new INBOX has the GUID derived from the user (`ensure_inbox`), so
    /// that servers agree on it whatever their Maildirs say.
    pub fn prepare_import(
        &self,
        user: &str,
        mailbox: &str,
        uidvalidity: Option<u32>,
        subscribed: bool,
        guid: Option<MailboxGuid>,
    ) -> Result<PreparedMailbox, StoreError> {
        let name = MailboxName::parse(mailbox)?;
        validate_user(user)?;
        self.write(|tx| {
            tx.ensure_user(user)?;
            let mut record = match tx.find_mailbox(user, &name)? {
                Some(record) => record,
                // The uidlist's GUID is not taken for INBOX: see `ensure_inbox`.
                None if name.is_inbox() => tx.ensure_inbox(user)?,
                None => {
                    let stamp = tx.stamp();
                    let guid = match guid {
                        Some(g)
                            if g != inbox_guid(user)
                                && tx.get_mailbox(user, g)?.is_none()
                                && tx
                                    .mailbox_tombstones
                                    .get(keys::mailbox(user, g).as_slice())?
                                    .is_none() =>
                        {
                            g
                        }
                        _ => self.new_guid(),
                    };
                    let record = MailboxRecord {
                        guid,
                        name: name.to_string(),
                        uidvalidity: tx.new_uidvalidity(),
                        uidnext: 1,
                        subscribed,
                        name_stamp: stamp,
                        subscribed_stamp: stamp,
                        last_change: stamp,
                    };
                    tx.counters.mailboxes += 1;
                    record
                }
            };
            let mut keep_uids = false;
            if let Some(v) = uidvalidity.filter(|v| *v != 0) {
                if record.uidvalidity == v {
                    keep_uids = true;
                } else if record.uidnext == 1 {
                    record.uidvalidity = v;
                    keep_uids = true;
                }
            }
            if record.subscribed != subscribed && subscribed {
                record.subscribed = true;
                record.subscribed_stamp = tx.stamp();
            }
            tx.put_mailbox(user, &record)?;
            Ok(PreparedMailbox {
                guid: record.guid,
                keep_uids,
            })
        })
    }

    /// Raises a mailbox's UIDNEXT (it never goes down), e.g. to a Dovecot uidlist's next UID.
    pub fn raise_uidnext(&self, user: &str, mailbox: &str, uidnext: u32) -> Result<(), StoreError> {
        let name = MailboxName::parse(mailbox)?;
        self.write(|tx| {
            let mut record = tx.resolve(user, &name, false)?;
            if uidnext > record.uidnext {
                record.uidnext = uidnext;
                record.last_change = tx.stamp();
                tx.put_mailbox(user, &record)?;
            }
            Ok(())
        })
    }

    /// Every user, in name order.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.read_txn()?;
        let users = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for item in users.iter()? {
            out.push(item?.0.value().to_string());
        }
        Ok(out)
    }

    /// A user's mailboxes, in name order.
    pub fn list_mailboxes(&self, user: &str) -> Result<Vec<MailboxInfo>, StoreError> {
        validate_user(user)?;
        let txn = self.read_txn()?;
        if txn.open_table(USERS)?.get(user)?.is_none() {
            return Err(StoreError::UnknownUser(user.to_string()));
        }
        let table = txn.open_table(MAILBOXES)?;
        let tree = txn.open_table(super::tables::TREE)?;
        let mut out = Vec::new();
        for m in mailboxes_of(&table, user)? {
            let node = NodeKey::Mailbox {
                user: user.to_string(),
                guid: m.guid,
            }
            .encode();
            let messages = tree
                .get(node.as_slice())?
                .and_then(|v| crate::merkle::NodeValue::decode(v.value()))
                .map_or(0, |v| v.count);
            out.push(MailboxInfo {
                guid: m.guid,
                name: m.name,
                uidvalidity: m.uidvalidity,
                uidnext: m.uidnext,
                subscribed: m.subscribed,
                messages,
            });
        }
        out.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        Ok(out)
    }

    /// One mailbox's record, by name.
    pub fn mailbox(&self, user: &str, name: &str) -> Result<MailboxRecord, StoreError> {
        let name = MailboxName::parse(name)?;
        validate_user(user)?;
        let txn = self.read_txn()?;
        if txn.open_table(USERS)?.get(user)?.is_none() {
            return Err(StoreError::UnknownUser(user.to_string()));
        }
        let table = txn.open_table(MAILBOXES)?;
        let derived = if name.is_inbox() {
            table
                .get(keys::mailbox(user, inbox_guid(user)).as_slice())?
                .map(|v| decode(v.value(), "a mailbox"))
                .transpose()?
        } else {
            None
        };
        // Without the derived INBOX, an INBOX under another GUID (an older merkmail's).
        let found = match derived {
            Some(record) => Some(record),
            None => mailboxes_of(&table, user)?
                .into_iter()
                .find(|m| m.name == name.as_str()),
        };
        found.ok_or_else(|| unknown_mailbox(user, &name))
    }

    /// A user's messages, in one mailbox or in all of them (mailboxes in name order, then UID).
    pub fn list_messages(
        &self,
        user: &str,
        mailbox: Option<&str>,
    ) -> Result<Vec<MessageInfo>, StoreError> {
        let mailboxes: Vec<MailboxRecord> = match mailbox {
            Some(name) => vec![self.mailbox(user, name)?],
            None => {
                let mut all: Vec<MailboxRecord> = {
                    let txn = self.read_txn()?;
                    let table = txn.open_table(MAILBOXES)?;
                    mailboxes_of(&table, user)?
                };
                if all.is_empty() {
                    return Err(StoreError::UnknownUser(user.to_string()));
                }
                all.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
                all
            }
        };
        let txn = self.read_txn()?;
        let messages = txn.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for m in mailboxes {
            each_message(&messages, user, m.guid, (0, u32::MAX), |uid, v| {
                let (_, record) = decode_message(v)?;
                out.push(MessageInfo {
                    mailbox: m.name.clone(),
                    guid: m.guid,
                    uid,
                    record,
                });
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// One message's record.
    pub fn message(&self, user: &str, mailbox: &str, uid: u32) -> Result<MessageInfo, StoreError> {
        let m = self.mailbox(user, mailbox)?;
        let txn = self.read_txn()?;
        let messages = txn.open_table(MESSAGES)?;
        let value = messages.get(keys::message(user, m.guid, uid).as_slice())?;
        let Some(value) = value else {
            return Err(StoreError::UnknownUid {
                user: user.to_string(),
                mailbox: m.name,
                uid,
            });
        };
        let (_, record) = decode_message(value.value())?;
        Ok(MessageInfo {
            mailbox: m.name,
            guid: m.guid,
            uid,
            record,
        })
    }

    /// A message's raw bytes, exactly as appended.
    pub fn fetch(&self, user: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>, StoreError> {
        let info = self.message(user, mailbox, uid)?;
        self.body(&info.record.digest)
    }

    /// A body by digest. Bytes that no longer hash to it (bit rot) are never handed out: the
    /// body is marked damaged, for the checker to repair from a peer, and the answer is
    /// `BodyDamaged`.
    pub fn body(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let txn = self.read_txn()?;
        let bytes = self.bodies.read(&txn, digest)?.ok_or_else(|| {
            StoreError::Corrupt(format!("body {digest} is referenced but not stored"))
        })?;
        drop(txn);
        let actual = Digest::of(&bytes);
        if actual != *digest {
            tracing::info!(%digest, %actual, "a stored body no longer matches its digest (bit rot): marked for repair");
            if let Err(e) = self.mark_damaged(digest, actual) {
                tracing::warn!(%digest, error = %e, "cannot mark the body damaged");
            }
            return Err(StoreError::BodyDamaged(*digest));
        }
        Ok(bytes)
    }

    /// The running totals.
    pub fn counters(&self) -> Result<Counters, StoreError> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(META)?;
        match meta.get("counters")? {
            Some(v) => decode(v.value(), "the counters"),
            None => Ok(Counters::default()),
        }
    }
}

/// [`Store::append`] (or, with `found`, [`Store::append_found`]) within a transaction.
pub(crate) fn append_in(
    tx: &mut Tx<'_>,
    user: &str,
    name: &MailboxName,
    messages: Vec<NewMessage>,
    found: bool,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let all_found = found && messages.iter().all(|m| m.source.is_some());
    let existed = tx.user_exists(user)? && tx.find_mailbox(user, name)?.is_some();
    let mut record = tx.resolve(user, name, true)?;
    let guid = record.guid;
    let mut outcomes = Vec::with_capacity(messages.len());
    for message in messages {
        if let Some(source) = &message.source {
            if let Some(uid) = tx
                .sources
                .get(keys::source(user, guid, source).as_slice())?
            {
                outcomes.push(AppendOutcome {
                    uid: uid.value(),
                    skipped: true,
                    renumbered: false,
                });
                continue;
            }
        }
        let (uid, renumbered) = match message.uid {
            Some(wanted)
                if message.exact_uid
                    && wanted > 0
                    && wanted < u32::MAX
                    && tx.get_message(user, guid, wanted)?.is_none() =>
            {
                (wanted, false)
            }
            Some(wanted) if wanted >= record.uidnext && wanted < u32::MAX => (wanted, false),
            Some(_) => (record.uidnext, true),
            None => (record.uidnext, false),
        };
        if uid == u32::MAX {
            return Err(StoreError::UidsExhausted {
                user: user.to_string(),
                mailbox: name.to_string(),
            });
        }
        let digest = Digest::of(&message.bytes);
        let md5 = Md5::of(&message.bytes);
        let n = outcomes.len() + 1;
        if let Some(said) = message.digest.filter(|d| *d != digest) {
            return Err(StoreError::Invalid(format!(
                "message {n}: its bytes have the digest {digest}, not {said} as sent; nothing was appended"
            )));
        }
        if let Some(said) = message.md5.filter(|m| *m != md5) {
            return Err(StoreError::Invalid(format!(
                "message {n}: its bytes have the MD5 {md5}, not {said} as sent; nothing was appended"
            )));
        }
        let stamp = tx.stamp();
        let entry = MessageRecord {
            md5,
            digest,
            size: message.bytes.len() as u64,
            internal_date: message.internal_date,
            flags: FlagSet::initial(&message.flags, stamp),
            appended: stamp,
        };
        // On a live Maildir a message the scanner found is held by its file.
        let acquired = if tx.mirror && message.source.is_some() {
            tx.bodies
                .acquire_on_disk(tx.txn, &digest, message.bytes.len() as u64)?
        } else {
            tx.bodies.acquire(tx.txn, &digest, &message.bytes)?
        };
        if acquired {
            tx.counters.bodies += 1;
            tx.counters.body_bytes += entry.size;
        }
        tx.put_message(user, guid, uid, &entry)?;
        if let Some(source) = &message.source {
            tx.sources
                .insert(keys::source(user, guid, source).as_slice(), uid)?;
            // On a live Maildir the source is the file that holds the message.
            let row = super::mirror::FileRow {
                base: source.clone(),
                disk_flags: message.flags.iter().map(|f| f.to_string()).collect(),
            };
            tx.file_found(user, guid, uid, &row)?;
        }
        tx.counters.messages += 1;
        tx.counters.message_bytes += entry.size;
        record.uidnext = record.uidnext.max(uid + 1);
        record.last_change = stamp;
        outcomes.push(AppendOutcome {
            uid,
            skipped: false,
            renumbered,
        });
    }
    if outcomes.iter().any(|o| !o.skipped) {
        tx.put_mailbox(user, &record)?;
    }
    if all_found && existed && !outcomes.iter().any(|o| o.renumbered) {
        tx.settled_by_disk(user, guid);
    }
    Ok(outcomes)
}
