//! `cargo xtask bench --lab`: probe overhead measured in one guest, side by
//! side: the driver's loops (lab-driver bench.rs) with no probe, with kvscope
//! recording, with an equivalent bpftrace program, and (for the unrelated
//! mutex loop) with an empty fentry on mutex_lock/unlock. TCG makes absolute
//! times meaningless: the figures that count are the ratios to "none".
use std::{collections::BTreeMap, time::Duration};

use anyhow::bail;

use crate::{cmd, lab, setup};

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
run none
kvscope record -o /tmp/b.kvs 2>/tmp/k.err & P=$!; attached /tmp/k.err Ctrl-C
run kvscope; kill -INT $P; wait $P
bpftrace -e '{eq}' >/tmp/bt.out 2>&1 & P=$!; attached /tmp/bt.out Attaching
run bpftrace; kill -INT $P; wait $P
bpftrace -e '{empty}' >/tmp/be.out 2>&1 & P=$!; attached /tmp/be.out Attaching
run empty-fentry; kill -INT $P; wait $P
run none
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
    lab::ensure_host_tools()?;
    setup::ensure_apt(&[("bpftrace", "bpftrace")])?;
    let k = lab::KERNELS
        .iter()
        .find(|k| k.name == kernel)
        .ok_or_else(|| anyhow::anyhow!("unknown lab kernel {kernel:?}"))?;
    let un = lab::kernel(k)?;
    let initrd = setup::cache_dir()
        .join("lab")
        .join(format!("initrd-bench-{}.gz", un.release));
    lab::initramfs(
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
    let boot = lab::boot(&un, &initrd, Duration::from_secs(580))?;
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
    let configs = ["none", "kvscope", "bpftrace", "empty-fentry"];
    println!(
        "guest {} under TCG, {iterations} attr iterations and {} pipe iterations per run, median of {RUNS} (none: of {}):",
        un.release,
        iterations * 10,
        RUNS * 2
    );
    println!(
        "{:<14} {:>14} {:>12} {:>14} {:>12}",
        "config", "attr ns/iter", "x none", "pipe ns/iter", "x none"
    );
    let mut med: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for c in configs {
        for l in loops {
            if let Some(v) = got.get_mut(&(c.to_owned(), l.to_owned())) {
                med.insert((c, l), median(v));
            }
        }
    }
    for c in configs {
        let cell = |l: &str| -> (String, String) {
            match (med.get(&(c, l)), med.get(&("none", l))) {
                (Some(v), Some(base)) => (format!("{v:.0}"), format!("{:.2}", v / base)),
                _ => ("-".into(), "-".into()),
            }
        };
        let (a, ar) = cell("attr-add-del");
        let (p, pr) = cell("pipe-mutex");
        println!("{c:<14} {a:>14} {ar:>12} {p:>14} {pr:>12}");
    }
    if let (Some(k), Some(b), Some(n)) = (
        med.get(&("kvscope", "attr-add-del")),
        med.get(&("bpftrace", "attr-add-del")),
        med.get(&("none", "attr-add-del")),
    ) {
        println!(
            "hooked path, added cost per iteration: kvscope {:.0} ns, bpftrace {:.0} ns (kvscope/bpftrace {:.2})",
            k - n,
            b - n,
            (k - n) / (b - n)
        );
    }
    if let (Some(k), Some(e), Some(n)) = (
        med.get(&("kvscope", "pipe-mutex")),
        med.get(&("empty-fentry", "pipe-mutex")),
        med.get(&("none", "pipe-mutex")),
    ) {
        println!(
            "unrelated mutex loop, added cost per iteration: kvscope's watched-lock filter {:.0} ns, an empty fentry {:.0} ns (filter/empty {:.2})",
            k - n,
            e - n,
            (k - n) / (e - n)
        );
    }
    Ok(())
}
