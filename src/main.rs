//! The `merkmail` command: argument parsing, logging set-up, and errors turned into exit codes.
//! The commands themselves live in the library's `cli` module.

use clap::Parser;
use merkmail::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    large_allocations_go_back();
    let mut cli = Cli::parse();
    cli.command.resolve();
    if !matches!(cli.command, cli::Command::Serve(_)) {
        quiet_on_closed_stdout();
    }
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

/// Gives SIGPIPE back its default action, so that a command whose stdout is closed early
/// (`merkmail list … | head -1`) ends at once and quietly, with SIGPIPE's exit status (141
/// in a shell), as other Unix tools do. Rust starts programs with SIGPIPE ignored, which turns
/// the closed pipe into an error that would be printed as `merkmail: error: Broken pipe`.
/// Sockets are not affected: the standard library writes to them with `MSG_NOSIGNAL`, so a
/// peer or server that hangs up is still an error the command reports. `serve` keeps the
/// inherited disposition: a daemon must outlive whoever reads its first line.
fn quiet_on_closed_stdout() {
    // SAFETY: signal(2) with SIG_DFL installs no handler, and this runs before any thread
    // is started, so nothing can be racing on the signal disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Buffers of a megabyte or more (a session's request and answer bodies, 8 MiB batches of
/// message bodies) are mapped and unmapped on their own, so their memory goes back to the
/// system when they are freed. glibc otherwise raises its mapping threshold to the largest
/// buffer freed so far and serves the next ones from its heaps, which keep what they once
/// held: a receiving `serve` peaked 24 MiB higher during an initial copy of 100 000 messages
/// (docs/PERFORMANCE.md, "Memory of `serve` and `sync`").
///
/// And every thread allocates from one heap: a sync client stages bodies on a second thread
/// while the next round travels (sync::driver), and with a heap per thread each kept its own
/// share of redb's page buffers: the client peaked 39 MiB higher pulling 100 000 messages.
fn large_allocations_go_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tunables of the allocator; this runs before any thread is
    // started. A refusal (0) leaves glibc's default, which is merely larger.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
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
