//! Helpers for the multi-process tests: run the real `merkmail` binary in a fresh temporary
//! directory, capture what it says, and make sure no child outlives its test.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use md5::{Digest as _, Md5};
use serde_json::Value;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_merkmail");

/// A `merkmail` command with a clean environment: no store or log level inherited from the
/// shell that runs the tests.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MERKMAIL_DATA")
        .env_remove("MERKMAIL_TOKEN")
        .env_remove("MERKMAIL_LOG")
        .env_remove("RUST_LOG");
    cmd
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8(self.stdout.clone())
            .unwrap_or_else(|_| panic!("{:?}: stdout is not UTF-8", self.args))
    }

    /// Panics, showing the command and what it said, unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert!(
            self.success(),
            "`merkmail {}` failed ({:?}):\nstdout: {}\nstderr: {}",
            self.args.join(" "),
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }

    /// Panics unless the command failed with exactly one line on stderr that starts
    /// `merkmail: error:` and contains every one of `needles`. Returns that line.
    #[track_caller]
    pub fn error(self, needles: &[&str]) -> String {
        assert!(
            !self.success() && self.code.is_some(),
            "`merkmail {}` should have failed, but exited {:?}\nstdout: {}\nstderr: {}",
            self.args.join(" "),
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "`merkmail {}` should print exactly one line on stderr, printed:\n{}",
            self.args.join(" "),
            self.stderr
        );
        let line = lines[0];
        assert!(
            line.starts_with("merkmail: error: "),
            "`merkmail {}`: stderr line does not start with `merkmail: error: `: {line}",
            self.args.join(" ")
        );
        for needle in needles {
            assert!(
                line.contains(needle),
                "`merkmail {}`: error does not mention {needle:?}: {line}",
                self.args.join(" ")
            );
        }
        line.to_string()
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`merkmail {}` printed no JSON ({e}): {}",
                self.args.join(" "),
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }
}

/// Runs `merkmail ARGS…` to completion, with `stdin` on its standard input (none if `None`).
pub fn run<S: AsRef<OsStr>>(args: &[S], stdin: Option<&[u8]>) -> Run {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut child = command(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the merkmail binary");
    // Write from another thread so a child that answers before reading all its input cannot
    // deadlock us; a child that never reads gets a broken pipe, which is fine here.
    let writer = stdin.map(|bytes| {
        let mut input = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        })
    });
    let out = child
        .wait_with_output()
        .expect("cannot wait for the merkmail binary");
    if let Some(writer) = writer {
        writer.join().expect("the stdin writer panicked");
    }
    Run {
        args: shown,
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The hex MD5 of some bytes, computed here and not by merkmail.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// A temporary directory for test inputs (thousands of message files), on tmpfs when there is
/// one: creating a file on a journalling disk can cost a millisecond, which for a generated
/// Maildir would dwarf the run being tested. Stores stay on the ordinary temporary directory.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("merkmail-test-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().expect("cannot create a temporary directory")
}

/// A fresh temporary directory with a data directory `data/` inside it (initialised by
/// [`Store::init`]), and room beside it for input files.
pub struct Store {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
}

impl Store {
    /// A temporary directory whose `data/` has not been initialised.
    pub fn uninitialised() -> Store {
        let tmp = tempfile::tempdir().expect("cannot create a temporary directory");
        let data = tmp.path().join("data");
        Store { tmp, data }
    }

    /// A fresh, empty store made by `merkmail init`.
    pub fn init() -> Store {
        let store = Store::uninitialised();
        run(
            &["init", "--data", store.data(), "--node-id", "test-node"],
            None,
        )
        .ok();
        store
    }

    /// The data directory as an argument.
    pub fn data(&self) -> &str {
        self.data.to_str().expect("temporary paths are UTF-8")
    }

    /// Runs `merkmail SUB… --data DIR REST…`, the spelling the CLI documents.
    pub fn run(&self, sub: &[&str], rest: &[&str]) -> Run {
        self.run_stdin(sub, rest, None)
    }

    pub fn run_stdin(&self, sub: &[&str], rest: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(["--data", self.data()]);
        args.extend_from_slice(rest);
        run(&args, stdin)
    }

    /// Writes `bytes` to a file beside the data directory and returns its path as an argument.
    pub fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, bytes).expect("cannot write an input file");
        path.to_str()
            .expect("temporary paths are UTF-8")
            .to_string()
    }

    /// Appends files and returns the UIDs printed, one per line.
    #[track_caller]
    pub fn append(
        &self,
        user: &str,
        mailbox: &str,
        files: &[&str],
        flags: Option<&str>,
    ) -> Vec<u32> {
        let mut rest = vec![user, mailbox];
        rest.extend_from_slice(files);
        if let Some(flags) = flags {
            rest.extend(["--flags", flags]);
        }
        parse_uids(&self.run(&["append"], &rest).ok())
    }

    /// The server root: 64 hex characters on one line.
    #[track_caller]
    pub fn root(&self) -> String {
        let out = self.run(&["root"], &[]).ok().stdout_str();
        let root = out.strip_suffix('\n').expect("root ends with a newline");
        assert!(
            root.len() == 64 && root.bytes().all(|b| b.is_ascii_hexdigit()) && !root.contains('\n'),
            "root is not 64 hex characters on one line: {out:?}"
        );
        root.to_string()
    }

    /// `list --json` for a user (all mailboxes).
    #[track_caller]
    pub fn list(&self, user: &str) -> Vec<Value> {
        match self.run(&["list"], &[user, "--json"]).ok().json() {
            Value::Array(rows) => rows,
            other => panic!("list --json printed no array: {other}"),
        }
    }

    /// `stats --json`.
    #[track_caller]
    pub fn stats(&self) -> Value {
        self.run(&["stats"], &["--json"]).ok().json()
    }

    /// `mailbox list --json` for a user.
    #[track_caller]
    pub fn mailboxes(&self, user: &str) -> Vec<Value> {
        match self
            .run(&["mailbox", "list"], &[user, "--json"])
            .ok()
            .json()
        {
            Value::Array(rows) => rows,
            other => panic!("mailbox list --json printed no array: {other}"),
        }
    }

    /// `verify` exits 0 and says so.
    #[track_caller]
    pub fn verify(&self) {
        let out = self.run(&["verify"], &[]).ok().stdout_str();
        assert!(out.starts_with("ok"), "verify did not say ok: {out}");
    }

    /// What a failed command must leave as it was: the root (which covers every mailbox and
    /// message), the counters (which also count tombstones), and each given user's messages
    /// as `list --json` shows them (or the error asking for them gives).
    pub fn snapshot(&self, users: &[&str]) -> Vec<String> {
        let show = |r: Run| {
            format!(
                "{:?} {} {}",
                r.code,
                String::from_utf8_lossy(&r.stdout),
                r.stderr
            )
        };
        let mut out = vec![
            show(self.run(&["root"], &[])),
            show(self.run(&["stats"], &["--json"])),
        ];
        for user in users {
            out.push(show(self.run(&["list"], &[user, "--json"])));
        }
        out
    }
}

/// The UIDs an `append` printed, one per line.
#[track_caller]
pub fn parse_uids(run: &Run) -> Vec<u32> {
    run.stdout_str()
        .lines()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("append printed a line that is not a UID: {l:?}"))
        })
        .collect()
}

/// A field of a JSON object as a string (panics with the object if absent).
#[track_caller]
pub fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string field {name:?} in {v}"))
}

/// The string field `name` of every object in the JSON array `list`, in order (panics with
/// the list if it is not an array, or with the object that lacks the field).
#[track_caller]
pub fn str_fields<'a>(list: &'a Value, name: &str) -> Vec<&'a str> {
    let objects = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"));
    objects.iter().map(|v| str_field(v, name)).collect()
}

/// A field of a JSON object as a number (panics with the object if absent).
#[track_caller]
pub fn u64_field(v: &Value, name: &str) -> u64 {
    v.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number field {name:?} in {v}"))
}

/// A field of a JSON object as a list of strings (panics with the object if absent).
#[track_caller]
pub fn strings_field(v: &Value, name: &str) -> Vec<String> {
    v.get(name)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array field {name:?} in {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{name:?} holds a non-string in {v}"))
                .to_string()
        })
        .collect()
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test never
/// leaves a `merkmail` running.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> ChildGuard {
        let child = cmd.spawn().expect("cannot start the merkmail binary");
        ChildGuard { child: Some(child) }
    }

    /// Guards a child started elsewhere (e.g. to read its stdout first).
    pub fn from_child(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the child has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("cannot poll the child"))
    }

    /// Polls until the child exits or `limit` passes; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends SIGKILL (on Unix, `Child::kill` does) and reaps the child. Returns its status,
    /// which says whether the kill landed or the child had already exited by itself.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the child is there until killed");
        // An error here means the child had already exited; `wait` still reaps it.
        let _ = child.kill();
        child.wait().expect("cannot reap the child")
    }

    /// Waits for the child to exit by itself, collecting its output.
    pub fn wait_with_output(mut self) -> std::process::Output {
        let child = self
            .child
            .take()
            .expect("the child is there until waited for");
        child.wait_with_output().expect("cannot wait for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a status says the process died of a signal (on Unix, our SIGKILL).
pub fn killed_by_signal(status: &ExitStatus) -> bool {
    status.code().is_none()
}

/// Walks a directory tree and returns every regular file below it.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("cannot read a directory") {
            let entry = entry.expect("cannot read a directory entry");
            let kind = entry.file_type().expect("cannot stat a directory entry");
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Spawns `cmd` (a `merkmail serve …`, stdout piped here) and waits up to `within` for the
/// first line it prints (`listening on ADDR`). Returns the child and that line, empty if
/// none came in time: the caller says what it expected.
pub fn spawn_for_first_line(mut cmd: Command, within: Duration) -> (Child, String) {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start the merkmail binary");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    (child, rx.recv_timeout(within).unwrap_or_default())
}

/// The address in a `merkmail serve`'s first line (`listening on ADDR`), if it is that line.
pub fn listening_addr(line: &str) -> Option<&str> {
    line.trim_end().strip_prefix("listening on ")
}

/// Starts `merkmail serve --config CONFIG` (stderr appended to LOG, `MERKMAIL_LOG=LEVEL`) and
/// waits up to `within` for its `listening on 127.0.0.1:…` line; panics with the log if the
/// line does not come.
pub fn start_serve(
    name: &str,
    config: &Path,
    log: &Path,
    level: &str,
    within: Duration,
) -> ChildGuard {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut cmd = command(["serve", "--config", &config.display().to_string()]);
    cmd.env("MERKMAIL_LOG", level)
        .stdin(Stdio::null())
        .stderr(file);
    let (child, line) = spawn_for_first_line(cmd, within);
    let guard = ChildGuard::from_child(child);
    assert!(
        line.starts_with("listening on 127.0.0.1:"),
        "{name}: unexpected first line {line:?}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    guard
}

/// SIGTERM; the server must exit 0 within `within`.
pub fn stop_serve(name: &str, proc: &mut ChildGuard, within: Duration) {
    let sent = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = proc
        .wait_timeout(within)
        .unwrap_or_else(|| panic!("{name} did not stop on SIGTERM"));
    assert!(status.success(), "{name}: {status:?}");
}

/// A port nobody listens on right now (tests name peers before they start). Taken below the
/// kernel's ephemeral range: a port from that range (what binding port 0 gives) can be handed
/// to a node's outgoing connection before the node meant to listen on it has started, and
/// that node then fails to bind. Successive calls in one process never repeat a port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > 11_000)
        .unwrap_or(32_768);
    let span = low - 10_000;
    // A random start in each process: test binaries run one after another, and the previous
    // one's sockets may linger.
    let _ = NEXT.compare_exchange(
        0,
        rand::random_range(1..span),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = (10_000 + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// The server in process: `server::run` on its own runtime thread (2 workers), on a loopback
/// port, until the sender is used or dropped. Returns the address, the stop sender and the
/// thread.
pub fn spawn_server(
    state: std::sync::Arc<merkmail::net::server::ServerState>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            merkmail::net::server::run(listener, state, async {
                let _ = stopped.await;
            })
            .await;
        });
    });
    (addr, stop, thread)
}

/// One raw HTTP/1.1 answer, as a test that wrote its own request read it off the socket.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    /// Splits what the server sent into the head and the body; panics unless it holds a
    /// complete head with a status code.
    #[track_caller]
    pub fn parse(buf: &[u8]) -> Raw {
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(buf)));
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Raw {
            status,
            head,
            body: buf[split + 4..].to_vec(),
        }
    }

    /// The body as JSON (panics, showing it, if it is none).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` field of a JSON body (panics if there is none).
    #[track_caller]
    pub fn error(&self) -> String {
        let v = self.json();
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {v}"))
            .to_string()
    }
}

/// [`spawn_server`] over a store the test holds too, shut down (bounded) when dropped. Test
/// files add their own methods to it in `impl` blocks of their own.
pub struct InProcessServer {
    pub addr: std::net::SocketAddr,
    pub store: std::sync::Arc<merkmail::store::Store>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessServer {
    /// Serves `state`, whose store is `store`.
    pub fn spawn(
        store: std::sync::Arc<merkmail::store::Store>,
        state: std::sync::Arc<merkmail::net::server::ServerState>,
    ) -> InProcessServer {
        let (addr, stop, thread) = spawn_server(state);
        InProcessServer {
            addr,
            store,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Begins the shutdown; `wait` then says whether the server stopped in time.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (at most `limit`) for the server to stop; true if it did. Panics if the server
    /// thread did, unless the test is already panicking (a second panic would abort).
    pub fn wait(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                if let Some(t) = self.thread.take() {
                    let joined = t.join();
                    if !std::thread::panicking() {
                        joined.expect("server thread panicked");
                    }
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        // Bounded: the drain deadline is at most a few seconds in these tests.
        self.wait(Duration::from_secs(15));
    }
}

pub mod cluster;
pub mod dovecot;
pub mod node;
pub mod replica;
