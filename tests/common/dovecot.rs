//! A real Dovecot for tests, with no daemon: a mail root, a standalone config, IMAP sessions
//! through Python's imaplib over `doveadm exec imap`, and doveadm commands.
//!
//! [`Dovecot::find`] fails the test when `CI=true` and Dovecot or python3 is missing (.ci/run
//! installs them), and returns `None` with a message otherwise, so the caller can skip.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One mail user's Maildir served by a standalone Dovecot config.
#[derive(Debug)]
pub struct Dovecot {
    /// Everything lives here; removed on drop.
    pub work: PathBuf,
    pub conf: PathBuf,
    pub user: String,
    /// `$HOME` of the mail user; the Maildir is `home/Maildir`.
    pub home: PathBuf,
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The unprivileged account Dovecot runs as when we are root: Dovecot refuses mail owned by root.
fn mail_account() -> Option<(String, u32, u32)> {
    for name in ["vmail", "dovecot", "nobody"] {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, name]).output().ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        if let (Some(uid), Some(gid)) = (id("-u"), id("-g")) {
            return Some((name.to_string(), uid, gid));
        }
    }
    None
}

impl Dovecot {
    /// Sets up a mail root for user `carol` under a fresh directory named after `test`, or
    /// returns `None` (after saying why) when Dovecot is missing outside CI.
    pub fn find(test: &str) -> Option<Dovecot> {
        let missing: Vec<&str> = ["doveadm", "python3"]
            .into_iter()
            .filter(|p| !have(p))
            .collect();
        if !missing.is_empty() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{missing:?} not installed, and CI=true: .ci/run must install dovecot-core, dovecot-imapd and python3"
            );
            eprintln!("SKIPPED: {missing:?} not installed (apt-get install dovecot-core dovecot-imapd python3)");
            return None;
        }
        let work =
            std::env::temp_dir().join(format!("merkmail-dovecot-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        // The home is named after the user, so that `<work>/%u/Maildir` is a merkmail
        // Maildir template for it.
        let home = work.join("carol");
        let maildir = home.join("Maildir");
        std::fs::create_dir_all(work.join("run")).expect("make run dir");
        std::fs::create_dir_all(&maildir).expect("make Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("make Maildir subdirectory");
        }
        let mut uid_lines = String::new();
        let root = std::fs::metadata(&work).expect("stat").uid() == 0;
        if root {
            let (_, uid, gid) = mail_account().expect("no unprivileged account for Dovecot");
            let out = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(&home)
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown failed");
            uid_lines = format!("mail_uid = {uid}\nmail_gid = {gid}\n");
        }
        let conf = work.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {run}\nlog_path = /dev/stderr\nssl = no\n\
                 mail_location = maildir:~/Maildir\n{uid_lines}\
                 first_valid_uid = 1\nfirst_valid_gid = 1\n\
                 namespace inbox {{\n  inbox = yes\n  prefix =\n}}\n",
                run = work.join("run").display()
            ),
        )
        .expect("write dovecot.conf");
        Some(Dovecot {
            work,
            conf,
            user: "carol".to_string(),
            home,
        })
    }

    /// The Maildir template (`init --maildir`) whose user `carol` is this Maildir.
    pub fn template(&self) -> String {
        format!("{}/%u/Maildir", self.work.display())
    }

    /// The Maildir++ root Dovecot serves.
    pub fn maildir(&self) -> PathBuf {
        self.home.join("Maildir")
    }

    /// The shell command of a preauthenticated IMAP session (for `imaplib.IMAP4_stream`).
    pub fn imap_command(&self) -> String {
        format!(
            "env USER={} HOME={} doveadm -c {} exec imap",
            self.user,
            self.home.display(),
            self.conf.display()
        )
    }

    /// Runs `doveadm ARGS` as this user; panics with its stderr when it fails.
    pub fn doveadm(&self, args: &[&str]) -> String {
        self.doveadm_with(args, None)
    }

    /// `doveadm save -m MAILBOX` of `bytes`: Dovecot's own save path (what its LDA does).
    pub fn save(&self, mailbox: &str, bytes: &[u8]) -> String {
        let path = self.work.join(format!("save-{}.eml", rand_suffix()));
        std::fs::write(&path, bytes).expect("write the message");
        self.doveadm_with(&["save", "-m", mailbox], Some(&path))
    }

    fn doveadm_with(&self, args: &[&str], stdin: Option<&Path>) -> String {
        let mut cmd = Command::new("doveadm");
        cmd.arg("-c")
            .arg(&self.conf)
            .args(args)
            .env("USER", &self.user)
            .env("HOME", &self.home);
        if let Some(path) = stdin {
            cmd.stdin(std::fs::File::open(path).expect("open doveadm's input"));
        }
        let out = cmd.output().expect("run doveadm");
        assert!(
            out.status.success(),
            "doveadm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a Python script with `IMAP` (the session command), `imaplib` and `sys` in scope,
    /// and the given arguments in `sys.argv[1:]`. Returns its output; stdout is its answer.
    pub fn python(&self, script: &str, args: &[&str]) -> Output {
        self.python_command(script, args)
            .output()
            .expect("run python3")
    }

    /// The `python3` command for `script` behind the prelude both runners share, written to
    /// a fresh file under the work directory, with `args` and no stdin.
    fn python_command(&self, script: &str, args: &[&str]) -> Command {
        let prelude = format!("import imaplib, sys\nIMAP = {:?}\n", self.imap_command());
        let path = self.work.join(format!("script-{}.py", rand_suffix()));
        std::fs::write(&path, format!("{prelude}{script}")).expect("write script");
        let mut cmd = Command::new("python3");
        cmd.arg(&path).args(args).stdin(Stdio::null());
        cmd
    }

    /// Starts the same script in the background (for work concurrent with the test's own).
    pub fn python_spawn(&self, script: &str, args: &[&str]) -> std::process::Child {
        self.python_command(script, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3")
    }

    /// Every message of `mailbox` as a fresh IMAP session sees it: (UID, Subject header text).
    pub fn uids_and_subjects(&self, mailbox: &str) -> Vec<(u32, String)> {
        let out = self.python(
            r#"
m = imaplib.IMAP4_stream(IMAP)
m.select(sys.argv[1])
typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
for item in data:
    if isinstance(item, tuple):
        uid = item[0].split(b"UID ")[1].split()[0].decode()
        subject = item[1].decode().strip().replace("Subject: ", "")
        print(uid, subject)
m.logout()
"#,
            &[mailbox],
        );
        assert!(
            out.status.success(),
            "IMAP fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (uid, subject) = l.split_once(' ')?;
                Some((uid.parse().ok()?, subject.to_string()))
            })
            .collect()
    }

    /// Runs IMAP commands in one fresh session (`m`, logged in; `sys.argv[1:]` are `args`);
    /// every command must answer OK (the script checks with `ok(...)`). Returns stdout.
    #[track_caller]
    pub fn imap(&self, body: &str, args: &[&str]) -> String {
        let script = format!(
            "def ok(r):\n    assert r[0] == 'OK', r\n    return r[1]\n\
             m = imaplib.IMAP4_stream(IMAP)\n{body}\nm.logout()\n"
        );
        let out = self.python(&script, args);
        assert!(
            out.status.success(),
            "IMAP session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What an IMAP client sees of every selectable folder: its UIDVALIDITY and, per message,
    /// UID, flags (without \Recent) and the MD5 of its bytes; as JSON
    /// `{folder: [uidvalidity, [[uid, [flags], md5], …]]}`.
    pub fn imap_view(&self) -> serde_json::Value {
        let out = self.imap(
            r#"
import hashlib, json, re
view = {}
for line in ok(m.list()):
    line = line.decode()
    attrs, name = re.match(r'\((.*?)\) (?:"."|NIL) (.*)', line).groups()
    if 'Noselect' in attrs or 'NonExistent' in attrs:
        continue
    name = name.strip('"')
    count = int(ok(m.select('"%s"' % name, readonly=True))[0])
    uidvalidity = int(m.response('UIDVALIDITY')[1][0])
    messages = []
    if count:
        for item in ok(m.uid('FETCH', '1:*', '(UID FLAGS BODY.PEEK[])')):
            if not isinstance(item, tuple):
                continue
            meta = item[0].decode()
            uid = int(re.search(r'UID (\d+)', meta).group(1))
            flags = sorted(f for f in re.search(r'FLAGS \(([^)]*)\)', meta).group(1).split() if f.lower() != chr(92) + 'recent')
            messages.append([uid, flags, hashlib.md5(item[1]).hexdigest()])
    view[name] = [uidvalidity, sorted(messages)]
print(json.dumps(view, sort_keys=True))
"#,
            &[],
        );
        serde_json::from_str(out.trim()).expect("the view script prints JSON")
    }

    /// The directory `path` as the mail user would own it (used after writing as root).
    pub fn chown_like_maildir(&self, path: &Path) {
        let meta = std::fs::metadata(self.maildir()).expect("stat Maildir");
        let out = Command::new("chown")
            .args(["-R", &format!("{}:{}", meta.uid(), meta.gid())])
            .arg(path)
            .output()
            .expect("chown");
        assert!(out.status.success());
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}
