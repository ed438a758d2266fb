//! A full disk: a real `merkmail serve` whose data directory sits on a small tmpfs. Appends
//! over the mail API until the disk is full: the write that does not fit is refused with 507
//! and a JSON error that names the problem, nothing half-written shows, reads and /status keep
//! answering, and once space is freed the next append succeeds without a restart. After it
//! all, `verify --bodies` passes and every acknowledged message is there.
//!
//! Mounting a tmpfs needs root (or CAP_SYS_ADMIN); where it is refused the test says so and
//! skips. Whatever happens, the mount is taken down at the end.

mod common;

use common::{command, run, ChildGuard};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const TOKEN: &str = "admin-secret";
/// The tmpfs: big enough for the store, small enough to fill in well under a second.
const DISK_MB: u64 = 24;
/// Each appended message (distinct, so each needs its own body).
const MESSAGE_BYTES: usize = 256 * 1024;
/// An upper bound on the appends that fill the disk (24 MiB / 256 KiB = 96, plus slack).
const MAX_APPENDS: usize = 200;

/// A tmpfs mounted for the test, unmounted (lazily, so a process still inside cannot stop
/// it) when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `mb` MiB on a fresh directory, or says why it cannot.
    fn tmpfs(mb: u64) -> Result<Mount, String> {
        let dir = tempfile::Builder::new()
            .prefix("merkmail-diskfull-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0700")])
            .arg("tmpfs")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Mount(dir))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn message(n: usize) -> Vec<u8> {
    let mut m = format!("Subject: filler {n}\r\n\r\n").into_bytes();
    // Distinct and incompressible enough: every line names the message and the line.
    let mut line = 0;
    while m.len() < MESSAGE_BYTES {
        m.extend_from_slice(format!("message {n} line {line} {:x}\r\n", line * 7919).as_bytes());
        line += 1;
    }
    m
}

/// Starts `serve` on a free port; returns the guard and its URL.
fn serve(data: &Path, log: &Path) -> (ChildGuard, String) {
    let log = std::fs::File::create(log).expect("log");
    let mut cmd = command([
        "serve",
        "--data",
        &data.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        TOKEN,
        "--token",
        "peer-secret",
    ]);
    cmd.env("MERKMAIL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let (child, line) = common::spawn_for_first_line(cmd, Duration::from_secs(20));
    let addr =
        common::listening_addr(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (ChildGuard::from_child(child), format!("http://{addr}"))
}

#[test]
fn a_full_disk_refuses_writes_with_507_keeps_serving_reads_and_recovers_when_space_returns() {
    let mount = match Mount::tmpfs(DISK_MB) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a {DISK_MB} MiB tmpfs here ({why}); run as root to test a full disk");
            return;
        }
    };
    let data = mount.0.join("data");
    run(
        &[
            "init",
            "--data",
            &data.display().to_string(),
            "--node-id",
            "full",
        ],
        None,
    )
    .ok();
    // Space to give back later: a filler file beside the store.
    let filler = mount.0.join("filler");
    std::fs::write(&filler, vec![0x5a; 6 << 20]).expect("write the filler");
    let log = std::env::temp_dir().join(format!("merkmail-diskfull-{}.log", std::process::id()));
    let (mut server, url) = serve(&data, &log);
    let client = merkmail::net::client::BlockingClient::new(
        &url,
        Some(TOKEN),
        merkmail::net::client::ClientConfig::default(),
    )
    .expect("client");
    let append = "/v1/mail/users/alice/mailboxes/INBOX/messages";

    // Fill the disk.
    let mut acknowledged = 0usize;
    let mut refused = None;
    for n in 0..MAX_APPENDS {
        let (status, body) = client
            .post(append, "message/rfc822", message(n))
            .expect("POST");
        match status.as_u16() {
            201 => acknowledged += 1,
            507 => {
                refused = Some(String::from_utf8_lossy(&body).into_owned());
                break;
            }
            other => panic!(
                "append {n}: {other} {}\nlog:\n{}",
                String::from_utf8_lossy(&body),
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("{MAX_APPENDS} appends never filled the disk"));
    let error: serde_json::Value = serde_json::from_str(&refused).expect("JSON error");
    let said = error["error"].as_str().expect("error field");
    assert!(said.contains("no space left"), "{said}");
    assert!(
        acknowledged > 0,
        "the store filled up before the first message"
    );

    // Still full: a second write is refused the same way; reads and /status answer.
    let (status, _) = client
        .post(append, "message/rfc822", message(MAX_APPENDS))
        .expect("POST");
    assert_eq!(status.as_u16(), 507);
    let (status, body) = client.get("/status").expect("status");
    assert_eq!(status.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
    let status_view: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
    assert_eq!(
        status_view["counts"]["messages"].as_u64(),
        Some(acknowledged as u64),
        "{status_view}"
    );
    let (status, body) = client
        .get("/v1/mail/users/alice/mailboxes/INBOX/messages")
        .expect("list");
    assert_eq!(status.as_u16(), 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).expect("list JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(acknowledged));
    let (status, body) = client
        .get("/v1/mail/users/alice/mailboxes/INBOX/messages/1")
        .expect("fetch");
    assert_eq!(status.as_u16(), 200);
    assert_eq!(body.as_ref(), message(0).as_slice());

    // Space returns (the filler goes): the next appends succeed, in the same process.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mut after = 0;
    for n in 0..3 {
        let (status, body) = client
            .post(append, "message/rfc822", message(MAX_APPENDS + 1 + n))
            .expect("POST");
        assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
        after += 1;
    }
    let (_, body) = client.get("/status").expect("status");
    let status_view: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
    assert_eq!(
        status_view["counts"]["messages"].as_u64(),
        Some((acknowledged + after) as u64)
    );

    // Stop cleanly; the store verifies, bodies included.
    common::stop_serve("serve", &mut server, Duration::from_secs(20));
    let verified = run(
        &[
            "verify",
            "--data",
            &data.display().to_string(),
            "--bodies",
            "--quiet",
        ],
        None,
    )
    .ok();
    assert!(verified.stdout_str().contains("bodies"), "{verified:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "acknowledged {acknowledged} appends of {MESSAGE_BYTES} bytes before the {DISK_MB} MiB disk filled; reopened {} time(s)",
        text.matches("the store was reopened").count()
    );
    // What the server said about it (shown with --nocapture).
    for line in text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        eprintln!("  {line}");
    }
    let _ = std::fs::remove_file(&log);
    drop(mount);
}
