//! `merkmail sync`: one reconciliation with a peer, run by this process on the store in
//! --data, or asked of the running server at --url.

use super::args::{Location, SyncArgs};
use super::print;
use super::progress::{Label, Meter};
use crate::net::sync::{start_remote, sync_with_peer_with_progress};
use crate::store::Store;
use anyhow::{Context, Result};
use std::io::Write;
use std::process::ExitCode;

/// Prints the report; exit 1 when the stores did not end equal (and it was no dry run).
pub(super) fn sync(args: &SyncArgs, out: &mut impl Write) -> Result<ExitCode> {
    let SyncArgs {
        target,
        peer,
        peer_token,
        dry_run,
        json,
        quiet,
    } = args;
    let report = match target.location()? {
        Location::Url(url) => start_remote(
            url,
            target.token.as_deref(),
            peer,
            peer_token.as_deref(),
            *dry_run,
            target.client_config()?,
        )?,
        Location::Data(dir) => {
            let config = target.client_config()?;
            let store = Store::open(dir)?;
            // On live Maildirs the index first takes in what the mail server holds (as
            // `serve` does before its first session: docs/MAILDIR.md), so the peer's mail is
            // never placed at UIDs the server already gave its own.
            let template = crate::maildir::backend::template_of(&store)?;
            if let Some(template) = &template {
                crate::maildir::backend::pass(&store, template, None)
                    .context("taking in the Maildirs before the session")?;
            }
            let was_empty = store.counters()?.messages == 0;
            // There is no other server here, so the peer's token may come from --token too.
            let token = peer_token.as_deref().or(target.token.as_deref());
            let label = Label::new("sync", "messages")
                .unknown_until("total known once the trees are compared");
            let mut meter = Meter::start(label, *quiet);
            let report = sync_with_peer_with_progress(
                &store,
                peer,
                token,
                *dry_run,
                config,
                &mut meter.observer(),
            )
            .with_context(|| format!("reconciling with {peer}"))?;
            meter.finish();
            // What the session brought is written into the Maildirs now, as `serve` would.
            if let Some(template) = &template {
                crate::maildir::backend::settle_owed(&store, template)
                    .context("writing what the session brought into the Maildirs")?;
            }
            // An initial copy leaves the file up to half unused (redb doubles it). The copy
            // is done either way: a compaction that fails is worth a warning, not a failure.
            if let Err(e) = store.compact_after_first_fill(was_empty && !*dry_run) {
                tracing::warn!(error = %e, store = %dir.display(), "the store could not be compacted after the initial copy; `merkmail compact` gives its unused room back");
            }
            report
        }
    };
    print::print(&report, *json, out)?;
    if !report.equal_after && !report.dry_run {
        writeln!(
            out,
            "the stores are not equal yet (a side changed during the session); run sync again"
        )?;
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
