//! The mail commands (mailbox create/rename/delete/list, append, flags, expunge, list, fetch,
//! root, stats), written once over [`Mail`]: a store opened in this process (`--data`) and a
//! server's mail API (`--url`) both implement it and answer with the same `net::json` views,
//! so both print the same bytes.

use super::args::{Location, Target};
use super::mbox;
use super::print;
use crate::maildir::scan::unix_seconds;
use crate::model::{parse_flag_list, FlagName, FlagOp, MailboxGuid, UidSelection, UidSet};
use crate::net::client::ClientError;
use crate::net::json::{MailboxView, MessageView, StatsView};
use crate::net::remote::MailClient;
use crate::store::{NewMessage, Store, StoreError};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A mail command with its arguments checked and its input read. It is built before the
/// store or the server is reached, so a bad flag or an unreadable file changes nothing.
pub(super) enum Request {
    CreateMailbox {
        user: String,
        name: String,
    },
    RenameMailbox {
        user: String,
        name: String,
        new_name: String,
    },
    DeleteMailbox {
        user: String,
        name: String,
    },
    ListMailboxes {
        user: String,
        json: bool,
    },
    Append(Append),
    Flags(FlagChange),
    Expunge {
        user: String,
        mailbox: String,
        uids: UidSelection,
    },
    List {
        user: String,
        mailbox: Option<String>,
        json: bool,
    },
    Fetch {
        user: String,
        mailbox: String,
        uid: u32,
    },
    Root,
    Stats {
        json: bool,
    },
}

/// Messages to append to one mailbox, all with the same flags, each with its INTERNALDATE.
pub(super) struct Append {
    user: String,
    mailbox: String,
    messages: Vec<Vec<u8>>,
    flags: Vec<FlagName>,
    /// One per message, in the same order.
    internal_dates: Vec<i64>,
}

/// Where `append` takes its messages from, and how it dates them.
pub(super) struct AppendSource<'a> {
    pub files: &'a [PathBuf],
    pub mbox: Option<&'a Path>,
    pub date: Option<i64>,
    pub date_from_file: bool,
}

/// A change to the flags of one message (printing its flags, as `flags` always did) or of
/// many (printing a line per message).
pub(super) struct FlagChange {
    user: String,
    mailbox: String,
    uids: UidSelection,
    op: FlagOp,
    flags: Vec<FlagName>,
}

impl Request {
    /// `append`: the flags parsed, and every file (`-` is stdin) or the mbox read and split
    /// before anything is touched. Without `--date` or `--date-from-file` the messages are
    /// dated now.
    pub(super) fn append(
        user: String,
        mailbox: String,
        source: AppendSource<'_>,
        flags: &str,
    ) -> Result<Request> {
        let flags = parse_flag_list(flags)?;
        let dated = |file: &Path| -> Result<i64> {
            if !source.date_from_file {
                return Ok(source.date.unwrap_or_else(now_secs));
            }
            if file == Path::new("-") {
                bail!("--date-from-file needs files: stdin has no modification time");
            }
            let modified = std::fs::metadata(file)
                .and_then(|m| m.modified())
                .with_context(|| format!("cannot read the mtime of {}", file.display()))?;
            Ok(unix_seconds(modified))
        };
        let (messages, internal_dates) = match source.mbox {
            Some(file) => {
                let bytes = read_input(file)?;
                let messages = mbox::messages(&bytes)
                    .with_context(|| format!("cannot read the mbox {}", file.display()))?;
                let date = dated(file)?;
                let dates = vec![date; messages.len()];
                (messages, dates)
            }
            None => {
                let mut messages = Vec::with_capacity(source.files.len());
                let mut dates = Vec::with_capacity(source.files.len());
                for file in source.files {
                    messages.push(read_input(file)?);
                    dates.push(dated(file)?);
                }
                (messages, dates)
            }
        };
        Ok(Request::Append(Append {
            user,
            mailbox,
            messages,
            flags,
            internal_dates,
        }))
    }

    /// `flags`: exactly one of --add, --remove and --set (clap's group sees to that; this
    /// says so again rather than guess), its list parsed.
    pub(super) fn flags(
        user: String,
        mailbox: String,
        uids: &[String],
        add: Option<String>,
        remove: Option<String>,
        set: Option<String>,
    ) -> Result<Request> {
        let (op, list) = match (add, remove, set) {
            (Some(l), None, None) => (FlagOp::Add, l),
            (None, Some(l), None) => (FlagOp::Remove, l),
            (None, None, Some(l)) => (FlagOp::Set, l),
            _ => bail!("give exactly one of --add, --remove or --set"),
        };
        let flags = parse_flag_list(&list)?;
        Ok(Request::Flags(FlagChange {
            user,
            mailbox,
            uids: parse_uids(uids)?,
            op,
            flags,
        }))
    }
}

/// The messages named by `flags` or `expunge` arguments. Plain UIDs keep their meaning (each
/// must exist); as soon as one argument is a set (`1:5`, `7,9`, `*`), all of them are read
/// as one UID set. Every argument is checked, so `0`, `1:` or `a` changes nothing.
pub(super) fn parse_uids(args: &[String]) -> Result<UidSelection> {
    let mut sets = Vec::with_capacity(args.len());
    for arg in args {
        sets.push(UidSet::parse(arg)?);
    }
    let plain: Option<Vec<u32>> = args.iter().map(|a| a.parse::<u32>().ok()).collect();
    Ok(match plain {
        Some(uids) => UidSelection::Each(uids),
        None => UidSelection::Set(UidSet::union(sets)),
    })
}

/// Opens the target (the store in --data, or a client of the server at --url) and carries
/// out the request there.
pub(super) fn run(target: &Target, request: Request, out: &mut impl Write) -> Result<ExitCode> {
    match target.location()? {
        Location::Url(url) => {
            let client =
                MailClient::with_config(url, target.token.as_deref(), target.client_config()?)?;
            execute(&client, request, out)?;
        }
        Location::Data(dir) => {
            let store = Store::open(dir)?;
            execute(&store, request, out)?;
            // On a live Maildir, what the command changed is written into it now, as a
            // delivery agent (or an IMAP server) would.
            if let Some(template) = crate::maildir::backend::template_of(&store)? {
                crate::maildir::backend::settle_owed(&store, &template)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The one place each mail command is carried out and printed, whatever the back end.
fn execute(mail: &impl Mail, request: Request, out: &mut impl Write) -> Result<()> {
    match request {
        Request::CreateMailbox { user, name } => {
            let guid = mail.create_mailbox(&user, &name)?;
            writeln!(out, "created {name} ({guid})")?;
        }
        Request::RenameMailbox {
            user,
            name,
            new_name,
        } => {
            mail.rename_mailbox(&user, &name, &new_name)?;
            writeln!(out, "renamed {name} to {new_name}")?;
        }
        Request::DeleteMailbox { user, name } => {
            mail.delete_mailbox(&user, &name)?;
            writeln!(out, "deleted {name}")?;
        }
        Request::ListMailboxes { user, json } => {
            print::print(mail.list_mailboxes(&user)?.as_slice(), json, out)?;
        }
        Request::Append(append) => {
            for uid in mail.append(append)? {
                writeln!(out, "{uid}")?;
            }
        }
        Request::Flags(change) => match change.uids {
            UidSelection::Each(ref one) if one.len() == 1 => {
                let uid = one[0];
                writeln!(out, "{}", mail.set_flags(change, uid)?.join(","))?;
            }
            _ => {
                for (uid, flags) in mail.set_flags_in(change)? {
                    if flags.is_empty() {
                        writeln!(out, "{uid}")?;
                    } else {
                        writeln!(out, "{uid} {}", flags.join(","))?;
                    }
                }
            }
        },
        Request::Expunge {
            user,
            mailbox,
            uids,
        } => {
            let n = mail.expunge(&user, &mailbox, &uids)?;
            writeln!(out, "expunged {n} message{}", if n == 1 { "" } else { "s" })?;
        }
        Request::List {
            user,
            mailbox,
            json,
        } => print::print(
            mail.list_messages(&user, mailbox.as_deref())?.as_slice(),
            json,
            out,
        )?,
        Request::Fetch { user, mailbox, uid } => {
            out.write_all(&mail.fetch(&user, &mailbox, uid)?)?;
        }
        Request::Root => writeln!(out, "{}", mail.root()?)?,
        Request::Stats { json } => print::print(&mail.stats()?, json, out)?,
    }
    Ok(())
}

/// What the mail commands ask of a back end, answered in the views both back ends share.
trait Mail {
    /// What goes wrong in this back end; the command line prints its chain of causes.
    type Error: std::error::Error + Send + Sync + 'static;
    fn create_mailbox(&self, user: &str, name: &str) -> Result<MailboxGuid, Self::Error>;
    fn rename_mailbox(&self, user: &str, name: &str, new: &str) -> Result<(), Self::Error>;
    fn delete_mailbox(&self, user: &str, name: &str) -> Result<(), Self::Error>;
    fn list_mailboxes(&self, user: &str) -> Result<Vec<MailboxView>, Self::Error>;
    /// The UIDs the messages got, in their order.
    fn append(&self, append: Append) -> Result<Vec<u32>, Self::Error>;
    /// One message's flags afterwards (the change's one UID is `uid`).
    fn set_flags(&self, change: FlagChange, uid: u32) -> Result<Vec<String>, Self::Error>;
    /// Each message's UID and flags afterwards, in UID order; one transaction.
    fn set_flags_in(&self, change: FlagChange) -> Result<Vec<(u32, Vec<String>)>, Self::Error>;
    /// How many messages were expunged; one transaction.
    fn expunge(&self, user: &str, mailbox: &str, uids: &UidSelection)
        -> Result<usize, Self::Error>;
    /// One mailbox's messages, or (with `None`) every mailbox's.
    fn list_messages(
        &self,
        user: &str,
        mailbox: Option<&str>,
    ) -> Result<Vec<MessageView>, Self::Error>;
    /// The message's raw bytes, unchanged.
    fn fetch(&self, user: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>, Self::Error>;
    /// The root hash in hex.
    fn root(&self) -> Result<String, Self::Error>;
    fn stats(&self) -> Result<StatsView, Self::Error>;
}

/// Create, rename and delete a mailbox, and expunge: both sides' own methods (of the same
/// names; `expunge_in` for `expunge`) take the same arguments and answer as the trait does.
macro_rules! commands_answered_as_they_are {
    ($side:ident) => {
        fn create_mailbox(&self, user: &str, name: &str) -> Result<MailboxGuid, Self::Error> {
            $side::create_mailbox(self, user, name)
        }

        fn rename_mailbox(&self, user: &str, name: &str, new: &str) -> Result<(), Self::Error> {
            $side::rename_mailbox(self, user, name, new)
        }

        fn delete_mailbox(&self, user: &str, name: &str) -> Result<(), Self::Error> {
            $side::delete_mailbox(self, user, name)
        }

        fn expunge(
            &self,
            user: &str,
            mailbox: &str,
            uids: &UidSelection,
        ) -> Result<usize, Self::Error> {
            $side::expunge_in(self, user, mailbox, uids)
        }
    };
}

/// The store's own methods of the same names do the work (inherent methods are found before
/// trait methods, so `Store::x` below is never this impl calling itself); this impl only
/// turns their answers into the views.
impl Mail for Store {
    type Error = StoreError;

    commands_answered_as_they_are!(Store);

    fn list_mailboxes(&self, user: &str) -> Result<Vec<MailboxView>, StoreError> {
        let list = Store::list_mailboxes(self, user)?;
        Ok(list.into_iter().map(MailboxView::from).collect())
    }

    fn append(&self, a: Append) -> Result<Vec<u32>, StoreError> {
        let dates = a.internal_dates.iter().copied();
        let messages = a
            .messages
            .into_iter()
            .zip(dates)
            .map(|(bytes, date)| NewMessage {
                bytes,
                flags: a.flags.clone(),
                internal_date: date,
                ..NewMessage::default()
            });
        let outcomes = Store::append(self, &a.user, &a.mailbox, messages.collect())?;
        Ok(outcomes.iter().map(|o| o.uid).collect())
    }

    fn set_flags(&self, c: FlagChange, uid: u32) -> Result<Vec<String>, StoreError> {
        let now = Store::set_flags(self, &c.user, &c.mailbox, uid, c.op, &c.flags)?;
        Ok(now.iter().map(|f| f.as_str().to_string()).collect())
    }

    fn set_flags_in(&self, c: FlagChange) -> Result<Vec<(u32, Vec<String>)>, StoreError> {
        let changed = Store::set_flags_in(self, &c.user, &c.mailbox, &c.uids, c.op, &c.flags)?;
        Ok(changed
            .into_iter()
            .map(|(uid, now)| (uid, now.iter().map(|f| f.as_str().to_string()).collect()))
            .collect())
    }

    fn list_messages(
        &self,
        user: &str,
        mailbox: Option<&str>,
    ) -> Result<Vec<MessageView>, StoreError> {
        let list = Store::list_messages(self, user, mailbox)?;
        Ok(list.iter().map(MessageView::of).collect())
    }

    fn fetch(&self, user: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>, StoreError> {
        Store::fetch(self, user, mailbox, uid)
    }

    fn root(&self) -> Result<String, StoreError> {
        Ok(Store::root(self)?.hash.to_hex())
    }

    fn stats(&self) -> Result<StatsView, StoreError> {
        StatsView::of(self)
    }
}

/// Each call is one request to the server's mail API, which answers in the views already.
impl Mail for MailClient {
    type Error = ClientError;

    commands_answered_as_they_are!(MailClient);

    fn list_mailboxes(&self, user: &str) -> Result<Vec<MailboxView>, ClientError> {
        MailClient::list_mailboxes(self, user)
    }

    /// One date for all the messages goes as `?date=`, as it always did; different dates
    /// as `?dates=`.
    fn append(&self, a: Append) -> Result<Vec<u32>, ClientError> {
        match a.internal_dates.split_first() {
            Some((&first, rest)) if rest.iter().all(|&d| d == first) => {
                MailClient::append(self, &a.user, &a.mailbox, a.messages, &a.flags, first)
            }
            _ => MailClient::append_dated(
                self,
                &a.user,
                &a.mailbox,
                a.messages,
                &a.flags,
                &a.internal_dates,
            ),
        }
    }

    fn set_flags(&self, c: FlagChange, uid: u32) -> Result<Vec<String>, ClientError> {
        MailClient::set_flags(self, &c.user, &c.mailbox, uid, c.op, &c.flags)
    }

    fn set_flags_in(&self, c: FlagChange) -> Result<Vec<(u32, Vec<String>)>, ClientError> {
        MailClient::set_flags_in(self, &c.user, &c.mailbox, &c.uids, c.op, &c.flags)
    }

    fn list_messages(
        &self,
        user: &str,
        mailbox: Option<&str>,
    ) -> Result<Vec<MessageView>, ClientError> {
        MailClient::list_messages(self, user, mailbox)
    }

    fn fetch(&self, user: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>, ClientError> {
        Ok(MailClient::fetch(self, user, mailbox, uid)?.into())
    }

    fn root(&self) -> Result<String, ClientError> {
        Ok(MailClient::root(self)?.root)
    }

    fn stats(&self) -> Result<StatsView, ClientError> {
        MailClient::stats(self)
    }
}

/// A message file's bytes; `-` reads stdin.
fn read_input(file: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(bytes)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
