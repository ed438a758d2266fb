//! Runs scripts/check-dovecot: our export, read by Dovecot's doveadm, shows the same
//! mailboxes, UIDs, flags, keywords and bytes. Skipped, with a message, without doveadm.

use std::process::Command;

#[test]
fn dovecot_reads_the_maildir_we_export() {
    let doveadm = Command::new("sh")
        .args(["-c", "command -v doveadm"])
        .output();
    if !doveadm.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: doveadm is not installed (apt-get install dovecot-core); .ci/run installs it"
        );
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/check-dovecot"))
        .env("MERKMAIL", env!("CARGO_BIN_EXE_merkmail"))
        .current_dir(root)
        .output()
        .expect("run scripts/check-dovecot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check-dovecot failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("check-dovecot: OK"), "{stdout}");
}
