//! The real daemon, scraped by a real Prometheus server (Debian's `prometheus`,
//! started here on a loopback port), on this host's real /dev/kvm (tier 3).
//! Also: SIGHUP changes a threshold without losing state, SIGTERM leaves no
//! program of ours loaded, and bad configurations fail before anything starts.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{Guard, SERIAL, create_vm_with_kvm_vfio, live_or_skip, open_kvm, our_programs_loaded};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// A sample from the daemon's exposition.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Instant query to Prometheus: the value of a single-series result.
fn prom_query(port: u16, q: &str) -> Option<f64> {
    let body = http_get(port, &format!("/api/v1/query?query={q}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvscope-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_config(path: &Path, port: u16, findings: &Path, zombie_ms: u64) {
    write_config_locks(path, port, findings, zombie_ms, "lean");
}

fn write_config_locks(path: &Path, port: u16, findings: &Path, zombie_ms: u64, locks: &str) {
    std::fs::write(
        path,
        format!(
            "metrics_listen = \"127.0.0.1:{port}\"\nfindings_file = \"{}\"\njournal = false\nlock_watch = \"{locks}\"\n[engine]\nzombie_after_ms = {zombie_ms}\n",
            findings.display()
        ),
    )
    .unwrap();
}

fn start_daemon(config: &Path) -> Guard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["daemon", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::lines_of(child.stderr.take().unwrap(), "daemon");
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("metrics on") => break,
            Ok(_) => {}
            Err(e) => panic!("daemon did not start: {e}"),
        }
    }
    Guard(child)
}

/// The real Prometheus with `config` (its YAML), on `port`, its data in `dir`.
fn start_prometheus(dir: &Path, port: u16, config: &str) -> Guard {
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    Guard(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    )
}

fn zombie_lines(findings: &Path) -> usize {
    std::fs::read_to_string(findings)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"zombie-vm\""))
        .count()
}

#[test]
fn daemon_scraped_by_prometheus_reload_and_shutdown() {
    if !live_or_skip(
        "daemon_scraped_by_prometheus_reload_and_shutdown",
        &["prometheus", "promtool"],
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("svc");
    let (mport, pport) = (free_port(), free_port());
    let findings = dir.join("findings.jsonl");
    let config = dir.join("kvscope.toml");
    write_config(&config, mport, &findings, 600_000);
    let mut daemon = start_daemon(&config);

    let _prom = start_prometheus(
        &dir,
        pport,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kvscope\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        ),
    );
    // Prometheus scrapes the daemon: the series exists, with 0 VMs.
    let before = wait_for("Prometheus to scrape kvscope_live_vms", 60, || {
        prom_query(pport, "kvscope_live_vms")
    });
    assert_eq!(prom_query(pport, "kvscope_tier"), Some(3.0));

    let kvm: OwnedFd = open_kvm();
    let (vm1, dev1) = create_vm_with_kvm_vfio(&kvm);
    let (vm2, dev2) = create_vm_with_kvm_vfio(&kvm);
    wait_for("live VMs to rise by 2 in Prometheus", 30, || {
        prom_query(pport, "kvscope_live_vms").filter(|v| *v == before + 2.0)
    });

    // VM fds closed, kvm-vfio fds kept: not destroyed. No zombie at 600 s.
    drop(vm1);
    drop(vm2);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(zombie_lines(&findings), 0);

    // SIGHUP with a 200 ms threshold and deep lock watching: the same VMs
    // (state kept) become zombies; the mode switches without a restart.
    write_config_locks(&config, mport, &findings, 200, "deep");
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
    wait_for("two zombie-vm findings after reload", 15, || {
        (zombie_lines(&findings) == 2).then_some(())
    });
    let body = wait_for("metrics after reload", 10, || {
        http_get(mport, "/metrics").filter(|b| metric(b, "kvscope_zombie_vms") == Some(2.0))
    });
    assert_eq!(metric(&body, "kvscope_config_reloads_total"), Some(1.0));
    assert_eq!(
        metric(&body, "kvscope_lock_watch{mode=\"deep\"}"),
        Some(1.0),
        "SIGHUP switched lock watching"
    );
    assert_eq!(
        metric(&body, "kvscope_lock_watch{mode=\"lean\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&body, "kvscope_live_vms"),
        Some(before + 2.0),
        "state kept across reload"
    );
    wait_for("Prometheus to see the zombies", 30, || {
        prom_query(pport, "kvscope_zombie_vms").filter(|v| *v == 2.0)
    });

    // The exposition passes promtool.
    let mut pt = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pt.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = pt.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM: clean exit, nothing of ours left in the kernel.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let st = wait_for("daemon exit", 15, || daemon.0.try_wait().unwrap());
    assert!(st.success(), "daemon exited {st}");
    assert_eq!(
        our_programs_loaded(),
        Vec::<String>::new(),
        "programs left loaded after SIGTERM"
    );
    drop((dev1, dev2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fleet's way: the endpoint behind TLS (a test CA) and basic auth from
/// its web config, scraped by the real Prometheus with `scheme: https`,
/// `tls_config` and `basic_auth`; an unauthenticated scrape is refused.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    if !live_or_skip(
        "prometheus_scrapes_over_tls_with_basic_auth",
        &["prometheus", "openssl"],
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("svc-tls");
    common::certificates(&dir);
    let (mport, pport) = (free_port(), free_port());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .unwrap();
    let config = dir.join("kvscope.toml");
    std::fs::write(
        &config,
        format!(
            "metrics_listen = \"127.0.0.1:{mport}\"\nweb_config = \"{}\"\nfindings_file = \"\"\njournal = false\n",
            dir.join("web.yml").display()
        ),
    )
    .unwrap();
    let mut daemon = start_daemon(&config);
    assert_eq!(
        http_get(mport, "/metrics"),
        None,
        "plain HTTP gets no answer"
    );
    let _prom = start_prometheus(
        &dir,
        pport,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kvscope\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: s3cret\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n  - job_name: anonymous\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n",
            ca = dir.join("ca.pem").display()
        ),
    );
    let tier = wait_for("Prometheus to scrape kvscope_tier over TLS", 60, || {
        prom_query(pport, "kvscope_tier")
    });
    assert_eq!(tier, 3.0);
    assert_eq!(prom_query(pport, "up{job=\"kvscope\"}"), Some(1.0));
    // The job without credentials is refused (401): down.
    let anon = wait_for("the anonymous job's first scrape", 30, || {
        prom_query(pport, "up{job=\"anonymous\"}")
    });
    assert_eq!(anon, 0.0, "a scrape without credentials must fail");
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let st = wait_for("daemon exit", 15, || daemon.0.try_wait().unwrap());
    assert!(st.success(), "daemon exited {st}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn daemon_fails(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .arg("daemon")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "must fail: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_configs_fail_before_anything_starts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmpdir("badcfg");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "metrics_listen = \"127.0.0.1:1\"\nzombie_after = 3\n").unwrap();
    let err = daemon_fails(&["--config", bad.to_str().unwrap()]);
    assert!(
        err.contains("zombie_after") && err.contains("bad.toml"),
        "{err}"
    );
    std::fs::write(&bad, "[engine]\nlong_wait_ms = \"long\"\n").unwrap();
    let err = daemon_fails(&["--config", bad.to_str().unwrap()]);
    assert!(err.contains("long_wait_ms"), "{err}");
    let err = daemon_fails(&["--config", "/nonexistent/kvscope.toml"]);
    assert!(
        err.contains("cannot read config file /nonexistent/kvscope.toml"),
        "{err}"
    );
    // `config check` says the same without starting anything.
    let o = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["config", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    // Port in use: refused before any probe is loaded.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!("findings_file = \"{}\"\n", dir.join("f.jsonl").display()),
    )
    .unwrap();
    let err = daemon_fails(&[
        "--config",
        good.to_str().unwrap(),
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(
        err.contains("cannot listen") && err.contains(&port.to_string()),
        "{err}"
    );
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            our_programs_loaded(),
            Vec::<String>::new(),
            "a failed start left programs loaded"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
