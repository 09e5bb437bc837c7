//! `cargo xtask lab`: for each kernel of the matrix, boot it with kvscope in the
//! initramfs, run the scenarios (`kvscope-lab-driver suite`) and check the one
//! JSON document the guest returns: what attached, for real, against that
//! kernel's verifier, and what kvscope saw of each scenario.
use std::time::Duration;

use anyhow::bail;
use lab_driver::protocol::{GuestResult, RESULT_PREFIX};

use super::{
    btfgen, debian, initramfs, kbuild,
    kernels::{self, KERNELS, Kernel, Source},
    qemu, readme,
    scenarios::{SCENARIOS, suite},
    selftests, verdict,
};
use crate::{cmd, setup};

fn select(names: &[String]) -> anyhow::Result<Vec<&'static Kernel>> {
    if names.is_empty() {
        return Ok(KERNELS.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            KERNELS.iter().find(|k| k.name == n).ok_or_else(|| {
                let all: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                anyhow::anyhow!(
                    "unknown lab kernel {n:?}; the matrix has {}",
                    all.join(", ")
                )
            })
        })
        .collect()
}

/// The guest's command: the suite of this kernel, as one JSON argument.
fn guest_command(kernel: &str) -> anyhow::Result<String> {
    let json = serde_json::to_string(&suite(kernel))?;
    // JSON of names and arguments: no single quote to escape.
    anyhow::ensure!(!json.contains('\''), "a scenario argument holds a quote");
    Ok(format!("kvscope-lab-driver suite '{json}'"))
}

/// Everything wrong with the guest's result on `kernel`.
fn verdict(kernel: &str, output: &[String]) -> Vec<String> {
    let Some(line) = output.iter().find_map(|l| l.strip_prefix(RESULT_PREFIX)) else {
        return vec!["no result document from the guest".to_owned()];
    };
    let result: GuestResult = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return vec![format!("the guest's result did not parse: {e}")],
    };
    let mut bad = match &result.check {
        Ok(c) => verdict::check_report(kernel, c),
        Err(e) => vec![format!("kvscope check --json: {e}")],
    };
    for s in &result.steps {
        let sc = &SCENARIOS[s.id];
        let lean = s.locks.as_deref() == Some("lean");
        let name = if lean {
            format!("{} [lean]", sc.name())
        } else {
            sc.name()
        };
        eprintln!("lab:   {name}: {}", sc.why);
        bad.extend(s.errors.iter().map(|e| format!("{name}: {e}")));
        match &s.report {
            Some(r) => bad.extend(verdict::check_scenario(&name, sc, lean, r, &s.timeline)),
            None => bad.push(format!("{name}: no replay report from the guest")),
        }
        bad.extend(verdict::check_run(&name, s));
    }
    bad.extend(verdict::check_selftests(kernel, &result.selftests));
    let ran = result.steps.len();
    let want = suite(kernel).steps.len();
    if ran != want {
        bad.push(format!("{ran} scenarios ran, {want} expected"));
    }
    bad
}

/// A row ready to boot: its kernel, its initramfs with `command` in it.
struct Prepared {
    kernel: &'static Kernel,
    un: debian::Unpacked,
    initrd: std::path::PathBuf,
}

/// Everything `k`'s guest needs, built or taken from the cache: the kernel,
/// the test module, module BTF, the initramfs with `command`. Rows are
/// prepared one after the other (downloads, apt lists and kernel builds share
/// the cache), then booted side by side.
fn prepare(k: &'static Kernel, command: &str) -> anyhow::Result<Prepared> {
    let un = kernels::unpacked(k)?;
    // The test module, where a scenario of this kernel uses it.
    let needs_testdev = SCENARIOS
        .iter()
        .any(|sc| sc.testdev.is_some() && sc.runs_on(k.name));
    let suite = match k.source {
        Source::Debian { suite, .. } => suite,
        Source::Built(_) => None,
    };
    let extra = if needs_testdev {
        vec![kbuild::testdev(&un, suite)?]
    } else {
        vec![]
    };
    // Before 5.11 no module has BTF: kvscope gets it with --btf (KVSCOPE_BTF).
    let btf = btfgen::module_btf_if_needed(&un, suite, k.module_btf)?;
    let command = match btf.is_empty() {
        true => command.to_owned(),
        false => {
            let guest: Vec<String> = btf
                .iter()
                .map(|b| format!("/btf/{}", b.file_name().unwrap().to_string_lossy()))
                .collect();
            format!("export KVSCOPE_BTF={}; {command}", guest.join(":"))
        }
    };
    let initrd = debian::lab_dir().join(format!("initrd-{}.gz", un.release));
    let mut bins = vec![cmd::kvscope_bin(), cmd::lab_driver_bin()];
    // Debian's QEMU (the lab's own) as a client, where a scenario uses it.
    if SCENARIOS
        .iter()
        .any(|sc| sc.driver.starts_with("qemu") && sc.runs_on(k.name))
    {
        bins.push(std::path::PathBuf::from(lab_driver::protocol::QEMU));
    }
    if let Some(b) = selftests::source_of(k.name) {
        bins.extend(selftests::built(b)?);
    }
    initramfs::initramfs(&un, &bins, &extra, &btf, &command, &initrd)?;
    Ok(Prepared {
        kernel: k,
        un,
        initrd,
    })
}

/// Boots a prepared row; the guest's output lines and whether it ended well.
fn boot(p: &Prepared) -> anyhow::Result<qemu::Boot> {
    let name = p.kernel.name;
    eprintln!("lab: booting {name} ({})", p.un.release);
    let boot = qemu::boot(&p.un, &p.initrd, Duration::from_secs(420))?;
    eprintln!("lab: {name} ran in {:.1} s, rc {:?}", boot.secs, boot.rc);
    if boot.rc.is_none() {
        eprintln!("lab: {name}: no exit status: {}", boot.why_no_rc());
    }
    // The guest's whole console, kept for reading the evidence later.
    let log = setup::cache_dir()
        .join("lab")
        .join(format!("last-{name}.console"));
    std::fs::write(&log, &boot.console)?;
    eprintln!("lab: guest console in {}", log.display());
    Ok(boot)
}

/// Guests booted at once: a TCG guest of the lab keeps about one host CPU
/// busy (its second vCPU mostly idles), so one per CPU.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Judges one booted row, printing its verdict as one block (rows finish side
/// by side); whether it passed.
fn judge(p: &Prepared, boot: &qemu::Boot, custom: bool) -> anyhow::Result<bool> {
    static PRINT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_row_at_a_time = PRINT.lock().unwrap_or_else(|e| e.into_inner());
    let name = p.kernel.name;
    if custom {
        for l in &boot.output {
            println!("{l}");
        }
        return Ok(true);
    }
    let bad = verdict(name, &boot.output);
    if bad.is_empty() && boot.rc == Some(0) {
        eprintln!("lab: {name}: PASS");
        readme::record_pass(name, &p.un.release)?;
        return Ok(true);
    }
    eprintln!(
        "lab: {name}: FAIL (rc {:?})\n  {}\n--- guest console ---\n{}",
        boot.rc,
        bad.join("\n  "),
        boot.console
    );
    Ok(false)
}

pub fn run(kernels: &[String], custom: Option<&str>, jobs: usize) -> anyhow::Result<()> {
    debian::ensure_host_tools()?;
    let mut rows = Vec::new();
    for k in select(kernels)? {
        let command = match custom {
            Some(c) => c.to_owned(),
            None => guest_command(k.name)?,
        };
        rows.push(prepare(k, &command)?);
    }
    // The longest rows first, so that the last to start is a short one.
    rows.sort_by_key(|p| std::cmp::Reverse(row_weight(p.kernel.name)));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, rows.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = rows.get(i) else { break };
                    let outcome = boot(p).and_then(|b| judge(p, &b, custom.is_some()));
                    let ok = outcome.unwrap_or_else(|e| {
                        eprintln!("lab: {}: FAIL: {e:#}", p.kernel.name);
                        false
                    });
                    if !ok {
                        failed.lock().unwrap().push(p.kernel.name);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    if !failed.is_empty() {
        bail!("lab failed on {}", failed.join(", "));
    }
    Ok(())
}

/// How long a row's guest runs, roughly: its scenario count (the built
/// kernels add their selftests).
fn row_weight(kernel: &str) -> usize {
    suite(kernel).steps.len() + usize::from(selftests::source_of(kernel).is_some()) * 4
}
