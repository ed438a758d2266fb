//! Deterministic simulation of a cluster (docs/RELIABILITY.md §1): 3–5 peers in one process,
//! each a real store on its own redb file, joined by a seeded in-memory network that drops,
//! delays, duplicates and reorders session rounds, journal batches and acknowledgements,
//! partitions and heals, and crashes peers (drop the store, reopen the file). Writers append,
//! flag, expunge, create, rename and delete on every peer, on both sides of partitions. After
//! healing, the cluster settles and must hold: equal roots, `verify` clean, every acknowledged
//! message not removed by a writer live exactly once, no expunged message back.
//!
//! `SIM_SEED=N cargo test --test simulate` replays one seed (add `SIM_TRACE=1` for its event
//! log); `scripts/simulate --seeds N` runs many in release.

mod random_ops;
#[path = "simulate/oracle.rs"]
mod oracle;
#[path = "simulate/world.rs"]
mod world;

use std::collections::{BTreeMap, BTreeSet};
use world::{Activity, Faults, Outcome, World};

/// Steps of the active phase per seed (mail operations are about 40% of them).
const STEPS: usize = 500;
/// Seeds `cargo test` runs.
const QUICK_SEEDS: u64 = 24;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs one seed; a panic inside is reported as a violation of that seed.
fn simulate(seed: u64, steps: usize) -> Outcome {
    let run = std::panic::catch_unwind(|| match World::new(seed, steps) {
        Ok(world) => world.run(),
        Err(e) => panic!("cannot set up the simulation: {e}"),
    });
    run.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome {
            seed,
            settings: world::Settings::draw(
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
                steps,
            ),
            faults: Faults::default(),
            activity: Activity::default(),
            violations: vec![format!("panic: {what}")],
            session_errors: Vec::new(),
            trace: Vec::new(),
        }
    })
}

fn report_failure(out: &Outcome) -> String {
    if std::env::var_os("SIM_TRACE").is_some() {
        for line in &out.trace {
            eprintln!("{line}");
        }
    }
    format!(
        "seed {} failed ({:?}):\n  {}\nreplay: SIM_SEED={} SIM_TRACE=1 cargo test --test simulate -- seeds",
        out.seed,
        out.settings,
        out.violations.join("\n  "),
        out.seed
    )
}

/// What a sweep found: totals, and per kind of violation (the text before the first ':')
/// the seeds that showed it.
#[derive(Default)]
struct Sweep {
    faults: Faults,
    activity: Activity,
    failures: Vec<String>,
    kinds: BTreeMap<String, BTreeSet<u64>>,
    session_errors: BTreeMap<String, u64>,
}

/// The kind of a violation or error: its text up to the first ':' (numbers dropped).
fn kind(text: &str) -> String {
    let head = text.split(':').next().unwrap_or(text);
    head.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// Runs `count` seeds from `start`.
fn sweep_seeds(start: u64, count: u64, steps: usize) -> Sweep {
    let mut sweep = Sweep::default();
    let Sweep {
        faults,
        activity,
        failures,
        kinds,
        session_errors,
    } = &mut sweep;
    for seed in start..start + count {
        let out = simulate(seed, steps);
        if std::env::var_os("SIM_TRACE").is_some() && out.violations.is_empty() {
            for line in &out.trace {
                eprintln!("{line}");
            }
            eprintln!("{:?}\n{:?}", out.faults, out.activity);
        }
        faults.add(&out.faults);
        activity.add(&out.activity);
        for v in &out.violations {
            kinds.entry(kind(v)).or_default().insert(seed);
        }
        for e in &out.session_errors {
            *session_errors.entry(kind(e)).or_default() += 1;
        }
        if !out.violations.is_empty() {
            failures.push(report_failure(&out));
        }
    }
    sweep
}

#[test]
fn seeds_converge_without_losing_mail() {
    let steps = env_u64("SIM_STEPS").map_or(STEPS, |s| s as usize);
    let (start, count) = match env_u64("SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (1, QUICK_SEEDS),
    };
    let Sweep {
        faults,
        activity,
        failures,
        ..
    } = sweep_seeds(start, count, steps);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    if count > 1 {
        // The runs did what they are for: faults were injected and the writers wrote.
        assert!(faults.drops > 0 && faults.duplicates > 0 && faults.reorders > 0, "{faults:?}");
        assert!(faults.partitions > 0 && faults.crashes > 0, "{faults:?}");
        assert!(activity.appends > 0 && activity.expunges > 0, "{activity:?}");
        assert!(activity.sessions_equal > 0 && activity.entries_applied > 0, "{activity:?}");
    }
}

#[test]
fn one_seed_replays_exactly() {
    let a = simulate(7, 120);
    let b = simulate(7, 120);
    assert_eq!(a.trace, b.trace);
    assert!(a.trace.len() > 50, "{}", a.trace.len());
}

/// `scripts/simulate`: SIM_SEEDS seeds from SIM_START (release build), with totals.
#[test]
#[ignore]
fn sweep() {
    let start = env_u64("SIM_START").unwrap_or(1);
    let count = env_u64("SIM_SEEDS").unwrap_or(1_000);
    let steps = env_u64("SIM_STEPS").map_or(STEPS, |s| s as usize);
    let verbose = std::env::var_os("SIM_VERBOSE").is_some();
    let s = sweep_seeds(start, count, steps);
    if verbose {
        for f in &s.failures {
            println!("{f}\n");
        }
    }
    println!("seeds run: {count} (from {start}, {steps} steps each)");
    println!("faults injected: {:#?}", s.faults);
    println!("activity: {:#?}", s.activity);
    println!("session errors (not violations), by kind: {:#?}", s.session_errors);
    println!("seeds with violations: {}", s.failures.len());
    for (kind, seeds) in &s.kinds {
        let some: Vec<&u64> = seeds.iter().take(10).collect();
        println!("  {kind}: {} seed(s), e.g. {some:?}", seeds.len());
    }
    assert!(s.failures.is_empty(), "{} seed(s) failed", s.failures.len());
}
