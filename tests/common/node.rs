//! One real `merkmail serve` process for the multi-process tests (bodies, cluster, tls,
//! crash_loop, load): its config file, start and stop, the CLI and HTTP pointed at it, and the
//! bounded waits (`poll`, `converge`) the tests put around it.

use super::{killed_by_signal, parse_uids, run, start_serve, stop_serve, ChildGuard, Run};
use merkmail::net::client::{BlockingClient, ClientConfig};
use merkmail::net::tls::ClientTls;
use merkmail::status::{PeerView, StatusView};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The peer at `url` in a node's status; panics when the node does not list it.
pub fn peer_of<'a>(v: &'a StatusView, url: &str) -> &'a PeerView {
    v.peers
        .iter()
        .find(|p| p.url == url)
        .unwrap_or_else(|| panic!("{url} not among the peers of {}", v.node))
}

/// How long a node gets to print its `listening on` line, and to exit after SIGTERM. The
/// tests took 20 or 30 seconds before they shared this harness; the looser bound serves all.
const START_STOP: Duration = Duration::from_secs(30);

/// Config lines for nodes whose background checks are an hour apart, so that only the
/// start-up checks and the journal move mail while a test watches.
pub const HOURLY_CHECKS: &str = "check_interval_s = 3600\nbackoff_max_s = 1\n";

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What every node of one test shares: the tokens, config lines, TLS, the log level.
#[derive(Clone, Debug)]
pub struct Setup {
    pub peer_token: &'static str,
    pub admin_token: &'static str,
    /// Config lines every node gets, before its own.
    pub config: &'static str,
    /// `Some`: the node serves only https with this certificate and trusts this CA, for its
    /// peers and for the commands the test points at it.
    pub tls: Option<Pki>,
    /// `MERKMAIL_LOG` for `serve`.
    pub level: &'static str,
}

impl Setup {
    /// Plain HTTP, `info` logs, no config lines beyond the tokens.
    pub fn http(peer_token: &'static str, admin_token: &'static str) -> Setup {
        Setup {
            peer_token,
            admin_token,
            config: "",
            tls: None,
            level: "info",
        }
    }
}

/// One `merkmail serve` with a config file naming its peers, started and stopped by the test.
pub struct Node {
    pub name: String,
    pub port: u16,
    /// The data directory; the log sits beside it as `NAME.log`.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub setup: Setup,
    pub proc: Option<ChildGuard>,
}

impl Node {
    /// Writes the node's config file: its peers, the setup's tokens, TLS and lines, and
    /// `extra` (more TOML keys for this node).
    pub fn new(
        root: &Path,
        name: &str,
        port: u16,
        peers: &[u16],
        setup: &Setup,
        extra: &str,
    ) -> Node {
        let dir = root.join(name);
        let config = root.join(format!("{name}.toml"));
        let mut text = format!(
            "node_id = \"{name}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\
             peer_token = \"{}\"\nadmin_token = \"{}\"\n",
            dir.display(),
            setup.peer_token,
            setup.admin_token
        );
        if let Some(pki) = &setup.tls {
            text.push_str(&format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
                pki.cert.display(),
                pki.key.display(),
                pki.ca.display()
            ));
        }
        text.push_str(setup.config);
        text.push_str(extra);
        text.push('\n');
        let scheme = Node::scheme(setup);
        for p in peers {
            text.push_str(&format!("[[peer]]\nurl = \"{scheme}://127.0.0.1:{p}\"\n"));
        }
        std::fs::write(&config, text).expect("write config");
        Node {
            name: name.to_string(),
            port,
            dir,
            config,
            setup: setup.clone(),
            proc: None,
        }
    }

    fn scheme(setup: &Setup) -> &'static str {
        if setup.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", Node::scheme(&self.setup), self.port)
    }

    /// The data directory as an argument.
    pub fn data(&self) -> String {
        self.dir.display().to_string()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Everything the node has logged, in all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last 40 lines of the log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `merkmail init` on the node's data directory, under the node's name.
    #[track_caller]
    pub fn init(&self) {
        run(
            &["init", "--data", &self.data(), "--node-id", &self.name],
            None,
        )
        .ok();
    }

    /// Starts `serve --config` and waits (bounded) for its `listening on` line.
    pub fn start(&mut self) {
        let log = self.log_path();
        self.proc = Some(start_serve(
            &self.name,
            &self.config,
            &log,
            self.setup.level,
            START_STOP,
        ));
    }

    /// Starts `serve` with `MERKMAIL_FAULT=fault` (src/maildir/fault.rs) and waits (bounded)
    /// until the fault point kills it: the process must end by SIGKILL, by its own hand.
    #[track_caller]
    pub fn run_until_fault(&mut self, fault: &str, within: Duration) {
        use std::os::unix::process::ExitStatusExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log");
        let mut cmd = super::command(["serve", "--config", &self.config.display().to_string()]);
        cmd.env("MERKMAIL_LOG", self.setup.level)
            .env("MERKMAIL_FAULT", fault)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let mut proc = ChildGuard::spawn(cmd);
        let status = proc.wait_timeout(within).unwrap_or_else(|| {
            panic!(
                "{}: MERKMAIL_FAULT={fault} never came within {within:?}; log:\n{}",
                self.name,
                self.log_tail()
            )
        });
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{}: MERKMAIL_FAULT={fault} should end it by SIGKILL: {status:?}; log:\n{}",
            self.name,
            self.log_tail()
        );
        assert!(
            self.log().contains("MERKMAIL_FAULT reached"),
            "{}: killed, but not at the fault",
            self.name
        );
    }

    /// Starts the node on another port with no peers: cut off from the cluster, as in a
    /// network split (nobody knows where it listens). Returns its URL.
    pub fn start_isolated(&mut self) -> String {
        let port = super::free_port();
        let config = self.dir.with_extension("isolated.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\
                 admin_token = \"{}\"\npeer_token = \"{}\"\n",
                self.name,
                self.dir.display(),
                self.setup.admin_token,
                self.setup.peer_token
            ),
        )
        .expect("write config");
        let normal = std::mem::replace(&mut self.config, config);
        let normal_port = std::mem::replace(&mut self.port, port);
        self.start();
        let url = self.url();
        self.config = normal;
        self.port = normal_port;
        url
    }

    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// SIGTERM; the node must exit 0 within the bound (a clean close: redb then checks
    /// nothing at the next open).
    #[track_caller]
    pub fn stop(&mut self) {
        let mut proc = self.proc.take().expect("running");
        stop_serve(&self.name, &mut proc, START_STOP);
    }

    /// SIGKILL; the signal must be what ended the node.
    #[track_caller]
    pub fn kill(&mut self) {
        let status = self.proc.take().expect("running").kill();
        assert!(killed_by_signal(&status), "{}: {status:?}", self.name);
    }

    /// SIGKILL (if the node runs), then `verify` on the store as the crash left it.
    #[track_caller]
    pub fn kill_and_verify(&mut self, point: &str) {
        if self.running() {
            self.kill();
        }
        self.assert_verifies(point);
    }

    /// `merkmail verify --data DIR FLAGS…` on the stopped node.
    pub fn verify(&self, flags: &[&str]) -> Run {
        let data = self.data();
        let mut args = vec!["verify", "--data", &data];
        args.extend_from_slice(flags);
        run(&args, None)
    }

    /// `verify` on the stopped node passes; `point` says where the test is.
    #[track_caller]
    pub fn assert_verifies(&self, point: &str) {
        let out = self.verify(&[]);
        assert!(
            out.success(),
            "{point}: verify failed on {} after SIGKILL:\n{}\n{}",
            self.name,
            out.stdout_str(),
            out.stderr
        );
    }

    /// `merkmail SUB… --url URL [--token TOKEN] [--ca CA] REST…`: a command pointed at the
    /// node (the CA only when it serves https).
    pub fn run_at(&self, sub: &[&str], token: Option<&str>, rest: &[&str]) -> Run {
        let url = self.url();
        let ca = self
            .setup
            .tls
            .as_ref()
            .map(|pki| pki.ca.display().to_string());
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(["--url", &url]);
        if let Some(token) = token {
            args.extend(["--token", token]);
        }
        if let Some(ca) = &ca {
            args.extend(["--ca", ca]);
        }
        args.extend_from_slice(rest);
        run(&args, None)
    }

    /// A mail command on the node, with the admin token.
    pub fn cli(&self, sub: &[&str], rest: &[&str]) -> Run {
        self.run_at(sub, Some(self.setup.admin_token), rest)
    }

    /// Appends one message file; returns its UID.
    #[track_caller]
    pub fn append(&self, user: &str, mailbox: &str, file: &Path) -> u32 {
        let out = self
            .cli(&["append"], &[user, mailbox, &file.display().to_string()])
            .ok();
        parse_uids(&out)[0]
    }

    /// The root, as `merkmail root` prints it.
    #[track_caller]
    pub fn root(&self) -> String {
        self.cli(&["root"], &[])
            .ok()
            .stdout_str()
            .trim()
            .to_string()
    }

    /// `list --json` for a user.
    #[track_caller]
    pub fn list(&self, user: &str) -> Value {
        self.cli(&["list"], &[user, "--json"]).ok().json()
    }

    /// `merkmail status --url URL [--ca CA] --json`, parsed.
    #[track_caller]
    pub fn status(&self) -> StatusView {
        let out = self.run_at(&["status"], None, &["--json"]).ok();
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// A client for the node's HTTP API with `config` (the node's CA added for https).
    pub fn client_with(&self, token: Option<&str>, config: ClientConfig) -> BlockingClient {
        let config = ClientConfig {
            tls: self.setup.tls.as_ref().map(|pki| {
                ClientTls::from_ca_file(&pki.ca).expect("the test CA is a readable PEM file")
            }),
            ..config
        };
        BlockingClient::new(&self.url(), token, config).expect("client")
    }

    /// A client with the admin token and short timeouts: a node that is down (or being
    /// killed) fails fast, for the polls and the writers.
    pub fn client(&self) -> BlockingClient {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        self.client_with(Some(self.setup.admin_token), config)
    }

    /// `GET path` with `token` (the client's default timeouts): the status code and the body.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let client = self.client_with(token, ClientConfig::default());
        let (status, body) = client.get(path).expect("GET");
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    }

    /// The root over HTTP, or `None` while the node does not answer (it may be down).
    pub fn try_root(&self) -> Option<String> {
        let (status, body) = self.client().get("/v1/mail/root").ok()?;
        if !status.is_success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&body).ok()?;
        v.get("root").and_then(Value::as_str).map(str::to_string)
    }

    /// A user's live messages: md5 → (count, flags of the last one seen).
    #[track_caller]
    pub fn messages(&self, user: &str) -> BTreeMap<String, (usize, Vec<String>)> {
        let (status, body) = self
            .client()
            .get(&format!("/v1/mail/users/{user}/messages"))
            .expect("list messages");
        let mut out: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        if status.as_u16() == 404 {
            return out; // the user never got a message
        }
        assert!(status.is_success(), "{}: list {user}: {status}", self.name);
        let v: Value = serde_json::from_slice(&body).expect("message list JSON");
        let list = v
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .or_else(|| v.as_array().cloned())
            .expect("a list of messages");
        for m in list {
            let md5 = m["md5"].as_str().expect("md5").to_string();
            let flags: Vec<String> = m["flags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let e = out.entry(md5).or_insert((0, Vec::new()));
            e.0 += 1;
            e.1 = flags;
        }
        out
    }
}

/// Polls (every 100 ms) until `ok` holds, or fails naming `what` once `within` has passed.
#[track_caller]
pub fn poll(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until every node answers the same root, and returns it; or fails, naming `label`,
/// with the tail of each node's log.
#[track_caller]
pub fn converge(nodes: &[&Node], within: Duration, label: &str) -> String {
    let deadline = Instant::now() + within;
    loop {
        let roots: Vec<Option<String>> = nodes.iter().map(|n| n.try_root()).collect();
        if let Some(Some(first)) = roots.first() {
            if roots.iter().all(|r| r.as_ref() == Some(first)) {
                return first.clone();
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}:\n{}", n.name, n.log_tail()))
                .collect();
            panic!(
                "{label}: no convergence within {within:?} ({roots:?})\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a small message `NAME.eml` in `dir` (subject and body name it) and returns its path.
pub fn message_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.eml"));
    std::fs::write(
        &path,
        format!("From: a@example.org\r\nSubject: {name}\r\n\r\nbody of {name}\r\n"),
    )
    .expect("write message");
    path
}
