//! Evidence from a guest that went silent: what QEMU's vCPUs are doing, read
//! before it is killed. A guest whose console carries a heartbeat (a line at
//! least every 30 s from a shell loop) and a watchdog of its own (the stress
//! driver's) is silent only when it no longer runs its user space at all:
//! every vCPU halted and no timer to wake one (the emulator's lost timer, the
//! kind RCU reports when one vCPU still runs), or the kernel spinning with
//! interrupts off. Which one is told by QEMU's CPU time and each vCPU's
//! halted flag and instruction pointer, named by the kernel's System.map.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

/// The prefix of the `/proc/kallsyms` lines a watched guest prints at start
/// (`_text` and the idle functions): the KASLR slide, and names for the
/// addresses a halted vCPU sits at (Debian ships no real System.map).
pub const SYMBOL_LINE: &str = "[lab] kernel symbol: ";
/// The guest's command printing them.
pub fn print_symbols() -> String {
    format!(
        "grep -E ' (_text|default_idle|default_idle_call|do_idle|cpu_idle_poll|pv_native_safe_halt|native_safe_halt|acpi_idle_do_entry|mwait_idle)$' \
         /proc/kallsyms | sed 's/^/{SYMBOL_LINE}/'"
    )
}

/// One paragraph for the console: QEMU's CPU use over 2 s, then each vCPU's
/// halted flag and instruction pointer (a symbol where the map names it).
pub fn evidence(qemu_pid: u32, qmp: &Path, system_map: &Path, console: &str) -> String {
    let cpu = match cpu_percent(qemu_pid, Duration::from_secs(2)) {
        Ok(p) => format!("QEMU used {p:.0} % of a CPU over 2 s"),
        Err(e) => format!("QEMU's CPU use unknown ({e:#})"),
    };
    let vcpus = match hmp(qmp, "info registers -a") {
        Ok(regs) => {
            let map = symbols(console, system_map);
            vcpu_lines(&regs)
                .iter()
                .map(|(n, rip, halted)| {
                    let state = if *halted { "halted" } else { "running" };
                    format!("vCPU {n} {state} at {rip:#x} ({})", name(&map, *rip))
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        Err(e) => format!("the vCPUs' registers unknown ({e:#})"),
    };
    format!("{cpu}; {vcpus}")
}

/// The share of one CPU `pid` used over `over`, from /proc/PID/stat.
fn cpu_percent(pid: u32, over: Duration) -> anyhow::Result<f64> {
    let ticks = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th of the whole line.
        let rest = stat.rsplit_once(')').context("no ')' in stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f.get(11).context("short stat")?.parse::<u64>()?
            + f.get(12).context("short stat")?.parse::<u64>()?)
    };
    let a = ticks()?;
    std::thread::sleep(over);
    let b = ticks()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((b - a) as f64 / hz / over.as_secs_f64() * 100.0)
}

/// A human monitor command over QMP; its text.
fn hmp(qmp: &Path, command: &str) -> anyhow::Result<String> {
    let s = UnixStream::connect(qmp).with_context(|| format!("QMP at {}", qmp.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?; // the greeting
    let reply = |r: &mut BufReader<UnixStream>| -> anyhow::Result<serde_json::Value> {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                anyhow::bail!("QMP closed");
            }
            let v: serde_json::Value = serde_json::from_str(&l)?;
            // Asynchronous events come between; only a reply ends the wait.
            if v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
    };
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#)?;
    reply(&mut r)?;
    let cmd = serde_json::json!({
        "execute": "human-monitor-command",
        "arguments": {"command-line": command},
    });
    writeln!(w, "{cmd}")?;
    let v = reply(&mut r)?;
    v["return"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("QMP said {}", v["error"]))
}

/// Each vCPU of `info registers -a`: its number, RIP and halted flag.
fn vcpu_lines(regs: &str) -> Vec<(usize, u64, bool)> {
    let mut out: Vec<(usize, u64, bool)> = Vec::new();
    for l in regs.lines() {
        if let Some(rip) = field(l, "RIP=") {
            let rip = u64::from_str_radix(rip, 16).unwrap_or(0);
            out.push((out.len(), rip, false));
        }
        if let (Some(last), Some(h)) = (out.last_mut(), field(l, "HLT=")) {
            last.2 = h == "1";
        }
    }
    out
}

/// The value after `key` on a line of `info registers`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

/// The guest's text symbols at their running addresses, sorted: the ones
/// it printed, and the System.map's (where it is real) moved by the slide.
fn symbols(console: &str, system_map: &Path) -> Vec<(u64, String)> {
    let parse = |l: &str| -> Option<(u64, String)> {
        let mut f = l.split_whitespace();
        let addr = u64::from_str_radix(f.next()?, 16).ok()?;
        let kind = f.next()?;
        matches!(kind, "T" | "t").then(|| (addr, f.next().unwrap_or("").to_owned()))
    };
    let mut map: Vec<(u64, String)> = console
        .lines()
        .filter_map(|l| l.split(SYMBOL_LINE).nth(1))
        .filter_map(parse)
        .collect();
    let text = |m: &[(u64, String)]| m.iter().find(|(_, n)| n == "_text").map(|(a, _)| *a);
    let file: Vec<(u64, String)> = std::fs::read_to_string(system_map)
        .unwrap_or_default()
        .lines()
        .filter_map(parse)
        .collect();
    if let (Some(guest), Some(file_text)) = (text(&map), text(&file)) {
        let slide = guest.wrapping_sub(file_text);
        map.extend(file.into_iter().map(|(a, n)| (a.wrapping_add(slide), n)));
    }
    map.sort_unstable();
    map.dedup();
    map
}

/// `addr` as `symbol+0xoff` (a symbol at most 4 KiB before it) and as an
/// offset from `_text` (for the kernel's debug package).
fn name(map: &[(u64, String)], addr: u64) -> String {
    let near = map
        .partition_point(|(a, _)| *a <= addr)
        .checked_sub(1)
        .map(|i| &map[i])
        .filter(|(at, _)| addr - at < 4096)
        .map(|(at, n)| format!("{n}+{:#x}", addr - at));
    let text = map
        .iter()
        .find(|(_, n)| n == "_text")
        .filter(|(t, _)| addr >= *t)
        .map(|(t, _)| format!("_text+{:#x}", addr - t));
    match (near, text) {
        (Some(n), Some(t)) if !n.starts_with("_text+") => format!("{n}, {t}"),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => "no symbol".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_are_read_from_info_registers() {
        let regs = "CPU#0\nRAX=0000000000000000 RBX=ffffffffb1e0a940\n\
                    RIP=ffffffffb1124d2e RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
                    CPU#1\nRIP=ffffffffb1000abc RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n";
        assert_eq!(
            vcpu_lines(regs),
            vec![
                (0, 0xffffffffb1124d2e, true),
                (1, 0xffffffffb1000abc, false)
            ]
        );
    }

    #[test]
    fn addresses_are_named_from_the_printed_symbols() {
        let console = "KVSCOPE-LAB-BEGIN\n\
                       [lab] kernel symbol: ffffffffb1c00000 T _text\n\
                       [lab] kernel symbol: ffffffffb2883e20 T pv_native_safe_halt\n";
        let map = symbols(console, Path::new("/nonexistent"));
        assert_eq!(
            name(&map, 0xffffffffb2883e2f),
            "pv_native_safe_halt+0xf, _text+0xc83e2f"
        );
        // Far past every printed symbol: only the offset from _text.
        assert_eq!(name(&map, 0xffffffffb2a00000), "_text+0xe00000");
        assert_eq!(name(&map, 0xffffffff80000000), "no symbol");
    }
}
