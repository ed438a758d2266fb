//! `merkmail serve --config FILE`: TOML text → `Config` → validated, and the values the
//! daemon derives from a validated config (limits, timeouts, the check schedule) computed as
//! `Daemon::start` and `main` compute them. A config that validates must not make the daemon
//! panic later.

use merkmail::daemon::config::Config;
use merkmail::daemon::schedule::Schedule;
use std::time::Duration;

pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    if config.validate("fuzz.toml").is_err() {
        return;
    }
    let limits = config.limits.to_limits();
    assert!(limits.max_body > 0 && limits.max_sync_body >= 1 << 20);
    let _ = (
        config.check_interval(),
        config.sync_timeout(),
        config.admin_token(),
    );
    for peer in &config.peers {
        let _ = config.token_for(peer);
    }
    let _ = Duration::from_millis(config.shutdown_timeout_ms);
    let schedule = Schedule {
        interval: config.check_interval(),
        jitter: config.check_jitter,
        backoff_max: Duration::from_secs(config.backoff_max_s),
    };
    for failures in [0, 1, 2, 10, 21, 64, u32::MAX] {
        for unit in [-1.0, -0.5, 0.0, 0.5, 1.0] {
            let wait = schedule.wait(failures, unit);
            if failures > 0 {
                assert!(wait <= schedule.backoff_max, "backoff past its cap");
            }
        }
    }
}
