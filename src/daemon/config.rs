//! `merkmail serve`'s configuration: a TOML file (`--config FILE`, unknown keys rejected) with
//! command-line flags on top. docs/CONFIG.md documents every key and its default.
//!
//! Loading never binds or opens anything: a bad file fails with the file, the key and the
//! problem before the server touches the network or the store.

use crate::net::tls::{ClientTls, ServerTls, TlsError};
use crate::status::Mode;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// A configuration problem; the message names the file (if any), the key and the problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: key `{key}`: {problem}")]
    Invalid {
        origin: String,
        key: String,
        problem: String,
    },
}

/// One peer: where it listens and the token it wants.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// e.g. `http://10.0.0.2:8025`.
    pub url: String,
    /// What this node presents to that peer; defaults to the node's own `peer_token`.
    #[serde(default)]
    pub token: Option<String>,
}

/// Request limits, as in `net::Limits`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_append_bytes: usize,
    pub max_sync_bytes: usize,
    pub max_items: usize,
    pub header_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let d = crate::net::Limits::default();
        LimitsConfig {
            max_body_bytes: d.max_body,
            max_append_bytes: d.max_append_body,
            max_sync_bytes: d.max_sync_body,
            max_items: d.max_items,
            header_timeout_ms: d.header_read_timeout.as_millis() as u64,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            max_connections: d.max_connections,
        }
    }
}

impl LimitsConfig {
    pub fn to_limits(&self) -> crate::net::Limits {
        crate::net::Limits {
            max_append_body: self.max_append_bytes,
            max_sync_body: self.max_sync_bytes,
            max_body: self.max_body_bytes,
            max_items: self.max_items,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_connections: self.max_connections,
            ..crate::net::Limits::default()
        }
    }
}

/// Everything `merkmail serve` runs with. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name among its peers; used to create the store if `data_dir` holds none.
    pub node_id: Option<String>,
    /// The store's directory.
    pub data_dir: Option<PathBuf>,
    /// The address to listen on.
    pub listen: Option<String>,
    /// What peers must present on the peer API (`/v1/sync/`, `/v1/journal`), and what this
    /// node presents to peers that have no `token` of their own.
    pub peer_token: Option<String>,
    /// What the mail API and the admin routes want. No default: without it (and with a
    /// `peer_token`) those routes answer 403. Must differ from every peer token.
    pub admin_token: Option<String>,
    /// The listener's TLS certificate chain (PEM, leaf first); with `tls_key`, every route is
    /// served over https only. Without both: plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) that `https://` peers' certificates must chain to; without
    /// it, the web PKI's roots.
    pub tls_ca: Option<PathBuf>,
    #[serde(rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Seconds between two background checks of one peer.
    pub check_interval_s: u64,
    /// Each wait is `check_interval_s` × (1 ± a random fraction up to this).
    pub check_jitter: f64,
    /// Live-Maildir stores: seconds between two safety-net passes over the Maildirs (changes
    /// are noticed at once through inotify; this pass catches what a watch missed, and costs
    /// a few stats per folder when nothing changed).
    pub rescan_interval_s: u64,
    /// The longest wait between attempts while a peer is unreachable (the backoff doubles
    /// from 1 s up to this).
    pub backoff_max_s: u64,
    pub mode: Mode,
    /// `sync` mode: how long a write waits for a peer to store it.
    pub sync_timeout_ms: u64,
    /// Journal entries a peer may lag before its journal is dropped for a Merkle session.
    pub journal_bound: u64,
    /// Journal entries shipped in one request (also capped at 8 MiB of bodies).
    pub journal_batch: usize,
    /// How long an expunge or delete tombstone is kept at least (`30d`, `12h`, `90s`); it
    /// goes only once every configured peer is known to have it too (daemon/tombstones.rs).
    pub tombstone_retention: Option<Retention>,
    /// The older spelling of `tombstone_retention`, in days; giving both is an error.
    pub tombstone_retention_days: Option<u64>,
    /// How long a SIGTERM waits for requests and sessions in flight, ms.
    pub shutdown_timeout_ms: u64,
    /// redb's quick-repair: every commit also saves the allocator state, so the first start
    /// after a crash opens at once instead of walking the whole file; costs a second fsync
    /// per commit.
    pub quick_repair: bool,
    /// redb's page cache, MiB (none: `store::DEFAULT_CACHE_MB`); MERKMAIL_CACHE_MB wins.
    pub cache_mb: Option<usize>,
    /// How far ahead of this node's clock a peer's stamp may be (`10m`, `90s`; none:
    /// `model::DEFAULT_MAX_CLOCK_SKEW_MS`, ten minutes). A change stamped further ahead is
    /// not applied until this node's clock comes within it (docs/PROTOCOL.md, "Clocks").
    pub max_clock_skew: Option<Retention>,
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_id: None,
            data_dir: None,
            listen: None,
            peer_token: None,
            admin_token: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            peers: Vec::new(),
            check_interval_s: 60,
            check_jitter: 0.2,
            rescan_interval_s: 60,
            backoff_max_s: 300,
            mode: Mode::Async,
            sync_timeout_ms: 2_000,
            journal_bound: 100_000,
            journal_batch: 1_000,
            tombstone_retention: None,
            tombstone_retention_days: None,
            shutdown_timeout_ms: 10_000,
            quick_repair: false,
            cache_mb: None,
            max_clock_skew: None,
            limits: LimitsConfig::default(),
        }
    }
}

/// What the command line may set on top of the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub peer_token: Option<String>,
    pub admin_token: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    /// `--peer URL` (repeatable): added to the file's peers.
    pub peers: Vec<String>,
    pub check_interval_s: Option<u64>,
    pub rescan_interval_s: Option<u64>,
    pub mode: Option<Mode>,
    pub sync_timeout_ms: Option<u64>,
    pub node_id: Option<String>,
    /// `--tombstone-retention DURATION`: replaces both retention keys of the file.
    pub tombstone_retention: Option<Retention>,
}

/// A tombstone retention: a whole number of days, hours, minutes or seconds (`30d`, `12h`,
/// `15m`, `90s`), at least one second. Parsed once, so the daemon never sees a bad one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention(Duration);

/// Why a retention was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RetentionError {
    #[error("{0:?} is not a duration: write a whole number and a unit, d, h, m or s (e.g. 30d, 12h, 90s)")]
    Malformed(String),
    #[error("must be at least 1s")]
    Zero,
    #[error("{0:?} is too long")]
    TooLong(String),
}

impl Retention {
    /// The default: 30 days.
    pub const DEFAULT: Retention = Retention(Duration::from_secs(30 * 86_400));

    pub fn from_days(days: u64) -> Result<Retention, RetentionError> {
        let secs = days
            .checked_mul(86_400)
            .ok_or_else(|| RetentionError::TooLong(format!("{days} days")))?;
        Retention::from_secs(secs, || format!("{days} days"))
    }

    fn from_secs(secs: u64, shown: impl Fn() -> String) -> Result<Retention, RetentionError> {
        match secs {
            0 => Err(RetentionError::Zero),
            // Stamps count milliseconds in 48 bits: a longer retention could never end anyway.
            s if s > (1 << 48) / 1000 => Err(RetentionError::TooLong(shown())),
            s => Ok(Retention(Duration::from_secs(s))),
        }
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
}

impl std::str::FromStr for Retention {
    type Err = RetentionError;

    fn from_str(text: &str) -> Result<Retention, RetentionError> {
        let malformed = || RetentionError::Malformed(text.to_string());
        let split = text.len().checked_sub(1).ok_or_else(malformed)?;
        let (number, unit) = (text.get(..split).ok_or_else(malformed)?, &text[split..]);
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let n: u64 = number
            .parse()
            .map_err(|_| RetentionError::TooLong(text.to_string()))?;
        let unit_secs = match unit {
            "d" => 86_400,
            "h" => 3_600,
            "m" => 60,
            "s" => 1,
            _ => return Err(malformed()),
        };
        let secs = n
            .checked_mul(unit_secs)
            .ok_or_else(|| RetentionError::TooLong(text.to_string()))?;
        Retention::from_secs(secs, || text.to_string())
    }
}

impl std::fmt::Display for Retention {
    /// The largest unit that divides it, so `30d` reads back as `30d`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs();
        match s {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3_600) => write!(f, "{}h", s / 3_600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Retention, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

const TOKEN_RULE: &str =
    "must be printable ASCII (spaces allowed inside), not empty, no leading or trailing space";

/// A token fits in an `Authorization: Bearer` header as it is.
fn usable_token(t: &str) -> bool {
    !t.is_empty() && t.trim() == t && t.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Config {
    /// Reads and parses a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text (the error is toml's, which names the key and the line).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " | "))
    }

    /// Applies command-line flags on top of the file.
    pub fn apply(&mut self, o: Overrides) {
        if o.data_dir.is_some() {
            self.data_dir = o.data_dir;
        }
        if o.listen.is_some() {
            self.listen = o.listen;
        }
        if o.peer_token.is_some() {
            self.peer_token = o.peer_token;
        }
        if o.admin_token.is_some() {
            self.admin_token = o.admin_token;
        }
        if o.node_id.is_some() {
            self.node_id = o.node_id;
        }
        if o.tls_cert.is_some() {
            self.tls_cert = o.tls_cert;
        }
        if o.tls_key.is_some() {
            self.tls_key = o.tls_key;
        }
        if o.tls_ca.is_some() {
            self.tls_ca = o.tls_ca;
        }
        for url in o.peers {
            if !self.peers.iter().any(|p| p.url == url) {
                self.peers.push(PeerConfig { url, token: None });
            }
        }
        if let Some(s) = o.check_interval_s {
            self.check_interval_s = s;
        }
        if let Some(s) = o.rescan_interval_s {
            self.rescan_interval_s = s;
        }
        if let Some(m) = o.mode {
            self.mode = m;
        }
        if let Some(ms) = o.sync_timeout_ms {
            self.sync_timeout_ms = ms;
        }
        if let Some(r) = o.tombstone_retention {
            // The flag wins over whichever spelling the file used.
            self.tombstone_retention = Some(r);
            self.tombstone_retention_days = None;
        }
    }

    /// Checks every key's value; `origin` names where the values came from (the file).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key: key.to_string(),
                problem,
            })
        };
        if let Some(id) = &self.node_id {
            if let Err(e) = crate::store::validate_node_id(id) {
                return bad("node_id", e.to_string());
            }
        }
        if let Some(mb) = self.cache_mb {
            if !(1..=65_536).contains(&mb) {
                return bad("cache_mb", format!("{mb} is not 1 to 65536 (MiB)"));
            }
        }
        if self.data_dir.is_none() {
            return bad(
                "data_dir",
                "is required (in the file, or --data DIR)".to_string(),
            );
        }
        match &self.listen {
            None => {
                return bad(
                    "listen",
                    "is required (in the file, or --listen ADDR)".to_string(),
                )
            }
            Some(l) if l.parse::<std::net::SocketAddr>().is_err() && !l.contains(':') => {
                return bad("listen", format!("{l:?} is not HOST:PORT"))
            }
            Some(_) => {}
        }
        for (key, token) in [
            ("peer_token", &self.peer_token),
            ("admin_token", &self.admin_token),
        ] {
            if let Some(t) = token {
                if !usable_token(t) {
                    return bad(key, TOKEN_RULE.into());
                }
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return bad(
                    "tls_key",
                    "is required with tls_cert (--tls-key FILE)".into(),
                )
            }
            (None, Some(_)) => {
                return bad(
                    "tls_cert",
                    "is required with tls_key (--tls-cert FILE)".into(),
                )
            }
            _ => {}
        }
        // A peer holds the token it is given (and this node's `peer_token`): if the admin
        // token were one of them, that peer could read and change every mailbox.
        if let Some(admin) = &self.admin_token {
            if self.peer_token.as_ref() == Some(admin) {
                return bad(
                    "admin_token",
                    "equals `peer_token`: the admin token must differ from every peer token".into(),
                );
            }
            if let Some(i) = self
                .peers
                .iter()
                .position(|p| p.token.as_ref() == Some(admin))
            {
                return bad(
                    "admin_token",
                    format!(
                        "equals `peer[{i}].token`: the admin token must differ from every peer token"
                    ),
                );
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            let key = format!("peer[{i}].url");
            if let Err(e) = crate::net::client::Client::new(
                &p.url,
                None,
                crate::net::client::ClientConfig::default(),
            ) {
                return bad(&key, e.to_string());
            }
            if self.peers[..i].iter().any(|q| q.url == p.url) {
                return bad(&key, format!("{} is listed twice", p.url));
            }
            if let Some(t) = &p.token {
                if !usable_token(t) {
                    return bad(&format!("peer[{i}].token"), TOKEN_RULE.into());
                }
            }
        }
        if self.check_interval_s == 0 {
            return bad("check_interval_s", "must be at least 1".into());
        }
        if self.rescan_interval_s == 0 {
            return bad("rescan_interval_s", "must be at least 1".into());
        }
        if !(0.0..=0.9).contains(&self.check_jitter) || self.check_jitter.is_nan() {
            return bad(
                "check_jitter",
                format!("{} is not a fraction in 0.0..=0.9", self.check_jitter),
            );
        }
        if self.backoff_max_s == 0 {
            return bad("backoff_max_s", "must be at least 1".into());
        }
        if self.sync_timeout_ms == 0 {
            return bad("sync_timeout_ms", "must be at least 1".into());
        }
        if self.journal_bound == 0 {
            return bad("journal_bound", "must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.journal_batch) {
            return bad("journal_batch", "must be in 1..=100000".into());
        }
        if self.tombstone_retention.is_some() && self.tombstone_retention_days.is_some() {
            return bad(
                "tombstone_retention_days",
                "is the older spelling of `tombstone_retention`: give one of them, not both".into(),
            );
        }
        if let Some(days) = self.tombstone_retention_days {
            if days == 0 {
                return bad("tombstone_retention_days", "must be at least 1".into());
            }
            if let Err(e) = Retention::from_days(days) {
                return bad("tombstone_retention_days", e.to_string());
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_body_bytes", l.max_body_bytes as u64),
            ("limits.max_append_bytes", l.max_append_bytes as u64),
            ("limits.max_sync_bytes", l.max_sync_bytes as u64),
            ("limits.max_items", l.max_items as u64),
            ("limits.header_timeout_ms", l.header_timeout_ms),
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.max_connections", l.max_connections as u64),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if l.max_sync_bytes < 1 << 20 {
            return bad(
                "limits.max_sync_bytes",
                "must be at least 1048576 (sessions and journal batches carry bodies)".into(),
            );
        }
        Ok(())
    }

    /// Loads the TLS material: the listener's certificate and key (if configured) and the
    /// CAs peers must be certified by (if configured). An error names the key and the file.
    pub fn tls(&self, origin: &str) -> Result<(Option<ServerTls>, Option<ClientTls>), ConfigError> {
        let bad = |key: &str, e: TlsError| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            problem: e.to_string(),
        };
        let server = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key).map_err(|e| {
                let k = match &e {
                    TlsError::Read { path, .. }
                    | TlsError::Pem { path, .. }
                    | TlsError::Refused { path, .. }
                        if path == key =>
                    {
                        "tls_key"
                    }
                    TlsError::KeyMismatch { .. } => "tls_key",
                    _ => "tls_cert",
                };
                bad(k, e)
            })?),
            _ => None,
        };
        let client = self
            .tls_ca
            .as_deref()
            .map(ClientTls::from_ca_file)
            .transpose()
            .map_err(|e| bad("tls_ca", e))?;
        Ok((server, client))
    }

    /// The token this node presents to `peer`.
    pub fn token_for<'a>(&'a self, peer: &'a PeerConfig) -> Option<&'a str> {
        peer.token.as_deref().or(self.peer_token.as_deref())
    }

    /// The token the mail and admin routes want (none by default; see `admin_token`).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval_s)
    }

    pub fn rescan_interval(&self) -> Duration {
        Duration::from_secs(self.rescan_interval_s)
    }

    pub fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_timeout_ms)
    }

    /// The tombstone retention, from whichever key gave it (validated), else 30 days.
    /// How far ahead of this node's clock a peer's stamp may be, ms.
    pub fn max_clock_skew_ms(&self) -> u64 {
        self.max_clock_skew.map_or(
            crate::model::DEFAULT_MAX_CLOCK_SKEW_MS,
            Retention::as_millis,
        )
    }

    pub fn tombstone_retention(&self) -> Retention {
        match (self.tombstone_retention, self.tombstone_retention_days) {
            (Some(r), _) => r,
            (None, Some(days)) => Retention::from_days(days).unwrap_or(Retention::DEFAULT),
            (None, None) => Retention::DEFAULT,
        }
    }

    /// How often the tombstone purge runs: min(1 h, retention / 4), at least a second.
    pub fn purge_interval(&self) -> Duration {
        (self.tombstone_retention().as_duration() / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str) -> Result<Config, String> {
        let c = Config::from_toml(text)?;
        c.validate("test.toml").map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_full_file_parses_and_defaults_fill_the_rest() {
        let c = valid(
            r#"
            node_id = "a"
            data_dir = "/tmp/a"
            listen = "127.0.0.1:8025"
            peer_token = "p"
            mode = "sync"
            sync_timeout_ms = 500
            [[peer]]
            url = "http://127.0.0.1:8026"
            [[peer]]
            url = "http://127.0.0.1:8027"
            token = "other"
            [limits]
            max_items = 50
            "#,
        )
        .expect("valid");
        assert_eq!(c.mode, Mode::Sync);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.token_for(&c.peers[0]), Some("p"));
        assert_eq!(c.token_for(&c.peers[1]), Some("other"));
        assert_eq!(
            c.admin_token(),
            None,
            "the admin token never defaults to the peer token"
        );
        assert_eq!(c.check_interval_s, 60);
        assert_eq!(c.limits.max_items, 50);
        assert_eq!(c.limits.max_body_bytes, 1 << 20);
        assert_eq!(c.cache_mb, None, "the store's default cache");
        let c = valid("data_dir='/d'\nlisten='127.0.0.1:1'\ncache_mb=64").expect("valid");
        assert_eq!(c.cache_mb, Some(64));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("colour = 1\ndata_dir='/d'\nlisten='127.0.0.1:1'", "colour"),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\nmode='eventually'", "mode"),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\ncheck_interval_s=0", "check_interval_s"),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\ncheck_jitter=2.0", "check_jitter"),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\ncache_mb=0", "cache_mb"),
            ("listen='127.0.0.1:1'", "data_dir"),
            ("data_dir='/d'", "listen"),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\nnode_id='a b'", "node_id"),
            (
                "data_dir='/d'\nlisten='127.0.0.1:1'\n[[peer]]\nurl='ftp://x'",
                "peer[0].url",
            ),
            (
                "data_dir='/d'\nlisten='127.0.0.1:1'\n[[peer]]\nurl='http://x:1'\n[[peer]]\nurl='http://x:1'",
                "peer[1].url",
            ),
            (
                "data_dir='/d'\nlisten='127.0.0.1:1'\n[[peer]]\nurl='http://x:1'\nsecret=1",
                "secret",
            ),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\njournal_bound=0", "journal_bound"),
            (
                "data_dir='/d'\nlisten='127.0.0.1:1'\n[limits]\nmax_items=0",
                "limits.max_items",
            ),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\npeer_token=''", "peer_token"),
            ("data_dir='/d'\nlisten='127.0.0.1:1'\nsync_timeout_ms='x'", "sync_timeout_ms"),
        ];
        for (text, key) in cases {
            let e = valid(text).expect_err(text);
            assert!(e.contains(key), "{text:?}: {e:?} does not name {key}");
        }
    }

    #[test]
    fn an_admin_token_equal_to_a_peer_token_is_refused_naming_both_keys() {
        let base = "data_dir='/d'\nlisten='127.0.0.1:1'\n";
        let e = valid(&format!("{base}peer_token='same'\nadmin_token='same'"))
            .expect_err("admin = peer token");
        assert!(
            e.contains("`admin_token`") && e.contains("`peer_token`"),
            "{e}"
        );
        assert!(!e.contains("same"), "the message shows the token: {e}");
        let e = valid(&format!(
            "{base}peer_token='p'\nadmin_token='x'\n[[peer]]\nurl='http://h:1'\n[[peer]]\nurl='http://h:2'\ntoken='x'"
        ))
        .expect_err("admin = a peer's token");
        assert!(
            e.contains("`admin_token`") && e.contains("`peer[1].token`"),
            "{e}"
        );
        // Flags on top of a file are checked the same way.
        let mut c = Config::from_toml(&format!("{base}admin_token='t'")).expect("parse");
        c.apply(Overrides {
            peer_token: Some("t".into()),
            ..Overrides::default()
        });
        assert!(c.validate("flags").is_err());
        let c = valid(&format!("{base}peer_token='p'\nadmin_token='a'")).expect("distinct");
        assert_eq!(c.admin_token(), Some("a"));
    }

    #[test]
    fn retention_is_a_duration_and_the_days_key_still_works() {
        let base = "data_dir='/d'\nlisten='127.0.0.1:1'\n";
        let c = valid(base).expect("defaults");
        assert_eq!(c.tombstone_retention().to_string(), "30d");
        assert_eq!(c.purge_interval(), Duration::from_secs(3600));
        for (text, secs) in [
            ("30d", 30 * 86_400),
            ("12h", 43_200),
            ("15m", 900),
            ("90s", 90),
        ] {
            let c = valid(&format!("{base}tombstone_retention='{text}'")).expect(text);
            assert_eq!(
                c.tombstone_retention().as_duration().as_secs(),
                secs,
                "{text}"
            );
            assert_eq!(c.tombstone_retention().to_string(), text);
        }
        let c = valid(&format!("{base}tombstone_retention='8s'")).expect("8s");
        assert_eq!(c.purge_interval(), Duration::from_secs(2), "retention / 4");
        let c = valid(&format!("{base}tombstone_retention_days=7")).expect("days");
        assert_eq!(c.tombstone_retention().to_string(), "7d");
        for bad in [
            "0s",
            "30",
            "d",
            "1.5d",
            "-1d",
            "3w",
            " 3d",
            "99999999999999999999d",
        ] {
            let e = valid(&format!("{base}tombstone_retention='{bad}'")).expect_err(bad);
            assert!(e.contains("tombstone_retention"), "{bad}: {e}");
        }
        let e = valid(&format!(
            "{base}tombstone_retention='3d'\ntombstone_retention_days=3"
        ))
        .expect_err("both spellings");
        assert!(
            e.contains("`tombstone_retention_days`") && e.contains("`tombstone_retention`"),
            "{e}"
        );
        let e = valid(&format!("{base}tombstone_retention_days=0")).expect_err("0 days");
        assert!(e.contains("tombstone_retention_days"), "{e}");
        // The flag replaces either spelling of the file.
        let mut c = Config::from_toml(&format!("{base}tombstone_retention_days=3")).expect("p");
        c.apply(Overrides {
            tombstone_retention: Some("5s".parse().expect("5s")),
            ..Overrides::default()
        });
        c.validate("flags").expect("valid");
        assert_eq!(c.tombstone_retention().to_string(), "5s");
    }

    #[test]
    fn max_clock_skew_is_a_duration_of_ten_minutes_unless_set() {
        let base = "data_dir='/d'\nlisten='127.0.0.1:1'\n";
        assert_eq!(valid(base).expect("defaults").max_clock_skew_ms(), 600_000);
        let c = valid(&format!("{base}max_clock_skew='90s'")).expect("90s");
        assert_eq!(c.max_clock_skew_ms(), 90_000);
        for bad in ["0s", "10", "ten minutes"] {
            let e = valid(&format!("{base}max_clock_skew='{bad}'")).expect_err(bad);
            assert!(e.contains("max_clock_skew"), "{bad}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = Config::from_toml("data_dir='/d'\nlisten='127.0.0.1:1'\ncheck_interval_s=5")
            .expect("parse");
        c.apply(Overrides {
            listen: Some("127.0.0.1:2".into()),
            peers: vec!["http://127.0.0.1:3".into()],
            check_interval_s: Some(7),
            mode: Some(Mode::Sync),
            admin_token: Some("adm".into()),
            ..Overrides::default()
        });
        c.validate("flags").expect("valid");
        assert_eq!(c.listen.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(c.check_interval_s, 7);
        assert_eq!(c.mode, Mode::Sync);
        assert_eq!(c.peers[0].url, "http://127.0.0.1:3");
        assert_eq!(c.admin_token(), Some("adm"));
    }
}
