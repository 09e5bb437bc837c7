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
const RUNS: usize = 5;

/// What kvscope does on this path, written for bpftrace: an event with the
/// thread, the argument and the kernel stack for each hooked call (kvscope
/// takes stacks on path hooks by default), the ioctl enter/exit tracepoints,
/// and the watched-lock test on every mutex_lock/unlock (a map lookup; it
/// never matches here, where kvscope's does for kv->lock and group_lock, so
/// bpftrace does less lock work than kvscope on this loop).
const BPFTRACE_EQUIVALENT: &str = "BEGIN { @w[(uint64)0] = 1; } \
kprobe:kvm_vfio_set_attr, kprobe:vfio_file_set_kvm, kprobe:kvm_put_kvm, kprobe:kvm_get_kvm { printf(\"%d %s %lx %s\\n\", tid, probe, arg0, kstack); } \
kretprobe:kvm_vfio_set_attr { printf(\"%d ret %d\\n\", tid, retval); } \
tracepoint:syscalls:sys_enter_ioctl { printf(\"%d ioctl %d %lx\\n\", tid, args->fd, args->cmd); } \
tracepoint:syscalls:sys_exit_ioctl { printf(\"%d ioctl ret %d\\n\", tid, args->ret); } \
kfunc:mutex_lock /@w[(uint64)args->lock]/ { printf(\"%d lock\\n\", tid); } \
kfunc:mutex_unlock /@w[(uint64)args->lock]/ { printf(\"%d unlock\\n\", tid); }";

const EMPTY_FENTRY: &str = "kfunc:mutex_lock {} kfunc:mutex_unlock {}";

fn script(iterations: u64) -> String {
    format!(
        r#"run() {{ for r in $(seq {RUNS}); do kvscope-lab-driver bench {iterations} | grep '^BENCH' | sed "s/^/$1 /"; done; }}
attached() {{ i=0; until grep -q "$2" "$1" || [ $i -ge 240 ]; do sleep 0.5; i=$((i+1)); done; grep -q "$2" "$1" || echo "NOT ATTACHED: $1"; }}
run none0
kvscope record -o /tmp/b.kvs 2>/tmp/k.err & P=$!; attached /tmp/k.err "kvscope: ready:"
run kvscope; kill -INT $P; wait $P
run none1
kvscope record --locks lean -o /tmp/l.kvs 2>/tmp/l.err & P=$!; attached /tmp/l.err "kvscope: ready:"
run kvscope-lean; kill -INT $P; wait $P
run none2
bpftrace -e '{eq}' >/tmp/bt.out 2>&1 & P=$!; attached /tmp/bt.out Attaching
run bpftrace; kill -INT $P; wait $P
run none3
bpftrace -e '{empty}' >/tmp/be.out 2>&1 & P=$!; attached /tmp/be.out Attaching
run empty-fentry; kill -INT $P; wait $P
run none4
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
    setup::ensure_apt(&[("bpftrace", "bpftrace")])?;
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
        ],
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
    let loops = ["attr-add-del", "pipe-mutex"];
    // Each probed block sits between two unprobed ones; its baseline is their
    // runs together, so that drift across the guest's life (TCG) cancels.
    let configs = [
        ("kvscope", "none0", "none1"),
        ("kvscope-lean", "none1", "none2"),
        ("bpftrace", "none2", "none3"),
        ("empty-fentry", "none3", "none4"),
    ];
    let med_of = |got: &BTreeMap<(String, String), Vec<f64>>, keys: &[&str], l: &str| {
        let mut v: Vec<f64> = keys
            .iter()
            .filter_map(|k| got.get(&(k.to_string(), l.to_owned())))
            .flatten()
            .copied()
            .collect();
        (!v.is_empty()).then(|| median(&mut v))
    };
    println!(
        "guest {} under TCG, {iterations} attr iterations and {} pipe iterations per run, median of {RUNS} runs; baseline: the {} unprobed runs just before and after each block",
        un.release,
        iterations * 10,
        RUNS * 2
    );
    println!(
        "{:<14} {:>12} {:>10} {:>7} {:>12} {:>10} {:>7}",
        "config", "attr ns", "baseline", "ratio", "pipe ns", "baseline", "ratio"
    );
    // (config, loop) -> (median, baseline)
    let mut m: BTreeMap<(&str, &str), (f64, f64)> = BTreeMap::new();
    for (c, before, after) in configs {
        let mut cells = Vec::new();
        for l in loops {
            match (med_of(&got, &[c], l), med_of(&got, &[before, after], l)) {
                (Some(v), Some(b)) => {
                    m.insert((c, l), (v, b));
                    cells.push(format!("{v:>12.0} {b:>10.0} {:>7.2}", v / b));
                }
                _ => cells.push(format!("{:>12} {:>10} {:>7}", "-", "-", "-")),
            }
        }
        println!("{c:<14} {} {}", cells[0], cells[1]);
    }
    let blocks: Vec<String> = ["none0", "none1", "none2", "none3", "none4"]
        .iter()
        .filter_map(|n| med_of(&got, &[n], "pipe-mutex").map(|v| format!("{v:.0}")))
        .collect();
    println!(
        "unprobed pipe-loop medians through the guest's life (drift): {}",
        blocks.join(", ")
    );
    let added = |c: &str, l: &str| m.get(&(c, l)).map(|(v, b)| v - b);
    if let (Some(k), Some(b)) = (
        added("kvscope", "attr-add-del"),
        added("bpftrace", "attr-add-del"),
    ) {
        println!(
            "hooked path, added cost per iteration: kvscope {k:.0} ns, bpftrace {b:.0} ns (kvscope/bpftrace {:.2})",
            k / b
        );
    }
    if let (Some(k), Some(e)) = (
        added("kvscope", "pipe-mutex"),
        added("empty-fentry", "pipe-mutex"),
    ) {
        println!(
            "unrelated mutex loop, added cost per iteration: kvscope's watched-lock filter {k:.0} ns, an empty fentry {e:.0} ns (filter/empty {:.2})",
            k / e
        );
    }
    if let (Some(d), Some(l)) = (
        added("kvscope", "pipe-mutex"),
        added("kvscope-lean", "pipe-mutex"),
    ) {
        println!(
            "unrelated mutex loop, added cost per iteration: deep {d:.0} ns, lean {l:.0} ns (no program on the mutex API)"
        );
    }
    Ok(())
}
