//! `kvscope daemon`: the fleet service. Attaches like `trace`, runs the engine
//! continuously, writes findings to a rotating JSON-lines file and the journal,
//! serves Prometheus metrics, reloads on SIGHUP, detaches on SIGTERM, and speaks
//! sd_notify (READY, STATUS, WATCHDOG).
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sd_notify::NotifyState;

use crate::{
    attach::live::{self, Session, Signals, Sink},
    attach::loader::LoadOptions,
    attach::lost_totals::LostTotals,
    attach::modules::Change,
    attach::plan::LockWatch,
    engine::{self, Finding},
    event::Event,
    identity::Identity,
    output::finding_text::{self, FindingJson},
    output::wall::Clock,
    recording::Gap,
    recording::jsonl::Rotating,
    service::config::DaemonConfig,
    service::metrics::Metrics,
    service::web::WebState,
};

pub struct DaemonOptions {
    pub config: DaemonConfig,
    /// Re-read on SIGHUP; None: nothing to reload from.
    pub config_path: Option<PathBuf>,
    /// CLI overrides, re-applied after each reload.
    pub metrics_listen: Option<String>,
    pub web_config: Option<PathBuf>,
}

impl DaemonOptions {
    fn effective(&self, c: DaemonConfig) -> DaemonConfig {
        overridden(c, &self.metrics_listen, &self.web_config)
    }
}

/// The config with the command line's overrides.
fn overridden(
    mut c: DaemonConfig,
    metrics_listen: &Option<String>,
    web_config: &Option<PathBuf>,
) -> DaemonConfig {
    if let Some(l) = metrics_listen {
        c.metrics_listen = l.clone();
    }
    if let Some(w) = web_config {
        c.web_config = Some(w.clone());
    }
    c
}

struct DaemonSink {
    engine: engine::Engine,
    metrics: Arc<Metrics>,
    findings: Option<Rotating>,
    journal: Option<systemd_journal_logger::JournalLog>,
    config_path: Option<PathBuf>,
    metrics_listen_override: Option<String>,
    web_config_override: Option<PathBuf>,
    /// The endpoint's TLS and users, replaced on reload.
    web: Arc<WebState>,
    config: DaemonConfig,
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    /// Largest delay from an event's kernel timestamp to its analysis since
    /// the last tick (ns; 0: no event arrived).
    max_lag_ns: u64,
    /// A lock finding arrived while lean and `arm_deep_s` is set.
    armed: bool,
    /// Lost events per hook over every session, so that
    /// kvscope_lost_events_total only ever rises by what was lost.
    lost: LostTotals,
    /// Monotonic to wall-clock time (the session's pair of readings).
    clock: Option<Clock>,
}

fn open_findings(c: &DaemonConfig) -> anyhow::Result<Option<Rotating>> {
    if c.findings_file.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(Rotating::open(
        &c.findings_file,
        c.findings_max_bytes,
        c.findings_keep,
        crate::recording::private_file::mode(c.share_files),
    )?))
}

fn open_journal(c: &DaemonConfig) -> Option<systemd_journal_logger::JournalLog> {
    if c.journal && systemd_journal_logger::connected_to_journal() {
        systemd_journal_logger::JournalLog::new().ok()
    } else {
        None
    }
}

/// The journal's MESSAGE_ID of a kvscope finding (README, "Service").
pub const FINDING_MESSAGE_ID: &str = "5c0b1d7e9a3f4e2b8c6d0a1f2e3b4c5d";

impl DaemonSink {
    fn emit(&mut self, found: Vec<Finding>) -> anyhow::Result<()> {
        let kinds: Vec<engine::FindingKind> = found.iter().map(|f| f.kind).collect();
        self.armed |= arms_deep(&self.config, &kinds);
        for f in found {
            self.metrics.finding(&f);
            if let Some(w) = &mut self.findings {
                w.write(&FindingJson::of(&f).at(self.clock.as_ref()))?;
            }
            if let Some(j) = &self.journal {
                let objects: Vec<String> = f
                    .objects
                    .iter()
                    .map(|(r, a)| format!("{}={a:#x}", r.name()))
                    .collect();
                let level = match f.severity() {
                    engine::Severity::Info => log::Level::Info,
                    engine::Severity::Warning => log::Level::Warn,
                    _ => log::Level::Error,
                };
                let vm = f
                    .objects
                    .iter()
                    .find(|(r, _)| *r == engine::ObjectRole::Kvm)
                    .map_or_else(|| "-".to_owned(), |(_, a)| format!("{a:#x}"));
                let first_seen = self
                    .clock
                    .map_or_else(|| "-".to_owned(), |c| c.rfc3339(f.first_ns));
                let kvs: [(&str, String); 8] = [
                    // One id for every kvscope finding (journalctl
                    // MESSAGE_ID=...); the kind tells them apart.
                    ("message_id", FINDING_MESSAGE_ID.to_owned()),
                    ("kvscope_kind", f.kind.id().to_owned()),
                    ("kvscope_vm", vm),
                    (
                        "kvscope_vm_name",
                        f.vm_name.clone().unwrap_or_else(|| "-".to_owned()),
                    ),
                    ("kvscope_severity", f.severity().name().to_owned()),
                    ("kvscope_first_seen", first_seen),
                    ("kvscope_objects", objects.join(" ")),
                    ("kvscope_detail", finding_text::detail(&f).join("\n")),
                ];
                let kv: &[(&str, String)] = &kvs;
                let _ = j.journal_send(
                    &log::Record::builder()
                        .args(format_args!(
                            "{}: {}",
                            f.kind.id(),
                            finding_text::summary(&f)
                        ))
                        .level(level)
                        .target("kvscope")
                        .key_values(&kv)
                        .build(),
                );
            } else {
                log::warn!("{}: {}", f.kind.id(), finding_text::summary(&f));
            }
        }
        Ok(())
    }

    fn status(&self) -> String {
        format!(
            "tier {}; {} events; {} live VMs; {} findings",
            self.metrics.tier.get(),
            self.engine.events,
            self.metrics.live_vms.get(),
            self.engine.findings().len()
        )
    }
}

impl Sink for DaemonSink {
    /// The daemon runs for months: it attaches again (see `reattach`).
    fn event(&mut self, _s: &Session, _r: &trace_common::Event, ev: &Event) -> anyhow::Result<()> {
        self.metrics.event(ev.kind);
        // Both clocks are CLOCK_MONOTONIC (bpf_ktime_get_ns).
        let lag = live::mono_now_ns().saturating_sub(ev.ts_ns);
        self.max_lag_ns = self.max_lag_ns.max(lag);
        let found = self.engine.ingest(ev);
        for o in self.engine.take_observations() {
            self.metrics.observe(o);
        }
        self.emit(found)
    }

    fn tick(
        &mut self,
        s: &Session,
        lost: &[(trace_common::HookId, u64)],
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let found = self.engine.tick(now_ns);
        self.emit(found)?;
        for (h, n) in self.lost.update(lost) {
            self.metrics.set_lost(h.symbol(), n);
        }
        self.metrics.set_drops(&s.drops);
        self.metrics.engine_state(&self.engine);
        // Idle is no lag: nothing waits to be analysed.
        self.metrics
            .lag
            .set(std::mem::take(&mut self.max_lag_ns) as f64 / 1e9);
        // Scrapes read the ring's positions themselves; without that
        // mapping, the kernel side's value as of its last event.
        if s.fill.is_none()
            && let Some(f) = s.probes.ring_fill()
        {
            self.metrics.ring_fill.set(f);
        }
        let _ = sd_notify::notify(&[NotifyState::Status(&self.status())]);
        if let Some(w) = self.watchdog
            && self.last_watchdog.elapsed() >= w / 2
        {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            self.last_watchdog = Instant::now();
        }
        Ok(())
    }

    fn wants_deep(&mut self) -> Option<Duration> {
        std::mem::take(&mut self.armed)
            .then_some(self.config.arm_deep_s)
            .flatten()
            .map(Duration::from_secs)
    }

    fn lock_watch_changed(&mut self, s: &Session) {
        self.engine.set_lock_watch(s.lock_watch == LockWatch::Lean);
        set_lock_watch_gauge(&self.metrics, s.lock_watch);
    }

    fn identified(&mut self, kvm: u64, created_ns: u64, id: &Identity) -> anyhow::Result<()> {
        self.engine.identify(kvm, created_ns, id.clone());
        Ok(())
    }

    /// Counted (kvscope_module_changes_total, kvscope_blind_seconds_total),
    /// the engine told (what lived across the gap is unknown from now on),
    /// the metrics and status set from the new session's plan.
    fn blind(
        &mut self,
        changes: &[Change],
        gap: &Gap,
        session: Option<&Session>,
    ) -> anyhow::Result<()> {
        for c in changes {
            self.metrics
                .module_changes
                .with_label_values(&[c.module(), c.kind()])
                .inc();
        }
        self.metrics
            .blind_seconds
            .inc_by(gap.to_ns.saturating_sub(gap.from_ns) as f64 / 1e9);
        self.engine.blind(gap.from_ns, gap.to_ns);
        self.lost.session_ended();
        let Some(session) = session else {
            self.metrics.set_ring(None);
            return Ok(());
        };
        self.metrics.set_ring(session.fill.clone());
        self.metrics.set_plan(&session.probes.plan);
        self.metrics
            .delivery_verified
            .set(i64::from(session.delivery.verified));
        self.engine.cfg = session.engine_config(self.engine.cfg.clone());
        self.clock = Clock::of(&session.header());
        self.lock_watch_changed(session);
        let _ = sd_notify::notify(&[NotifyState::Status(&self.status())]);
        Ok(())
    }

    fn reload(&mut self, session: &mut Session) -> anyhow::Result<()> {
        let Some(path) = self.config_path.clone() else {
            log::warn!("SIGHUP: no --config file to reload");
            return Ok(());
        };
        let _ = sd_notify::notify(&[NotifyState::Reloading]);
        let result = DaemonConfig::load(&path)
            .map(|c| overridden(c, &self.metrics_listen_override, &self.web_config_override))
            .and_then(|c| c.web().map(|w| (c, w)));
        match result {
            Ok((mut c, web)) => {
                self.web.replace(web);
                if c.metrics_listen != self.config.metrics_listen {
                    eprintln!(
                        "kvscope: metrics_listen changes only at restart; still serving {}",
                        self.config.metrics_listen
                    );
                }
                if c.lock_watch != session.lock_watch
                    || (c.lock_watch == LockWatch::Deep && c.deep_for_s.is_some())
                {
                    let deep_for = c.deep_for_s.map(Duration::from_secs);
                    let line = session.switch_lock_watch(c.lock_watch, deep_for);
                    eprintln!("kvscope: {line}");
                    if session.lock_watch != c.lock_watch {
                        // Refused (lean without the mutex layout): the file
                        // does not describe the session.
                        c.lock_watch = session.lock_watch;
                    }
                    self.lock_watch_changed(session);
                }
                // Thresholds change; state (VMs, locks, findings) stays.
                // What the attach plan decided stays too.
                self.engine.cfg = engine::Config {
                    observe: true,
                    ..c.engine.clone()
                }
                .keeping_attach_facts(&self.engine.cfg);
                self.findings = open_findings(&c)?;
                self.journal = open_journal(&c);
                self.config = c;
                self.metrics.reloads.inc();
                eprintln!("kvscope: reloaded {}", path.display());
            }
            // A bad file keeps the running configuration.
            Err(e) => eprintln!("kvscope: reload failed, keeping the running configuration: {e:#}"),
        }
        let _ = sd_notify::notify(&[NotifyState::Ready]);
        Ok(())
    }
}

/// Whether `found` arms a deep session: a lock finding, with `arm_deep_s`
/// set (the session only acts on it while lean).
fn arms_deep(c: &DaemonConfig, found: &[engine::FindingKind]) -> bool {
    c.arm_deep_s.is_some() && found.iter().any(|k| k.is_lock())
}

fn set_lock_watch_gauge(metrics: &Metrics, mode: LockWatch) {
    for m in [LockWatch::Deep, LockWatch::Lean] {
        let on = f64::from(u8::from(m == mode));
        metrics.lock_watch.with_label_values(&[m.name()]).set(on);
    }
}

/// One line for the roles not attached (their reasons at `--log info` and
/// in `kvscope check`), not one line each at every start.
fn say_missing_roles(plan: &crate::attach::plan::Plan) {
    let missing: Vec<&str> = plan
        .roles
        .iter()
        .filter_map(|r| {
            let why = r.missing_reason()?;
            log::info!("role {} not attached: {why}", r.name);
            Some(r.name)
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "kvscope: {} of {} roles not attached ({}); `kvscope check` says why",
            missing.len(),
            plan.roles.len(),
            missing.join(", ")
        );
    }
}

pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let config = opts.effective(opts.config.clone());
    config.validate()?;
    // Everything that can fail on bad configuration happens before any probe is
    // loaded: never a half-started daemon.
    let addr: SocketAddr = config.metrics_listen.parse()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen {addr}: cannot listen"))?;
    let findings = open_findings(&config)?;
    let web = WebState::new(config.web()?);
    let metrics = Arc::new(Metrics::new());
    let load = LoadOptions {
        ring_bytes: config.ring_bytes,
        stacks: config.stacks,
        lock_stacks: config.stacks,
        lock_watch: config.lock_watch,
        deep_for: config.deep_for_s.map(Duration::from_secs),
        ..LoadOptions::default()
    };
    let Some(session) = live::attach(&load, &mut signals).await? else {
        return Ok(());
    };
    metrics.set_plan(&session.probes.plan);
    metrics.set_ring(session.fill.clone());
    set_lock_watch_gauge(&metrics, session.lock_watch);
    metrics
        .delivery_verified
        .set(i64::from(session.delivery.verified));
    say_missing_roles(&session.probes.plan);
    session.announce(&format!("metrics on http://{addr}/metrics"));
    tokio::spawn(super::web::serve(listener, metrics.clone(), web.clone()));
    let mut ecfg = session.engine_config(config.engine.clone());
    ecfg.observe = true;
    let watchdog = sd_notify::watchdog_enabled();
    let mut sink = DaemonSink {
        engine: engine::Engine::new(ecfg),
        metrics: metrics.clone(),
        findings,
        journal: open_journal(&config),
        config_path: opts.config_path.clone(),
        metrics_listen_override: opts.metrics_listen.clone(),
        web_config_override: opts.web_config.clone(),
        web,
        config,
        watchdog,
        last_watchdog: Instant::now(),
        max_lag_ns: 0,
        armed: false,
        lost: LostTotals::default(),
        clock: Clock::of(&session.header()),
    };
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&sink.status())]);
    let (session, stats) = crate::attach::reload::run_across_reloads(
        session,
        &mut sink,
        Duration::from_secs(1),
        &load,
        &mut signals,
    )
    .await?;
    let Some(session) = session else {
        return Ok(());
    };
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    session.close_for_exit();
    eprintln!(
        "kvscope: detached; {} events, {} lost, {} findings",
        stats.events,
        stats.lost,
        sink.engine.findings().len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FindingKind;

    #[test]
    fn only_lock_findings_arm_deep_and_only_when_configured() {
        let mut c = DaemonConfig::default();
        assert!(!arms_deep(&c, &[FindingKind::Deadlock]), "off by default");
        c.arm_deep_s = Some(600);
        assert!(arms_deep(
            &c,
            &[FindingKind::ZombieVm, FindingKind::Deadlock]
        ));
        assert!(arms_deep(&c, &[FindingKind::LongWait]));
        assert!(!arms_deep(
            &c,
            &[FindingKind::ZombieVm, FindingKind::UnbalancedPut]
        ));
        assert!(!arms_deep(&c, &[]));
    }
}
