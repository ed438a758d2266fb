//! Runs scripts/check-dovecot: our export, read by Dovecot's doveadm, shows the same
//! mailboxes, UIDs, flags, keywords and bytes. Without doveadm it is skipped with a message,
//! except in CI (`CI=true`), where a missing Dovecot is a failure: .ci/run installs it.

use std::process::Command;

#[test]
fn dovecot_reads_the_maildir_we_export() {
    let doveadm = Command::new("sh")
        .args(["-c", "command -v doveadm"])
        .output();
    if !doveadm.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "doveadm is not installed, and CI=true: .ci/run must install dovecot-core and dovecot-imapd"
        );
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
