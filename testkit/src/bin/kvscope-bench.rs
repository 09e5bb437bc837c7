//! `cargo xtask bench`: replay analysis throughput (decode + engine) on a large
//! generated stream, and peak memory at two stream lengths (memory must stay
//! flat as the number of dead objects grows).
use std::time::Instant;

use kvscope::{
    engine::{Config, Engine},
    event::Event,
};
use kvscope_testkit::workload::Workload;

fn max_rss_kib() -> i64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

/// RSS now (not the peak), from /proc/self/statm.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// Records generated ahead of the timed part, per batch: the clock measures
/// decode + engine only, as a replay reading a recording does (the
/// generator's own cost is not replay's).
const BATCH: usize = 1 << 16;

/// `KVSCOPE_BENCH_TIME_GENERATION=1`: the clock also runs while the generator
/// works, as this benchmark measured before 2026-12-02, so that `cargo xtask
/// bench --against` an older revision compares like with like.
fn time_generation() -> bool {
    std::env::var_os("KVSCOPE_BENCH_TIME_GENERATION").is_some_and(|v| v == "1")
}

fn run(n: u64) -> (f64, u64, u64, String, u64) {
    let with_generation = time_generation();
    let mut engine = Engine::new(Config::default());
    let mut w = Workload::new(n, 0x5eed);
    let mut batch: Vec<trace_common::Event> = Vec::with_capacity(BATCH);
    let mut busy = std::time::Duration::ZERO;
    let mut events = 0u64;
    loop {
        let generating = Instant::now();
        batch.clear();
        batch.extend((&mut w).take(BATCH));
        if batch.is_empty() {
            break;
        }
        if with_generation {
            busy += generating.elapsed();
        }
        let start = Instant::now();
        for rec in &batch {
            let ev = Event::decode(rec).expect("generated records decode");
            engine.ingest(&ev);
        }
        busy += start.elapsed();
        events += batch.len() as u64;
    }
    let secs = busy.as_secs_f64();
    let mut by_kind = std::collections::BTreeMap::new();
    for f in engine.findings() {
        *by_kind.entry(f.kind.id()).or_insert(0u64) += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let findings = format!(
        "{} kept ({}), {} dropped by the cap",
        engine.findings().len(),
        kinds.join(" "),
        engine.findings_dropped()
    );
    (
        events as f64 / secs,
        events,
        w.vms_created,
        findings,
        rss_kib(),
    )
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let what = if time_generation() {
        "decode + engine + the generator"
    } else {
        "decode + engine"
    };
    println!("kvscope replay benchmark: {what}, one core");
    let mut rows = Vec::new();
    for size in [n / 2, n] {
        // Three runs per size; the median is quoted.
        let mut rates = Vec::new();
        let mut last = (0.0, 0, 0, String::new(), 0);
        for _ in 0..3 {
            last = run(size);
            rates.push(last.0);
        }
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (_, events, vms, findings, rss) = last.clone();
        println!(
            "{events:>11} events {vms:>7} VMs  median {:>6.2} M events/s (min {:.2}, max {:.2})  RSS after {:>7} KiB  findings {findings}",
            rates[1] / 1e6,
            rates[0] / 1e6,
            rates[2] / 1e6,
            rss
        );
        rows.push((events, rss));
    }
    let (small, big) = (rows[0].1 as f64, rows[1].1 as f64);
    println!(
        "memory: {:.2}x RSS for 2x the events and dead objects (flat = about 1.0); peak RSS {} KiB",
        big / small,
        max_rss_kib()
    );
}
