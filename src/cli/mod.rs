//! The `merkmail` command line, for the binary in src/main.rs only: the arguments ([`args`]),
//! the mail commands written once over a local store or a server ([`mail`]), the store-only
//! commands, sync, status, serve, and the printing they share. Like the daemon, it reports
//! trouble as `anyhow` errors with context; the binary turns them into one line and exit 1.

mod args;
mod local;
mod mail;
mod mbox;
mod print;
mod progress;
mod serve;
mod status;
mod sync;

pub use args::{Cli, Command, MailboxCommand, ServeArgs, SyncArgs};

use mail::Request;
use std::io::Write;
use std::process::ExitCode;

/// Runs one command, its output on stdout; the exit code is 1 when the command's verdict is
/// negative (`verify` found a problem, `sync` did not end equal), 0 otherwise.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    // A store made with `init --maildir` reads its bodies from the Maildir files.
    crate::maildir::backend::install();
    let mut out = std::io::stdout().lock();
    let code = match command {
        Command::Serve(args) => {
            // The server writes its `listening on` line itself, once it is bound.
            drop(out);
            return serve::serve(args);
        }
        Command::Init {
            data,
            node_id,
            maildir,
        } => local::init(&data, &node_id, maildir.as_deref(), &mut out)?,
        Command::Scan {
            data,
            user,
            json,
            quiet,
        } => local::scan(&data, user.as_deref(), json, quiet, &mut out)?,
        Command::Status { url, ca, json } => status::status(&url, ca.as_deref(), json, &mut out)?,
        Command::Sync(args) => sync::sync(&args, &mut out)?,
        Command::Tree {
            data,
            user,
            mailbox,
            depth,
        } => local::tree(&data, user, mailbox, depth, &mut out)?,
        Command::Verify {
            data,
            bodies,
            quiet,
        } => local::verify(&data, bodies, quiet, &mut out)?,
        Command::Compact { data, json } => local::compact(&data, json, &mut out)?,
        Command::Space { data, json } => local::space(&data, json, &mut out)?,
        Command::ImportMaildir(args) => local::transfer(local::Transfer::Import, &args, &mut out)?,
        Command::ExportMaildir(args) => local::transfer(local::Transfer::Export, &args, &mut out)?,
        Command::Mailbox(MailboxCommand::Create { target, user, name }) => {
            mail::run(&target, Request::CreateMailbox { user, name }, &mut out)?
        }
        Command::Mailbox(MailboxCommand::Rename {
            target,
            user,
            name,
            new_name,
        }) => {
            let request = Request::RenameMailbox {
                user,
                name,
                new_name,
            };
            mail::run(&target, request, &mut out)?
        }
        Command::Mailbox(MailboxCommand::Delete { target, user, name }) => {
            mail::run(&target, Request::DeleteMailbox { user, name }, &mut out)?
        }
        Command::Mailbox(MailboxCommand::List { target, user, json }) => {
            mail::run(&target, Request::ListMailboxes { user, json }, &mut out)?
        }
        Command::Append {
            target,
            user,
            mailbox,
            files,
            mbox,
            flags,
            date,
            date_from_file,
        } => {
            let source = mail::AppendSource {
                files: &files,
                mbox: mbox.as_deref(),
                date,
                date_from_file,
            };
            let request = Request::append(user, mailbox, source, &flags)?;
            mail::run(&target, request, &mut out)?
        }
        Command::Flags {
            target,
            user,
            mailbox,
            uids,
            add,
            remove,
            set,
        } => {
            let request = Request::flags(user, mailbox, &uids, add, remove, set)?;
            mail::run(&target, request, &mut out)?
        }
        Command::Expunge {
            target,
            user,
            mailbox,
            uids,
        } => {
            let request = Request::Expunge {
                user,
                mailbox,
                uids: mail::parse_uids(&uids)?,
            };
            mail::run(&target, request, &mut out)?
        }
        Command::List {
            target,
            user,
            mailbox,
            json,
        } => {
            let request = Request::List {
                user,
                mailbox,
                json,
            };
            mail::run(&target, request, &mut out)?
        }
        Command::Fetch {
            target,
            user,
            mailbox,
            uid,
        } => mail::run(&target, Request::Fetch { user, mailbox, uid }, &mut out)?,
        Command::Root { target } => mail::run(&target, Request::Root, &mut out)?,
        Command::Stats { target, json } => mail::run(&target, Request::Stats { json }, &mut out)?,
    };
    out.flush()?;
    Ok(code)
}
