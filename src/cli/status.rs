//! `merkmail status`: a running server's status (GET /status), as the terminal view or as its
//! JSON.

use super::args::client_config;
use super::print::{print, Printed};
use crate::net::client::BlockingClient;
use crate::net::remote::status_json;
use crate::status::{human, StatusView};
use anyhow::{Context, Result};
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

/// Asks the server at `url` (trusting the CAs in `ca` for https://) and prints the answer.
pub(super) fn status(
    url: &str,
    ca: Option<&Path>,
    json: bool,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let client = BlockingClient::new(url, None, client_config(ca)?)?;
    let body = status_json(&client)?;
    let view: StatusView = serde_json::from_slice(&body)
        .with_context(|| format!("{url}/status: not a merkmail status"))?;
    print(&view, json, out)?;
    Ok(ExitCode::SUCCESS)
}

/// The terminal view (`status::human`).
impl Printed for StatusView {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        write!(out, "{}", human(self))
    }
}
