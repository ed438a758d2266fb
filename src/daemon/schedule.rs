//! When the background checker runs: every interval ± jitter while a peer answers, with an
//! exponential backoff (1 s, 2 s, 4 s … up to a cap) while it does not, and at once when
//! something asks for it (start-up, a peer seen coming back, a journal that overflowed).

use crate::status::Trigger;
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The timing rules of one peer's checker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub interval: Duration,
    /// Each wait is `interval × (1 ± up to jitter)`.
    pub jitter: f64,
    pub backoff_max: Duration,
}

impl Schedule {
    /// The wait before the next check, given how many attempts in a row failed. `unit` is a
    /// random number in [-1, 1] (the jitter's direction and size).
    pub fn wait(&self, failures: u32, unit: f64) -> Duration {
        if failures == 0 {
            let factor = 1.0 + self.jitter * unit.clamp(-1.0, 1.0);
            // Not `mul_f64`, which panics past `Duration::MAX` (check_interval_s near u64::MAX
            // passes validation); such a wait is forever in any case.
            let secs = self.interval.as_secs_f64() * factor.max(0.05);
            return Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        }
        // 1 s, 2 s, 4 s, … capped; jittered by a quarter of the same amount, so peers that
        // lost the same neighbour do not knock on its door in step.
        let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(20));
        let capped = base.min(self.backoff_max);
        let factor = 1.0 + 0.25 * unit.clamp(-1.0, 1.0);
        capped.mul_f64(factor).min(self.backoff_max)
    }
}

/// Runs `check` for one peer until `shutdown` turns true: at once (start-up), then after each
/// [`Schedule::wait`], or early when `wake` is notified. `check` returns whether the peer
/// answered. Returns when shut down. `next` is told when the next check is due.
pub async fn run_checks<F, Fut>(
    schedule: Schedule,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    mut next: impl FnMut(Duration),
    mut check: F,
) where
    F: FnMut(Trigger) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut failures: u32 = 0;
    let mut trigger = Trigger::Startup;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ok = check(trigger).await;
        let was_failing = failures > 0;
        failures = if ok { 0 } else { failures.saturating_add(1) };
        let unit = rand::rng().random_range(-1.0..=1.0);
        let wait = schedule.wait(failures, unit);
        next(wait);
        trigger = tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if failures > 0 { Trigger::Retry } else { Trigger::Interval }
            }
            _ = wake.notified() => {
                if was_failing || failures > 0 { Trigger::PeerBack } else { Trigger::Journal }
            }
            _ = shutdown.changed() => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn schedule() -> Schedule {
        Schedule {
            interval: Duration::from_secs(60),
            jitter: 0.2,
            backoff_max: Duration::from_secs(30),
        }
    }

    #[test]
    fn waits_stay_within_the_jitter_and_the_backoff_cap() {
        let s = schedule();
        for unit in [-1.0, -0.5, 0.0, 0.5, 1.0, 7.0] {
            let w = s.wait(0, unit);
            assert!(
                w >= Duration::from_secs(48) && w <= Duration::from_secs(72),
                "{w:?}"
            );
        }
        assert_eq!(s.wait(1, 0.0), Duration::from_secs(1));
        assert_eq!(s.wait(2, 0.0), Duration::from_secs(2));
        assert_eq!(s.wait(4, 0.0), Duration::from_secs(8));
        for failures in [6, 7, 40, u32::MAX] {
            assert_eq!(s.wait(failures, 0.0), Duration::from_secs(30));
            assert!(s.wait(failures, 1.0) <= Duration::from_secs(30));
        }
    }

    /// The loop with paused time: checks at start, then on the interval (± jitter); with the
    /// peer down, backoff doubling to the cap; a wake-up runs a check at once.
    #[tokio::test(start_paused = true)]
    async fn checks_follow_interval_backoff_and_wakeups() {
        let start = Instant::now();
        let log: Arc<Mutex<Vec<(Duration, Trigger)>>> = Arc::default();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let wake = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = {
            let (log, up, wake) = (Arc::clone(&log), Arc::clone(&up), Arc::clone(&wake));
            tokio::spawn(run_checks(
                schedule(),
                wake,
                stop_rx,
                |_| {},
                move |t| {
                    let (log, up) = (Arc::clone(&log), Arc::clone(&up));
                    async move {
                        log.lock().expect("log").push((start.elapsed(), t));
                        up.load(std::sync::atomic::Ordering::SeqCst)
                    }
                },
            ))
        };
        // Two intervals with the peer up.
        tokio::time::sleep(Duration::from_secs(150)).await;
        up.store(false, std::sync::atomic::Ordering::SeqCst);
        // Down for a while: the backoff grows to its cap.
        tokio::time::sleep(Duration::from_secs(200)).await;
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        stop_tx.send(true).expect("stop");
        task.await.expect("task");

        let log = log.lock().expect("log").clone();
        assert_eq!(log[0], (Duration::ZERO, Trigger::Startup));
        assert_eq!(log[1].1, Trigger::Interval);
        assert!(log[1].0 >= Duration::from_secs(48) && log[1].0 <= Duration::from_secs(72));
        assert_eq!(log[2].1, Trigger::Interval);
        let gaps: Vec<Duration> = log.windows(2).map(|w| w[1].0 - w[0].0).collect();
        // After the first failure the retries come faster than the interval, growing to the cap.
        let retries: Vec<Duration> = log
            .windows(2)
            .filter(|w| w[1].1 == Trigger::Retry)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        assert!(retries.len() >= 5, "{log:?}");
        assert!(
            retries.windows(2).all(|w| w[1] >= w[0].mul_f64(0.6)),
            "{retries:?}"
        );
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_secs(72)),
            "{gaps:?}"
        );
        assert!(retries.iter().all(|g| *g <= Duration::from_secs(30)));
        // The wake-up ran a check at once, seen as the peer coming back.
        let last = log.last().expect("last");
        assert_eq!(last.1, Trigger::PeerBack);
        assert_eq!(last.0, Duration::from_secs(350));
    }
}
