//! `cargo xtask bench --lab`: probe overhead measured in one guest, side by
//! side: the driver's loops (lab-driver bench.rs) with no probe, with kvscope
//! recording (`--locks deep`, then `--locks lean`), with an equivalent bpftrace program, and (for the unrelated
//! mutex loop) with an empty fentry on mutex_lock/unlock. TCG makes absolute
//! times meaningless: the figures that count are the ratios to "none".
use std::{collections::BTreeMap, time::Duration};

use anyhow::bail;

use super::{
    debian, initramfs,
    kernels::{self, KERNELS},
    qemu,
};
use crate::{cmd, setup};

/// Runs per configuration; the median is reported.
pub const RUNS: usize = 5;

/// What kvscope does on this path, written for bpftrace: an event with the
/// thread, the argument and the kernel stack for each hooked call (kvscope
/// takes stacks on path hooks by default), the ioctl enter/exit tracepoints,
/// and the watched-lock test on every mutex_lock/unlock (a map lookup; it
/// never matches here, where kvscope's does for kv->lock and group_lock, so
/// bpftrace does less lock work than kvscope on this loop).
const BPFTRACE_EQUIVALENT: &str = "BEGIN { @w[(uint64)0] = 1; printf(\"BEGIN-RAN\\n\"); } \
kprobe:kvm_vfio_set_attr { printf(\"%d %s %lx %s\\n\", tid, probe, arg0, kstack); } \
kprobe:vfio_file_set_kvm { printf(\"%d %s %lx %s\\n\", tid, probe, arg0, kstack); } \
kprobe:kvm_put_kvm { printf(\"%d %s %lx %s\\n\", tid, probe, arg0, kstack); } \
kprobe:kvm_get_kvm { printf(\"%d %s %lx %s\\n\", tid, probe, arg0, kstack); } \
kretprobe:kvm_vfio_set_attr { printf(\"%d ret %d\\n\", tid, retval); } \
tracepoint:syscalls:sys_enter_ioctl { printf(\"%d ioctl %d %lx\\n\", tid, args->fd, args->cmd); } \
tracepoint:syscalls:sys_exit_ioctl { printf(\"%d ioctl ret %d\\n\", tid, args->ret); } \
kfunc:mutex_lock /@w[(uint64)args->lock]/ { printf(\"%d lock\\n\", tid); } \
kfunc:mutex_unlock /@w[(uint64)args->lock]/ { printf(\"%d unlock\\n\", tid); }";

const EMPTY_FENTRY: &str =
    "BEGIN { printf(\"BEGIN-RAN\\n\"); } kfunc:mutex_lock {} kfunc:mutex_unlock {}";

fn script(iterations: u64) -> String {
    format!(
        r#"run() {{ for r in $(seq {RUNS}); do kvscope-lab-driver bench {iterations} | grep '^BENCH' | sed "s/^/$1 /"; done; }}
attached() {{ i=0; until grep -q "$2" "$1" || [ $i -ge 240 ]; do sleep 0.5; i=$((i+1)); done; grep -q "$2" "$1" || echo "NOT ATTACHED: $1"; }}
# The kernel counts every BPF program's runs and run time from here on.
echo 1 > /proc/sys/kernel/bpf_stats_enabled || echo "NOT ATTACHED: no kernel.bpf_stats_enabled"
progstats() {{ bpftool prog show | grep run_cnt | sed "s/^/PROG $1 /"; }}
run none0
kvscope record --locks deep -o /tmp/b.kvs 2>/tmp/k.err & P=$!; attached /tmp/k.err "kvscope: ready:"
run deep; progstats deep; kill -INT $P; wait $P
run none1
kvscope record --locks lean -o /tmp/l.kvs 2>/tmp/l.err & P=$!; attached /tmp/l.err "kvscope: ready:"
run lean; progstats lean; kill -INT $P; wait $P
kvscope record --locks lean --no-stacks -o /tmp/n.kvs 2>/tmp/n.err & P=$!; attached /tmp/n.err "kvscope: ready:"
run lean-nostack; progstats lean-nostack; kill -INT $P; wait $P
kvscope record --locks lean --every-stack -o /tmp/e.kvs 2>/tmp/e.err & P=$!; attached /tmp/e.err "kvscope: ready:"
run lean-every-stack; progstats lean-every-stack; kill -INT $P; wait $P
run none2
bpftrace -e '{eq}' >/tmp/bt.out 2>&1 & P=$!; attached /tmp/bt.out BEGIN-RAN
run bpftrace; progstats bpftrace; kill -INT $P; wait $P
run none3
bpftrace -e '{empty}' >/tmp/be.out 2>&1 & P=$!; attached /tmp/be.out BEGIN-RAN
run empty-fentry; kill -INT $P; wait $P
run none4
grep -q ' ioctl ' /tmp/bt.out || echo "NOT ATTACHED: bpftrace printed no probe output"
grep -m3 -i error /tmp/bt.out /tmp/be.out || true
"#,
        eq = BPFTRACE_EQUIVALENT,
        empty = EMPTY_FENTRY,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(kernel: &str, iterations: u64) -> anyhow::Result<()> {
    debian::ensure_host_tools()?;
    setup::ensure_apt(&[("bpftrace", "bpftrace"), ("bpftool", "bpftool")])?;
    let k = KERNELS
        .iter()
        .find(|k| k.name == kernel)
        .ok_or_else(|| anyhow::anyhow!("unknown lab kernel {kernel:?}"))?;
    let un = kernels::unpacked(k)?;
    let initrd = setup::cache_dir()
        .join("lab")
        .join(format!("initrd-bench-{}.gz", un.release));
    initramfs::initramfs(
        &un,
        &[
            cmd::kvscope_bin(),
            cmd::lab_driver_bin(),
            "/usr/bin/bpftrace".into(),
            "/usr/sbin/bpftool".into(),
        ],
        &[],
        &[],
        &script(iterations),
        &initrd,
    )?;
    eprintln!(
        "lab bench: booting {} ({}); {RUNS} runs per configuration",
        k.name, un.release
    );
    let boot = qemu::boot(&un, &initrd, Duration::from_secs(580))?;
    // (config, loop) -> ns per iteration, one per run.
    let mut got: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for l in &boot.output {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [cfg, "BENCH", name, ns] = f[..]
            && let Ok(ns) = ns.parse::<f64>()
        {
            got.entry((cfg.to_owned(), name.to_owned()))
                .or_default()
                .push(ns);
        }
    }
    let problems: Vec<&String> = boot
        .output
        .iter()
        .filter(|l| l.starts_with("NOT ATTACHED") || l.contains("rror"))
        .collect();
    if got.is_empty() || !problems.is_empty() {
        bail!(
            "the bench did not run cleanly: {problems:?}\n--- guest console ---\n{}",
            boot.console
        );
    }
    let header = format!(
        "guest {} under TCG; per run {iterations} attr and KVM_RUN iterations, {} ioctl and pipe iterations",
        un.release,
        iterations * 10
    );
    report(&got, &header, &CONFIGS);
    super::progstats::report(
        &boot.output,
        &[
            "lean",
            "lean-nostack",
            "lean-every-stack",
            "deep",
            "bpftrace",
        ],
    );
    Ok(())
}

/// The loops, as the issue names them.
const LOOPS: [(&str, &str); 5] = [
    ("pipe-mutex", "(a) unrelated pipe/mutex"),
    ("kvm-run", "(b) KVM_RUN exits"),
    ("attr-add-del", "(c) hooked KVM_SET_DEVICE_ATTR"),
    ("ioctl", "(d) unrelated ioctl"),
    ("epoll-create", "(e) unrelated epoll_create1"),
];

/// Each probed block sits between two unprobed ones; its baseline is their
/// runs together, so that drift across the guest's life (TCG) cancels.
const CONFIGS: [(&str, &str, &str); 6] = [
    ("deep", "none0", "none1"),
    ("lean", "none1", "none2"),
    ("lean-nostack", "none1", "none2"),
    ("lean-every-stack", "none1", "none2"),
    ("bpftrace", "none2", "none3"),
    ("empty-fentry", "none3", "none4"),
];

/// (config, loop) -> ns per iteration, one per run.
pub type Runs = BTreeMap<(String, String), Vec<f64>>;

fn runs_of(got: &Runs, keys: &[&str], l: &str) -> Vec<f64> {
    keys.iter()
        .filter_map(|k| got.get(&(k.to_string(), l.to_owned())))
        .flatten()
        .copied()
        .collect()
}

/// Half the range of the unprobed runs, relative to their median: the noise
/// a ratio is read against.
fn noise(v: &[f64]) -> f64 {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    let mut v = v.to_vec();
    (hi - lo) / 2.0 / median(&mut v)
}

/// The table: per loop and probed config, its median against the unprobed
/// runs around it (`configs`: config, the unprobed block before, after).
pub fn report(got: &Runs, header: &str, configs: &[(&str, &str, &str)]) {
    println!(
        "{header}; median of {RUNS} runs; baseline: the {} unprobed runs just before and after each block; noise: half their range over their median",
        RUNS * 2
    );
    println!(
        "{:<32} {:<16} {:>10} {:>10} {:>7} {:>7} {:>10}",
        "loop", "config", "ns/iter", "baseline", "ratio", "noise", "added ns"
    );
    let mut added: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (l, label) in LOOPS {
        for &(c, before, after) in configs {
            let mut v = runs_of(got, &[c], l);
            let mut b = runs_of(got, &[before, after], l);
            if v.is_empty() || b.is_empty() {
                continue;
            }
            let n = noise(&b);
            let (v, b) = (median(&mut v), median(&mut b));
            added.insert((c, l), v - b);
            println!(
                "{label:<32} {c:<16} {v:>10.0} {b:>10.0} {:>7.3} {:>6.1}% {:>10.0}",
                v / b,
                n * 100.0,
                v - b
            );
        }
    }
    let mut blocks: Vec<&str> = configs.iter().flat_map(|(_, b, a)| [*b, *a]).collect();
    blocks.dedup();
    let drift: Vec<String> = blocks
        .iter()
        .filter_map(|n| {
            let mut v = runs_of(got, &[n], "pipe-mutex");
            (!v.is_empty()).then(|| format!("{:.0}", median(&mut v)))
        })
        .collect();
    println!(
        "unprobed pipe-loop medians through the run (drift): {}",
        drift.join(", ")
    );
    if let (Some(k), Some(d), Some(b)) = (
        added.get(&("lean", "attr-add-del")),
        added.get(&("deep", "attr-add-del")),
        added.get(&("bpftrace", "attr-add-del")),
    ) {
        println!(
            "hooked path (c), added cost per iteration: lean {k:.0} ns, deep {d:.0} ns, bpftrace {b:.0} ns (lean/bpftrace {:.2})",
            k / b
        );
    }
}
