//! `cargo xtask bench --live`: the live path (ring buffer -> decode ->
//! engine) on this host's kernel under a flood of real VM creations, at the
//! default ring size and with a deliberately tiny ring, with exact loss
//! accounting per hook. Needs root (BPF) and /dev/kvm.
use std::time::Duration;

use kvscope_testkit::flood;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (threads, per_thread) = (arg(1, 4), arg(2, 1000));
    println!(
        "kvscope live flood: {threads} threads x {per_thread} VMs (KVM_CREATE_VM + KVM_CREATE_DEVICE(VFIO) + 2 close)"
    );
    let mut bad = Vec::new();
    // The tiny ring's reader stalls for a second at its first event: a
    // consumer that falls behind, so that the ring must overflow.
    // The default ring behind a reader stalled 2 s: the backlog it then drains
    // back to back is the consumer's own rate.
    let runs = [
        (
            "default ring (1 MiB)",
            trace_common::DEFAULT_RING_BYTES,
            None,
        ),
        (
            "default ring (1 MiB), reader stalled 2 s",
            trace_common::DEFAULT_RING_BYTES,
            Some(Duration::from_secs(2)),
        ),
        (
            "tiny ring (4 KiB), reader stalled 1 s",
            4096,
            Some(Duration::from_secs(1)),
        ),
    ];
    for (label, ring, stall) in runs {
        let r = flood::run(threads, per_thread, ring, stall)?;
        println!(
            "{label}: tier {:?}; {} events delivered into the engine in {:.2} s ({:.0} events/s, as fast as the flood makes them: it took {:.2} s); {} lost; consumer CPU {:.1} us/event at this arrival rate (about one wakeup per event)",
            r.tier,
            r.delivered,
            r.secs,
            r.rate(),
            r.flood_secs,
            r.lost(),
            r.cpu_us_per_event(),
        );
        println!(
            "  watched locks added {}, evicted {}; {}",
            r.drops.watched_added,
            r.drops.watched_evicted,
            if r.drops.is_empty() {
                "no other kernel-side drops".to_owned()
            } else {
                r.drops.summary()
            }
        );
        if let Some((n, secs)) = r.backlog {
            println!(
                "  after the stall: a backlog of {n} events delivered back to back in {:.2} ms: {:.0} events/s",
                secs * 1e3,
                n as f64 / secs.max(1e-9)
            );
        }
        for (h, (c, d, l)) in &r.by_hook {
            let c = c.map_or("?".to_owned(), |c| c.to_string());
            println!("  {h:<28} caused {c:>7} = delivered {d:>7} + lost {l:>7}");
        }
        bad.extend(r.mismatches().into_iter().map(|m| format!("{label}: {m}")));
    }
    if !bad.is_empty() {
        anyhow::bail!("loss accounting is not exact:\n{}", bad.join("\n"));
    }
    Ok(())
}
