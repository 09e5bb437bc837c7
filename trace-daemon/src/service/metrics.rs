//! Prometheus metrics: the one list of what the daemon exports. No pid or
//! pointer labels: every label takes values from a small fixed set (event
//! kinds, hooks, roles, lock classes, finding kinds), so cardinality is bounded.
use prometheus::{
    Counter, Encoder as _, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    attach::plan::{Method, Plan, Tier},
    engine::{Engine, Finding, FindingKind, Observation},
    event::{Kind, drops::Drops},
};
use trace_common::LockClass;

pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub lost: IntCounterVec,
    pub undecodable: IntCounter,
    pub drops: IntCounterVec,
    pub attached: GaugeVec,
    pub role_missing: GaugeVec,
    pub tier: IntGauge,
    pub live_vms: IntGauge,
    pub zombie_vms: IntGauge,
    pub open_devices: IntGauge,
    pub domain_vms: IntGaugeVec,
    pub domain_users: IntGaugeVec,
    pub domain_zombies: IntGaugeVec,
    pub findings: IntCounterVec,
    pub lock_graph_edges: IntGauge,
    pub lock_wait: HistogramVec,
    pub lock_hold: HistogramVec,
    pub teardown: Histogram,
    pub lag: Gauge,
    pub ring_fill: Gauge,
    pub reloads: IntCounter,
    pub module_changes: IntCounterVec,
    pub blind_seconds: Counter,
    pub build_info: GaugeVec,
    pub delivery_verified: IntGauge,
    pub lock_watch: GaugeVec,
    /// The current session's ring, read at every scrape.
    ring: std::sync::Mutex<Option<std::sync::Arc<crate::attach::ring_fill::RingFill>>>,
}

/// Buckets from 10 µs to about 40 s: lock holds are µs, teardowns are ms..s.
fn seconds_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1e-5, 4.0, 12).expect("valid buckets")
}

macro_rules! reg {
    ($r:expr, $m:expr) => {{
        let m = $m.expect("valid metric definition");
        $r.register(Box::new(m.clone()))
            .expect("unique metric name");
        m
    }};
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Metrics {
            events: reg!(r, IntCounterVec::new(Opts::new("kvscope_events_total", "Events analysed, by kind (vm-get, vm-put, lock-acquired, ...)."), &["kind"])),
            lost: reg!(r, IntCounterVec::new(Opts::new("kvscope_lost_events_total", "Events the kernel side could not send (ring buffer full), by hook."), &["hook"])),
            drops: reg!(r, IntCounterVec::new(Opts::new("kvscope_kernel_drops_total", "What the kernel side gave up on besides a full ring: cause stack-id (an event sent without its stack), stash-full (a call's exit lost: argument stash full), watched-evicted (a watched lock evicted from the LRU map; hook \"-\"), by hook."), &["cause", "hook"])),
            undecodable: reg!(r, IntCounter::new("kvscope_undecodable_records_total", "Ring-buffer records that did not decode (ABI mismatch or unknown hook).")),
            attached: reg!(r, GaugeVec::new(Opts::new("kvscope_probes_attached", "Hooks attached: kernel functions by role and method (fentry, kprobe), tracepoints by program (method tracepoint)."), &["role", "method"])),
            role_missing: reg!(r, GaugeVec::new(Opts::new("kvscope_role_missing", "1 when kvscope tried to attach a role's kernel function by a method this host allows and failed (see `kvscope check`); roles this kernel line, tier or lock mode does not serve are 0."), &["role"])),
            tier: reg!(r, IntGauge::new("kvscope_tier", "Capability tier: 1 fentry, 2 kprobe, 3 tracepoints only, 0 none.")),
            live_vms: reg!(r, IntGauge::new("kvscope_live_vms", "VMs seen and not destroyed.")),
            zombie_vms: reg!(r, IntGauge::new("kvscope_zombie_vms", "VMs whose fd was closed but which were not destroyed within the zombie threshold.")),
            open_devices: reg!(r, IntGauge::new("kvscope_open_vfio_devices", "VFIO devices with open_count > 0.")),
            domain_vms: reg!(r, IntGaugeVec::new(Opts::new("kvscope_domain_vms", "Live VMs by the operator's name (libvirt domain, else QEMU -name, else comm[pid], else unnamed); at most 100 names, the rest under _other."), &["domain"])),
            domain_users: reg!(r, IntGaugeVec::new(Opts::new("kvscope_domain_users", "users_count of the live VMs of a name, as the kernel last showed it (summed where VMs share a name)."), &["domain"])),
            domain_zombies: reg!(r, IntGaugeVec::new(Opts::new("kvscope_domain_zombie_vms", "Live VMs of a name whose fd was closed but which were not destroyed within the zombie threshold."), &["domain"])),
            findings: reg!(r, IntCounterVec::new(Opts::new("kvscope_findings_total", "Distinct findings raised, by kind and severity."), &["kind", "severity"])),
            lock_graph_edges: reg!(r, IntGauge::new("kvscope_lock_graph_edges", "Edges in the learnt lock-class dependency graph.")),
            lock_wait: reg!(r, HistogramVec::new(HistogramOpts::new("kvscope_lock_wait_seconds", "Time from a mutex_lock call on a watched lock to acquiring it, by lock class.").buckets(seconds_buckets()), &["class"])),
            lock_hold: reg!(r, HistogramVec::new(HistogramOpts::new("kvscope_lock_hold_seconds", "Time a watched lock was held, by lock class.").buckets(seconds_buckets()), &["class"])),
            teardown: reg!(r, Histogram::with_opts(HistogramOpts::new("kvscope_vm_teardown_seconds", "VM fd close to kvm_destroy_vm.").buckets(seconds_buckets()))),
            lag: reg!(r, Gauge::new("kvscope_analysis_lag_seconds", "Largest delay between an event's kernel timestamp and its analysis during the last second; 0 when no event arrived (an idle host has no lag).")),
            ring_fill: reg!(r, Gauge::new("kvscope_ring_buffer_fill_ratio", "Fraction of the event ring buffer holding unread events.")),
            reloads: reg!(r, IntCounter::new("kvscope_config_reloads_total", "Configuration reloads (SIGHUP) applied.")),
            module_changes: reg!(r, IntCounterVec::new(Opts::new("kvscope_module_changes_total", "Watched kernel modules (kvm, kvm_amd, vfio, vfio_pci, ...) loaded, unloaded or reloaded while the daemon ran, by module and change; each made the daemon attach again."), &["module", "change"])),
            blind_seconds: reg!(r, Counter::new("kvscope_blind_seconds_total", "Seconds the daemon saw nothing while it attached again after a module change (events in them are unseen).")),
            build_info: reg!(r, GaugeVec::new(Opts::new("kvscope_build_info", "Always 1; the kvscope version as a label."), &["version"])),
            lock_watch: reg!(r, GaugeVec::new(Opts::new("kvscope_lock_watch", "1 for the lock-watching mode in use: deep (the mutex API hooked) or lean (held locks read from owner words at the path hooks)."), &["mode"])),
            delivery_verified: reg!(r, IntGauge::new("kvscope_delivery_verified", "1 when the attach-time self-test event came back through the ring buffer; 0: an absence of events proves nothing.")),
            ring: std::sync::Mutex::new(None),
            registry: r,
        };
        // process_* (CPU, memory, fds, start time), as every exporter has.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        m.registry
            .register(Box::new(process))
            .expect("unique process metrics");
        m.zero_series();
        m
    }

    /// Series that exist before their first increment, at 0: an alert on
    /// `increase(...)` then fires on the first one.
    fn zero_series(&self) {
        for k in FindingKind::ALL {
            self.findings
                .with_label_values(&[k.id(), k.severity().name()]);
        }
        for c in LockClass::ALL {
            self.lock_wait.with_label_values(&[c.name()]);
            self.lock_hold.with_label_values(&[c.name()]);
        }
        for m in crate::attach::modules::WATCHED {
            for c in crate::attach::modules::CHANGES {
                self.module_changes.with_label_values(&[m, c]);
            }
        }
        self.drops.with_label_values(&["watched-evicted", "-"]);
    }

    /// The ring whose fill scrapes read (a new session after a module change).
    pub fn set_ring(&self, ring: Option<std::sync::Arc<crate::attach::ring_fill::RingFill>>) {
        *self.ring.lock().unwrap_or_else(|e| e.into_inner()) = ring;
    }

    fn collectors(&self) -> [&dyn prometheus::core::Collector; 26] {
        [
            &self.events,
            &self.lost,
            &self.drops,
            &self.undecodable,
            &self.attached,
            &self.role_missing,
            &self.tier,
            &self.live_vms,
            &self.zombie_vms,
            &self.open_devices,
            &self.domain_vms,
            &self.domain_users,
            &self.domain_zombies,
            &self.findings,
            &self.lock_graph_edges,
            &self.lock_wait,
            &self.lock_hold,
            &self.teardown,
            &self.lag,
            &self.ring_fill,
            &self.reloads,
            &self.module_changes,
            &self.blind_seconds,
            &self.build_info,
            &self.delivery_verified,
            &self.lock_watch,
        ]
    }

    /// (name, HELP) of every metric family the daemon exports, including
    /// labelled families that have no series yet (a gather would omit those).
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .collectors()
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| (d.fq_name.clone(), d.help.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn names(&self) -> Vec<String> {
        self.describe().into_iter().map(|(n, _)| n).collect()
    }

    /// Sets the gauges that describe what is attached.
    pub fn set_plan(&self, plan: &Plan) {
        // A new plan (after a module change) replaces the old one's series.
        self.attached.reset();
        self.tier.set(match plan.tier() {
            Tier::Fentry => 1,
            Tier::Kprobe => 2,
            Tier::Tracepoints => 3,
            Tier::None => 0,
        });
        for r in &plan.roles {
            for c in r.attached() {
                self.attached
                    .with_label_values(&[r.name, method_name(c.method)])
                    .add(1.0);
            }
            self.role_missing
                .with_label_values(&[r.name])
                .set(if r.attach_failed() { 1.0 } else { 0.0 });
        }
        for t in plan
            .tracepoints
            .iter()
            .filter(|t| t.method == Method::Tracepoint)
        {
            self.attached
                .with_label_values(&[t.program, "tracepoint"])
                .add(1.0);
        }
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
    }

    pub fn event(&self, kind: Kind) {
        self.events.with_label_values(&[kind.name()]).inc();
    }

    pub fn finding(&self, f: &Finding) {
        self.findings
            .with_label_values(&[f.kind.id(), f.severity().name()])
            .inc();
    }

    pub fn observe(&self, o: Observation) {
        match o {
            Observation::LockWait { class, secs } => self
                .lock_wait
                .with_label_values(&[class.name()])
                .observe(secs),
            Observation::LockHold { class, secs } => self
                .lock_hold
                .with_label_values(&[class.name()])
                .observe(secs),
            Observation::Teardown { secs } => self.teardown.observe(secs),
        }
    }

    /// Gauges read from engine state.
    pub fn engine_state(&self, e: &Engine) {
        self.live_vms
            .set(e.live_vms().filter(|v| !v.is_destroyed()).count() as i64);
        self.zombie_vms.set(e.zombie_vms() as i64);
        self.open_devices.set(e.open_devices() as i64);
        self.lock_graph_edges.set(e.lock_graph().len() as i64);
        // Live VMs only: a destroyed VM's series goes with it.
        for g in [&self.domain_vms, &self.domain_users, &self.domain_zombies] {
            g.reset();
        }
        for (name, row) in super::domains::by_domain(e) {
            self.domain_vms.with_label_values(&[&name]).set(row.vms);
            self.domain_users.with_label_values(&[&name]).set(row.users);
            self.domain_zombies
                .with_label_values(&[&name])
                .set(row.zombies);
        }
    }

    /// Cumulative lost counts from the kernel, per hook.
    pub fn set_lost(&self, hook: &str, total: u64) {
        let c = self.lost.with_label_values(&[hook]);
        let now = c.get();
        if total > now {
            c.inc_by(total - now);
        }
    }

    /// Raises the drop counters to the kernel's cumulative counts.
    pub fn set_drops(&self, d: &Drops) {
        let raise = |cause: &str, hook: &str, total: u64| {
            let c = self.drops.with_label_values(&[cause, hook]);
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        };
        for (h, n) in &d.stack_id_failed {
            raise("stack-id", h, *n);
        }
        for (h, n) in &d.stash_full {
            raise("stash-full", h, *n);
        }
        raise("watched-evicted", "-", d.watched_evicted);
    }

    pub fn encode(&self) -> String {
        if let Some(r) = &*self.ring.lock().unwrap_or_else(|e| e.into_inner()) {
            self.ring_fill.set(r.now());
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Fentry => "fentry",
        Method::Kprobe => "kprobe",
        Method::Tracepoint => "tracepoint",
        Method::None => "none",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::{
        hooks::Role,
        plan::{Choice, RolePlan, TracepointPlan},
    };

    fn choice(method: Method, error: Option<&str>) -> Choice {
        Choice {
            symbol: "kvm_get_kvm",
            module: Some("kvm".into()),
            method,
            reason: "test".into(),
            programs: vec![],
            error: error.map(str::to_owned),
        }
    }

    fn role(name: &'static str, c: Choice) -> RolePlan {
        RolePlan {
            role: Role::VmGet,
            name,
            yields: "test",
            choices: vec![c],
            absent: vec![],
        }
    }

    /// Before any event: every finding kind, lock class and module change
    /// at 0 (an `increase()` sees the first), and process_* metrics.
    #[test]
    fn counters_exist_at_zero_before_their_first_increment() {
        let text = Metrics::new().encode();
        for k in FindingKind::ALL {
            let line = format!(
                "kvscope_findings_total{{kind=\"{}\",severity=\"{}\"}} 0",
                k.id(),
                k.severity().name()
            );
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(text.contains("kvscope_lock_wait_seconds_count{class=\"kvm.lock\"} 0"));
        assert!(
            text.contains("kvscope_module_changes_total{change=\"reloaded\",module=\"kvm\"} 0")
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
    }

    /// A role is missing only where kvscope tried and failed; one the tier
    /// cannot serve (tier 3: no function hooks) is 0. Tracepoints count as
    /// attached probes.
    #[test]
    fn roles_missing_only_when_an_attach_failed_and_tracepoints_count() {
        let m = Metrics::new();
        let plan = Plan {
            roles: vec![
                role("vm-get", choice(Method::None, None)),
                role("vm-put", choice(Method::Kprobe, Some("EINVAL"))),
            ],
            tracepoints: vec![TracepointPlan {
                program: "vm_ioctl_exit",
                tracepoint: "syscalls/sys_exit_ioctl".into(),
                yields: "test",
                method: Method::Tracepoint,
                reason: "test".into(),
                too_old: false,
            }],
        };
        m.set_plan(&plan);
        let text = m.encode();
        assert!(
            text.contains("kvscope_role_missing{role=\"vm-get\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kvscope_role_missing{role=\"vm-put\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kvscope_probes_attached{method=\"tracepoint\",role=\"vm_ioctl_exit\"} 1"
            ),
            "{text}"
        );
    }
}
