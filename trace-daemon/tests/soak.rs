//! Soak: `kvscope daemon` on this host's kernel under continuous VM churn from
//! worker processes of several threads, SIGHUP every few seconds (the config
//! file changes between two values), and the ring buffer forced to overflow
//! part of the time (the daemon is stopped with SIGSTOP while a burst runs, so
//! the kernel side must drop and count). Asserted:
//! - exact accounting on the path hooks: events the churn caused = events the
//!   daemon analysed + events counted lost in the kernel, per hook;
//! - RSS bounded (no growth after warm-up beyond a small margin; at most
//!   25 MiB idle after it all);
//! - metrics scrape latency bounded while the daemon runs;
//! - zero live VMs at the end (every worker exited; exits are delivered);
//! - a clean SIGTERM, nothing left loaded.
//!
//! Bounded to KVSCOPE_SOAK_SECS (default 40) of churn; set it higher for a
//! longer soak. Figures are printed (`--nocapture`).
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

mod common;
use common::{Guard, SERIAL, lines_of, live_or_skip, open_kvm, our_programs_loaded, wait_ready};

/// Threads per worker process, VMs per thread in a normal round and a burst.
const THREADS: usize = 3;
const VMS_NORMAL: usize = 10;
const VMS_BURST: usize = 25;
/// 4 KiB holds about 30 events: a burst against a stopped reader overflows it.
const RING_BYTES: u32 = 4096;
/// The worker mode of this test binary (see `soak_worker`).
const WORKER_ENV: &str = "KVSCOPE_SOAK_WORKER";

/// Not a test of its own: the churn worker, run by re-executing this binary
/// with KVSCOPE_SOAK_WORKER=VMS_PER_THREAD. Without it, it returns at once.
/// Each thread creates VMs with a kvm-vfio device; even ones are closed with
/// close(2), odd ones are left for the process exit to close. It prints
/// `WORKER-DONE` and exits when its stdin closes.
#[test]
fn soak_worker() {
    let Ok(n) = std::env::var(WORKER_ENV) else {
        return;
    };
    let n: usize = n.parse().expect("VMs per thread");
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let kvm = open_kvm();
                let mut kept = Vec::new();
                for i in 0..n {
                    let fds = create_vm(&kvm);
                    if i % 2 == 1 {
                        kept.push(fds);
                    }
                }
                kept
            })
        })
        .collect();
    let kept: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    println!("WORKER-DONE");
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    // The exit closes the kept fds (no close(2)); libtest prints nothing more.
    std::mem::forget(kept);
    std::process::exit(0);
}

/// KVM_CREATE_VM + KVM_CREATE_DEVICE(VFIO); closed at once unless kept.
fn create_vm(kvm: &OwnedFd) -> (OwnedFd, OwnedFd) {
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xAE01, 0) };
    assert!(
        vm >= 0,
        "KVM_CREATE_VM: {}",
        std::io::Error::last_os_error()
    );
    let mut cd = [4u32, 0, 0];
    let r = unsafe { libc::ioctl(vm, 0xC00C_AEE0, cd.as_mut_ptr()) };
    assert_eq!(
        r,
        0,
        "KVM_CREATE_DEVICE: {}",
        std::io::Error::last_os_error()
    );
    unsafe { (OwnedFd::from_raw_fd(vm), OwnedFd::from_raw_fd(cd[1] as i32)) }
}

/// Events a worker causes per path hook: per VM one KVM_CREATE_VM and one
/// KVM_CREATE_DEVICE return; per closed VM two close(2) (the exit closes the
/// kept ones without close(2)); one exit of the thread group.
fn expected_events(vms_per_thread: usize) -> BTreeMap<&'static str, u64> {
    let vms = (THREADS * vms_per_thread) as u64;
    let closed = (THREADS * vms_per_thread.div_ceil(2)) as u64;
    BTreeMap::from([
        ("syscalls:sys_exit_ioctl", 2 * vms),
        ("syscalls:sys_enter_close", 2 * closed),
        ("sched:sched_process_exit", 1),
    ])
}

/// Event kinds (the daemon's `kind` label) that each path hook yields.
fn hook_of_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "vm-created" | "kvm-vfio-created" => Some("syscalls:sys_exit_ioctl"),
        "fd-close" => Some("syscalls:sys_enter_close"),
        "process-exit" => Some("sched:sched_process_exit"),
        _ => None,
    }
}

struct Worker(Child);

impl Worker {
    fn start(vms_per_thread: usize) -> Worker {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["soak_worker", "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, vms_per_thread.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        let out = BufReader::new(c.stdout.take().unwrap());
        for line in out.lines() {
            if line.expect("worker stdout").contains("WORKER-DONE") {
                return Worker(c);
            }
        }
        panic!("worker ended without WORKER-DONE: {:?}", c.wait());
    }

    /// Lets it exit (its stdin closes) and reaps it.
    fn finish(mut self) {
        drop(self.0.stdin.take());
        let s = self.0.wait().unwrap();
        assert!(s.success(), "worker: {s}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(addr: &str) -> (String, Duration) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    (body, t.elapsed())
}

/// Sum of a metric family's samples, by the value of `label` (or "" if none).
fn samples(body: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in body.lines().filter(|l| l.starts_with(name)) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let rest = &series[name.len()..];
        if !(rest.is_empty() || rest.starts_with('{')) {
            continue;
        }
        let key = rest
            .split(&format!("{label}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or("")
            .to_owned();
        *m.entry(key).or_default() += value.parse::<f64>().unwrap() as u64;
    }
    m
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn write_config(path: &Path, port: u16, findings: &Path, zombie_ms: u64) {
    std::fs::write(
        path,
        format!(
            "metrics_listen = \"127.0.0.1:{port}\"\nfindings_file = \"{}\"\njournal = false\n\
             ring_bytes = {RING_BYTES}\n[engine]\nzombie_after_ms = {zombie_ms}\n",
            findings.display()
        ),
    )
    .unwrap();
}

fn start_daemon(config: &Path) -> Guard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["daemon", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvscope daemon");
    let rx = lines_of(child.stderr.take().unwrap(), "daemon");
    wait_ready(&rx);
    Guard(child)
}

#[test]
fn daemon_soak_under_churn_reload_and_overflow() {
    if !live_or_skip("daemon_soak", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("KVSCOPE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let dir: PathBuf = std::env::temp_dir().join(format!("kvscope-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("kvscope.toml");
    let findings = dir.join("findings.jsonl");
    write_config(&config, port, &findings, 10_000);
    let mut daemon = start_daemon(&config);
    let pid = daemon.0.id();

    // Scrapes while the daemon runs (not while it is stopped on purpose).
    let stopped = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (stopped, done, addr) = (stopped.clone(), done.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if !stopped.load(Ordering::SeqCst) {
                    lat.push(scrape(&addr).1);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            lat
        })
    };

    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut add = |vms| {
        for (h, n) in expected_events(vms) {
            *expected.entry(h).or_default() += n;
        }
    };
    let started = Instant::now();
    let (mut rounds, mut bursts, mut reloads) = (0u32, 0u32, 0u32);
    let mut last_hup = Instant::now();
    let mut rss = Vec::new();
    let mut warm_rss = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        rounds += 1;
        if rounds % 4 == 0 {
            // Overflow: the reader is stopped while a burst fills the ring.
            stopped.store(true, Ordering::SeqCst);
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            let w = Worker::start(VMS_BURST);
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            stopped.store(false, Ordering::SeqCst);
            // Its exit comes once the ring has room again: it is delivered.
            std::thread::sleep(Duration::from_millis(300));
            w.finish();
            add(VMS_BURST);
            bursts += 1;
        } else {
            Worker::start(VMS_NORMAL).finish();
            add(VMS_NORMAL);
        }
        if last_hup.elapsed() >= Duration::from_secs(3) {
            write_config(
                &config,
                port,
                &findings,
                [10_000, 20_000][reloads as usize % 2],
            );
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            reloads += 1;
            last_hup = Instant::now();
        }
        rss.push(rss_kib(pid));
        if rounds == 4 {
            warm_rss = rss.iter().copied().max().unwrap();
        }
    }
    // Two daemon ticks: the loss counters and gauges are current.
    std::thread::sleep(Duration::from_millis(2500));
    done.store(true, Ordering::SeqCst);
    let mut lat = scraper.join().unwrap();
    let (body, _) = scrape(&addr);

    let seen_by_kind = samples(&body, "kvscope_events_total", "kind");
    let lost_by_hook = samples(&body, "kvscope_lost_events_total", "hook");
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, n) in &seen_by_kind {
        if let Some(h) = hook_of_kind(k) {
            *seen.entry(h).or_default() += n;
        }
    }
    lat.sort();
    let max_rss = rss.iter().copied().max().unwrap_or(0);
    let final_rss = rss_kib(pid);
    eprintln!(
        "soak: {secs} s, {rounds} rounds ({bursts} overflow bursts), {reloads} SIGHUPs; \
         RSS warm {warm_rss} KiB, max {max_rss} KiB, final {final_rss} KiB; \
         scrapes {} (median {:?}, max {:?})",
        lat.len(),
        lat.get(lat.len() / 2),
        lat.last()
    );
    for (h, want) in &expected {
        let (s, l) = (
            seen.get(h).copied().unwrap_or(0),
            lost_by_hook.get(*h).copied().unwrap_or(0),
        );
        eprintln!("soak: {h}: caused {want} = analysed {s} + lost {l}");
    }
    eprintln!("soak: other kinds seen {seen_by_kind:?}; all losses {lost_by_hook:?}");

    for (h, want) in &expected {
        let s = seen.get(h).copied().unwrap_or(0);
        let l = lost_by_hook.get(*h).copied().unwrap_or(0);
        assert_eq!(
            s + l,
            *want,
            "{h}: {s} analysed + {l} lost != {want} caused"
        );
    }
    let total_lost: u64 = lost_by_hook.values().sum();
    assert!(
        bursts == 0 || total_lost > 0,
        "the overflow bursts lost nothing: the test did not overflow"
    );
    assert_eq!(
        samples(&body, "kvscope_live_vms", "").get("").copied(),
        Some(0),
        "VMs still live after every worker exited"
    );
    assert_eq!(
        samples(&body, "kvscope_config_reloads_total", "")
            .get("")
            .copied(),
        Some(reloads as u64)
    );
    assert_eq!(
        samples(&body, "kvscope_delivery_verified", "")
            .get("")
            .copied(),
        Some(1)
    );
    // Idle after the churn: nothing waits to be analysed, so no lag.
    let lag = body
        .lines()
        .find_map(|l| l.strip_prefix("kvscope_analysis_lag_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(lag, Some(0.0), "an idle daemon reports lag {lag:?}");
    assert!(
        max_rss <= warm_rss + 16 * 1024,
        "RSS grew from {warm_rss} KiB after warm-up to {max_rss} KiB"
    );
    // The always-on footprint (issue 22): idle again after the churn, the
    // reloads and the overflow, the daemon holds at most 25 MiB.
    assert!(
        final_rss <= 25 * 1024,
        "idle after the soak the daemon holds {final_rss} KiB (at most 25600)"
    );
    let worst = lat.last().copied().unwrap_or_default();
    assert!(worst < Duration::from_secs(1), "a scrape took {worst:?}");

    let t = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "daemon ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "daemon exit: {status}");
    eprintln!("soak: SIGTERM to exit {:?}", t.elapsed());
    assert!(
        our_programs_loaded().is_empty(),
        "{:?}",
        our_programs_loaded()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
