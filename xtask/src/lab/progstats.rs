//! The kernel's own count of what each BPF program cost (kernel.bpf_stats_enabled:
//! run count and run time per program, from `bpftool prog show`), per hooked
//! kernel function and per tracer, side by side. TCG slows every instruction
//! alike, so ns per call compare between tracers of one guest, not with
//! hardware.
use std::collections::BTreeMap;

/// One program as `bpftool prog show` prints it with stats on:
/// `ID: TYPE  name NAME  tag T  gpl run_time_ns N run_cnt M ...`.
#[derive(Debug, PartialEq)]
pub struct Prog {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

pub fn parse(line: &str) -> Option<Prog> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| f.iter().position(|w| *w == key).and_then(|i| f.get(i + 1));
    Some(Prog {
        name: after("name")?.to_string(),
        run_time_ns: after("run_time_ns")?.parse().ok()?,
        run_cnt: after("run_cnt")?.parse().ok()?,
    })
}

/// The kernel function or tracepoint a program sits on: kvscope names its
/// programs `<flavour>_<function>`, bpftrace by the probe's function.
pub fn hooked(name: &str) -> &str {
    ["fentry_", "fexit_", "kretprobe_", "kprobe_", "tp_"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

/// Per hooked function: its programs (entry and exit together), the calls
/// (the busiest program's runs) and their total run time.
#[derive(Default, Debug, PartialEq)]
pub struct Cost {
    pub programs: usize,
    pub calls: u64,
    pub run_time_ns: u64,
}

impl Cost {
    pub fn ns_per_call(&self) -> f64 {
        self.run_time_ns as f64 / self.calls.max(1) as f64
    }
}

/// The kernel keeps 15 bytes of a program's name; bpftool prints the full
/// one from BTF where the program has it (kvscope's), else the 15 (bpftrace's
/// `kvm_vfio_set_at`): such a name is the one full name it begins.
const NAME_KEPT: usize = 15;

/// `PROG <config> <bpftool line>` lines of the guest, by config and function.
pub fn costs(lines: &[String]) -> BTreeMap<(String, String), Cost> {
    let progs: Vec<(&str, Prog)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("PROG ")?.split_once(' '))
        .filter_map(|(cfg, prog)| Some((cfg, parse(prog)?)))
        .filter(|(_, p)| p.run_cnt > 0)
        .collect();
    let full: std::collections::BTreeSet<&str> =
        progs.iter().map(|(_, p)| hooked(&p.name)).collect();
    let whole = |f: &str| -> String {
        let longer: Vec<&&str> = full
            .iter()
            .filter(|n| n.len() > f.len() && n.starts_with(f))
            .collect();
        match longer[..] {
            [one] if f.len() == NAME_KEPT => one.to_string(),
            _ => f.to_owned(),
        }
    };
    let mut out: BTreeMap<(String, String), Cost> = BTreeMap::new();
    for (cfg, p) in &progs {
        let c = out
            .entry((cfg.to_string(), whole(hooked(&p.name))))
            .or_default();
        c.programs += 1;
        c.calls = c.calls.max(p.run_cnt);
        c.run_time_ns += p.run_time_ns;
    }
    out
}

/// The table: one row per hooked function any config ran, ns per call for
/// each config (`-` where it has no program there), and the lean/bpftrace
/// ratio where both ran.
pub fn report(lines: &[String], configs: &[&str]) {
    let costs = costs(lines);
    if costs.is_empty() {
        println!("bpf_stats: no program run counts in the guest's output (bpftool missing?)");
        return;
    }
    println!(
        "\nper-hook cost counted by the kernel (bpf_stats: program run time / calls of the hooked function, entry and exit programs together)"
    );
    print!("{:<32}", "hooked function");
    for c in configs {
        print!(" {:>14} {:>9}", format!("{c} ns/call"), "calls");
    }
    println!(" {:>14}", "lean/bpftrace");
    let functions: std::collections::BTreeSet<&String> = costs.keys().map(|(_, f)| f).collect();
    for f in functions {
        print!("{f:<32}");
        for c in configs {
            match costs.get(&(c.to_string(), f.clone())) {
                Some(x) => print!(" {:>14.0} {:>9}", x.ns_per_call(), x.calls),
                None => print!(" {:>14} {:>9}", "-", "-"),
            }
        }
        let get = |c: &str| costs.get(&(c.to_owned(), f.clone())).map(Cost::ns_per_call);
        match (get("lean"), get("bpftrace")) {
            (Some(l), Some(b)) => println!(" {:>14.2}", l / b),
            _ => println!(" {:>14}", "-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bpftool_lines_of_both_tracers() {
        let k = "2667: kprobe  name kretprobe_kvm_vfio_set_attr  tag 415cab08e92b29b5  gpl run_time_ns 47923 run_cnt 102";
        let b = "2676: tracepoint  name sys_enter_ioctl  tag c0b1a85fb75dc74b  gpl run_time_ns 900 run_cnt 3 recursion_misses 1";
        assert_eq!(
            parse(k),
            Some(Prog {
                name: "kretprobe_kvm_vfio_set_attr".into(),
                run_time_ns: 47923,
                run_cnt: 102
            })
        );
        assert_eq!(hooked("kretprobe_kvm_vfio_set_attr"), "kvm_vfio_set_attr");
        assert_eq!(hooked("tp_sys_enter_ioctl"), "sys_enter_ioctl");
        assert_eq!(hooked("sys_enter_ioctl"), "sys_enter_ioctl");
        // Without stats the line has no run_cnt: not a cost.
        assert_eq!(parse("12: kprobe  name x  tag t  gpl"), None);
        let lines: Vec<String> = [
            format!("PROG lean {k}"),
            "PROG lean 2668: kprobe  name kprobe_kvm_vfio_set_attr  tag t  gpl run_time_ns 2077 run_cnt 102".into(),
            "PROG deep 2669: kprobe  name kprobe_kvm_vfio_set_attr  tag t  gpl run_time_ns 2000 run_cnt 100".into(),
            format!("PROG bpftrace {b}"),
            "PROG bpftrace 2680: kprobe  name kvm_vfio_set_at  tag t  gpl run_time_ns 300 run_cnt 100".into(),
            "unrelated".into(),
        ]
        .into();
        let c = costs(&lines);
        let lean = &c[&("lean".to_owned(), "kvm_vfio_set_attr".to_owned())];
        assert_eq!(
            (lean.programs, lean.calls, lean.run_time_ns),
            (2, 102, 50000)
        );
        assert_eq!(lean.ns_per_call().round(), 490.0);
        assert_eq!(
            c[&("bpftrace".to_owned(), "sys_enter_ioctl".to_owned())].calls,
            3
        );
    }
}
