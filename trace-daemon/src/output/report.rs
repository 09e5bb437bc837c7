//! Rendering findings and whole-run summaries (text and JSON). Pure functions
//! of engine state and recording metadata.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    engine::{Anomalies, Engine, Finding, Holder, ObjectRole, Vm, locks::EdgeHow},
    event::drops::Drops,
    identity::Identity,
    output::event_line as render,
    output::finding_text::{self, FindingJson, step_line},
    output::wall::Clock,
    recording::{Damage, Gap, Header, Stack},
    vm_sel::VmSel,
};

pub fn finding_text(f: &Finding, clock: Option<&Clock>) -> String {
    finding_text_with(f, &BTreeMap::new(), clock)
}

/// A finding as an engineer reads it, with symbolised stacks when known.
pub fn finding_text_with(
    f: &Finding,
    stacks: &BTreeMap<u32, Stack>,
    clock: Option<&Clock>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "!! {} [{}] {}",
        f.kind.id(),
        f.severity().name(),
        finding_text::summary(f)
    );
    let _ = writeln!(o, "   {}", render::finding_when(f, clock));
    for t in &f.threads {
        let _ = writeln!(o, "   thread {}/{} (tgid {})", t.comm, t.pid, t.tgid);
    }
    for d in &finding_text::detail(f) {
        let _ = writeln!(o, "   {d}");
    }
    for id in &f.stacks {
        let _ = writeln!(o, "   stack #{id}:");
        match stacks.get(id) {
            Some(s) => {
                for sym in &s.symbols {
                    let _ = writeln!(o, "     {sym}");
                }
            }
            None => {
                let _ = writeln!(o, "     (not recorded)");
            }
        }
    }
    o
}

#[derive(Serialize)]
pub struct VmSummary {
    #[serde(with = "crate::hexaddr::one")]
    pub addr: u64,
    pub generation: u32,
    pub destroyed: bool,
    /// `live`, `destroyed`, or `unknown` (its end cannot be seen: see
    /// `unknown_because`).
    pub state: &'static str,
    /// Why its state is unknown: `file-shared` (tier 3: its file is held by an
    /// fd kvscope does not follow), `blind-gap` (it lived through one) or
    /// `exec` (tier 3: its creator exec'd, closing its fds unseen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_because: Option<&'static str>,
    /// Who it belongs to, as read when its creation was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    pub users: Option<i32>,
    pub steps: usize,
    pub inferred_steps: usize,
    pub holders: Vec<(Holder, i32)>,
    /// users_count after each step that changed it, oldest first (kept steps).
    pub counts: Vec<i32>,
    /// Each change as "+1 HOLDER" / "-1 HOLDER" ("unattributed" when no hook
    /// named it; "(inferred)" when no probe saw it), oldest first.
    pub changes: Vec<String>,
    pub destroys: usize,
    /// The process that created it, when its creation was seen.
    pub creator_pid: Option<u32>,
    /// Kinds of the findings that name this VM.
    pub findings: Vec<String>,
}

impl VmSummary {
    pub fn of(v: &Vm) -> Self {
        VmSummary {
            addr: v.addr,
            generation: v.generation,
            destroyed: v.is_destroyed(),
            state: if v.is_destroyed() {
                "destroyed"
            } else if v.state_unknown() {
                "unknown"
            } else {
                "live"
            },
            unknown_because: match (v.is_destroyed(), v.file_shared, v.blind_from_ns) {
                (false, true, _) => Some("file-shared"),
                (false, false, Some(_)) => Some("blind-gap"),
                (false, false, None) if v.exec_ns.is_some() => Some("exec"),
                _ => None,
            },
            identity: v.identity.clone(),
            users: v.users,
            steps: v.timeline.len() + v.timeline.folded as usize,
            inferred_steps: v.timeline.steps.iter().filter(|s| s.inferred()).count(),
            holders: v.holders_now(),
            counts: v.timeline.counts_after_changes(),
            changes: v
                .timeline
                .steps
                .iter()
                .filter(|s| s.delta != 0)
                .map(|s| {
                    format!(
                        "{:+} {}{}",
                        s.delta,
                        s.holder.unwrap_or(Holder::Unattributed),
                        if s.inferred() { " (inferred)" } else { "" }
                    )
                })
                .collect(),
            destroys: v
                .timeline
                .steps
                .iter()
                .filter(|s| s.kind.is_destroy())
                .count(),
            creator_pid: v.creator.as_ref().map(|c| c.tgid),
            findings: Vec::new(),
        }
    }
}

/// Kinds of the findings naming `addr` in `role`, deduplicated, in order.
/// The findings naming the object at `addr` in `role`.
fn findings_naming<'a, 'f>(
    findings: &'a [&'f Finding],
    role: ObjectRole,
    addr: u64,
) -> impl Iterator<Item = &'f Finding> + 'a {
    findings
        .iter()
        .copied()
        .filter(move |f| f.object(role) == Some(addr))
}

/// Their kinds, each once, in order.
fn kinds<'f>(findings: impl Iterator<Item = &'f Finding>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for f in findings {
        let k = f.kind.id().to_owned();
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// The report's findings, and the clock pair that puts them on the wall clock
/// in JSON (`first_wall`, `last_wall`). Read and filtered as the list.
pub struct Findings<'a> {
    list: Vec<&'a Finding>,
    clock: Option<Clock>,
}

impl<'a> std::ops::Deref for Findings<'a> {
    type Target = Vec<&'a Finding>;
    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl std::ops::DerefMut for Findings<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.list
    }
}

impl Serialize for Findings<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.list
                .iter()
                .map(|f| FindingJson::of(f).at(self.clock.as_ref())),
        )
    }
}

/// A stack as a report shows it: frames symbolised on the recording host.
#[derive(Serialize)]
pub struct StackView {
    pub ips: Vec<String>,
    pub symbols: Vec<String>,
}

#[derive(Serialize)]
pub struct DeviceSummary {
    #[serde(with = "crate::hexaddr::one")]
    pub addr: u64,
    pub generation: u32,
    /// open_count after each step that changed it, oldest first (kept steps).
    pub open_counts: Vec<i32>,
    pub closed: bool,
    /// The last open_count read from the kernel.
    pub open_count: Option<i32>,
    /// The VM whose reference the device's VFIO core holds (6.3+), if any.
    #[serde(with = "crate::hexaddr::opt")]
    pub kvm: Option<u64>,
    /// Kinds of the findings that name this device.
    pub findings: Vec<String>,
}

impl DeviceSummary {
    pub fn of(d: &crate::engine::Device) -> Self {
        DeviceSummary {
            addr: d.addr,
            generation: d.generation,
            open_counts: d.timeline.counts_after_changes(),
            closed: d.closed_ns.is_some(),
            open_count: d.open_count,
            kvm: d.kvm_ref,
            findings: Vec::new(),
        }
    }
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub header: Option<&'a Header>,
    pub events: u64,
    pub undecodable: u64,
    pub lost: BTreeMap<String, u64>,
    pub damage: Option<String>,
    /// Stacks, exits and watched locks the kernel side gave up on.
    pub drops: Drops,
    pub anomalies: Anomalies,
    pub vms: Vec<VmSummary>,
    pub devices: usize,
    /// Every device generation seen (open and closed), oldest first.
    pub device_list: Vec<DeviceSummary>,
    pub lock_graph: Vec<String>,
    pub findings: Findings<'a>,
    /// The stacks the findings cite, by id; absent ids were not recorded.
    pub stacks: BTreeMap<u32, StackView>,
    /// What `--vm` / `--pid` kept, when given.
    pub selection: Option<String>,
    /// Times kvscope saw nothing (watched modules changed, attached again).
    pub gaps: Vec<Gap>,
}

impl<'a> Report<'a> {
    pub fn new(
        engine: &'a Engine,
        header: Option<&'a Header>,
        undecodable: u64,
        lost: BTreeMap<String, u64>,
        damage: Option<&Damage>,
        stacks: &BTreeMap<u32, Stack>,
    ) -> Self {
        let findings: Vec<&Finding> = engine.findings().iter().collect();
        let mut vms: Vec<VmSummary> = engine
            .dead_vms()
            .chain(engine.live_vms())
            .map(VmSummary::of)
            .collect();
        vms.sort_by_key(|v| (v.addr, v.generation));
        for v in &mut vms {
            // A finding about one generation is not the next one's.
            v.findings = kinds(
                findings_naming(&findings, ObjectRole::Kvm, v.addr)
                    .filter(|f| f.evidence.vm().is_none_or(|r| r.generation == v.generation)),
            );
        }
        let mut device_list: Vec<DeviceSummary> =
            engine.device_generations().map(DeviceSummary::of).collect();
        for d in &mut device_list {
            d.findings = kinds(findings_naming(&findings, ObjectRole::Device, d.addr));
        }
        let stacks = findings
            .iter()
            .flat_map(|f| &f.stacks)
            .filter_map(|id| stacks.get(id))
            .map(|s| {
                let view = StackView {
                    ips: s.ips.iter().map(|a| crate::hexaddr::format(*a)).collect(),
                    symbols: s.symbols.clone(),
                };
                (s.id, view)
            })
            .collect();
        Report {
            header,
            events: engine.events,
            undecodable,
            lost,
            damage: damage.map(|d| d.to_string()),
            drops: Drops::default(),
            anomalies: engine.anomalies.clone(),
            vms,
            devices: engine.devices().count(),
            device_list,
            lock_graph: engine
                .lock_graph()
                .iter()
                .map(|((a, b), seen)| match seen.how {
                    EdgeHow::Observed => format!("{} -> {}", a.name(), b.name()),
                    how => format!("{} -> {} ({})", a.name(), b.name(), how.describe()),
                })
                .collect(),
            findings: Findings {
                list: findings,
                clock: header.and_then(Clock::of),
            },
            stacks,
            selection: None,
            gaps: Vec::new(),
        }
    }

    pub fn text(&self, stacks: &BTreeMap<u32, Stack>) -> String {
        let mut o = String::new();
        if let Some(h) = self.header {
            let _ = writeln!(
                o,
                "recording of {} on {} (kvscope {}, {}; {})",
                h.kernel_release, h.hostname, h.kvscope_version, h.tier, h.variant
            );
            let _ = writeln!(o, "delivery      {}", h.delivery.summary());
        }
        if let Some(sel) = &self.selection {
            let _ = writeln!(o, "selection     {sel} (counts are over every event)");
        }
        let _ = writeln!(o, "events        {}", self.events);
        if self.undecodable > 0 {
            let _ = writeln!(o, "undecodable   {}", self.undecodable);
        }
        let lost: u64 = self.lost.values().sum();
        if lost > 0 {
            let _ = writeln!(
                o,
                "LOST          {lost} events in the kernel (ring buffer full): conclusions may miss them"
            );
        }
        if !self.drops.is_empty() {
            let _ = writeln!(o, "DROPPED       {}", self.drops.summary());
        }
        if let Some(d) = &self.damage {
            let _ = writeln!(o, "DAMAGED FILE  {d}");
        }
        let start = self.header.map_or(0, |h| h.mono_start_ns);
        for g in &self.gaps {
            let _ = writeln!(
                o,
                "BLIND         {}; what lived across it is marked unknown",
                g.summary(start)
            );
        }
        let a = &self.anomalies;
        let by_class = super::by_class;
        if a.out_of_order + a.unseen_creation + a.unmatched_release > 0 {
            let _ = writeln!(
                o,
                "anomalies     {} out of order, {} objects first seen mid-life, {} unmatched lock releases{}",
                a.out_of_order,
                a.unseen_creation,
                a.unmatched_release,
                super::unmatched_releases(a)
            );
        }
        if !a.taken_before_watched.is_empty() {
            let _ = writeln!(
                o,
                "note          locks released that were taken before kvscope watched them ({}): not an anomaly, see README \"Reading a timeline\"",
                by_class(&a.taken_before_watched)
            );
        }
        let destroyed = self.vms.iter().filter(|v| v.destroyed).count();
        let _ = writeln!(
            o,
            "VMs           {} seen, {} destroyed; VFIO devices {}",
            self.vms.len(),
            destroyed,
            if self.selection.is_some() {
                self.device_list.len()
            } else {
                self.devices
            }
        );
        self.objects_text(&mut o);
        if !self.lock_graph.is_empty() {
            let _ = writeln!(o, "lock order    {}", self.lock_graph.join(", "));
        }
        let _ = writeln!(o, "findings      {}", self.findings.len());
        for f in self.findings.iter() {
            let _ = writeln!(o);
            o.push_str(&finding_text_with(
                f,
                stacks,
                self.header.and_then(Clock::of).as_ref(),
            ));
        }
        o
    }
}

impl Report<'_> {
    /// Keeps only the VM at `vm`, or the VMs created by `pid`, the devices
    /// holding them or named with them in a finding, and the findings that
    /// name them. The engine saw everything: counts stay the kernel's.
    pub fn select(&mut self, vm: Option<&VmSel>, pid: Option<u32>) {
        let sel = match (vm, pid) {
            (Some(v), _) => v.clone(),
            (None, Some(p)) => VmSel::Pid(p),
            (None, None) => return,
        };
        self.keep(
            |v| match &sel {
                VmSel::Addr(a) => v.addr == *a,
                VmSel::Pid(p) => v.creator_pid == Some(*p),
                VmSel::Name(_) => v.identity.as_ref().is_some_and(|i| sel.names(i)),
            },
            |_| false,
            sel.to_string(),
        );
    }

    /// Keeps what a process tree (`kvscope run`'s command) did: the VMs its
    /// processes created and the findings that name them or one of its
    /// threads.
    pub fn select_tree(&mut self, tgids: &std::collections::HashSet<u32>, label: String) {
        self.keep(
            |v| v.creator_pid.is_some_and(|p| tgids.contains(&p)),
            |f| f.threads.iter().any(|t| tgids.contains(&t.tgid)),
            label,
        );
    }

    /// Keeps the VMs `vm` accepts, the findings naming them or that
    /// `finding` accepts, and the devices and stacks these name.
    fn keep(
        &mut self,
        vm: impl Fn(&VmSummary) -> bool,
        finding: impl Fn(&Finding) -> bool,
        label: String,
    ) {
        self.vms.retain(|v| vm(v));
        let kvms: Vec<u64> = self.vms.iter().map(|v| v.addr).collect();
        self.findings.retain(|f| {
            finding(f)
                || f.objects
                    .iter()
                    .any(|(r, a)| *r == ObjectRole::Kvm && kvms.contains(a))
        });
        let findings = &self.findings;
        self.device_list.retain(|d| {
            d.kvm.is_some_and(|k| kvms.contains(&k))
                || findings
                    .iter()
                    .any(|f| f.object(ObjectRole::Device) == Some(d.addr))
        });
        let cited: Vec<u32> = self
            .findings
            .iter()
            .flat_map(|f| f.stacks.clone())
            .collect();
        self.stacks.retain(|id, _| cited.contains(id));
        self.selection = Some(label);
    }

    /// One line per VM and device generation: the address `timeline` takes,
    /// the final count, and the findings that name it.
    fn objects_text(&self, o: &mut String) {
        let named = |f: &[String]| {
            if f.is_empty() {
                String::new()
            } else {
                format!("; findings: {}", f.join(", "))
            }
        };
        for v in &self.vms {
            let users = v.users.map_or("unknown".to_owned(), |u| u.to_string());
            let state = match v.unknown_because {
                Some("file-shared") => {
                    "state unknown (its file is held by an fd kvscope does not follow: a dup, a fork's copy or a passed fd)"
                }
                Some(_) => "state unknown (it lived through a blind gap)",
                None => v.state,
            };
            let who = v
                .identity
                .as_ref()
                .map_or(String::new(), |i| format!(" {}", i.describe()));
            let _ = writeln!(
                o,
                "  VM {:#x} gen {}{who}: users_count {users}, {state}, {} steps{}",
                v.addr,
                v.generation,
                v.steps,
                named(&v.findings)
            );
        }
        for d in &self.device_list {
            let open = d.open_count.map_or("unknown".to_owned(), |c| c.to_string());
            let kvm = d
                .kvm
                .map_or(String::new(), |k| format!(", holds VM {k:#x}"));
            let state = if d.closed { "closed" } else { "open" };
            let _ = writeln!(
                o,
                "  VFIO device {:#x} gen {}: open_count {open}, {state}{kvm}{}",
                d.addr,
                d.generation,
                named(&d.findings)
            );
        }
    }
}

/// One object's history, readably.
pub fn timeline_text(
    title: &str,
    generation: u32,
    t: &crate::engine::timeline::Timeline,
    stacks: &BTreeMap<u32, Stack>,
    with_stacks: bool,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{title} (generation {generation})");
    if t.folded > 0 {
        let _ = writeln!(
            o,
            "  ... {} older steps folded (net {:+})",
            t.folded, t.folded_delta
        );
    }
    for (s, count) in t.counted() {
        let _ = writeln!(o, "{}", step_line(s, count));
        if with_stacks
            && let Some(id) = s.stack_id
            && let Some(st) = stacks.get(&id)
        {
            if s.at_return
                && let Some(h) = &s.hook
            {
                let _ = writeln!(
                    o,
                    "        ({}, returned: seen at its return, its frame is gone)",
                    h.symbol()
                );
            }
            for sym in &st.symbols {
                let _ = writeln!(o, "        {sym}");
            }
        }
    }
    o
}
