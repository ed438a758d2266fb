//! The `merkmail` command: argument parsing, logging set-up, and errors turned into exit codes.
//! The commands themselves live in the library's `cli` module.

use clap::Parser;
use merkmail::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.command.resolve();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERKMAIL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(cli.command.default_log_level())
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("merkmail: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line that names the problem: the cause chain joined with ": ", leaving out causes
/// whose text the message already carries (io errors often appear in both).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}
