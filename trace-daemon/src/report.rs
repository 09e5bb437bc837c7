//! Rendering findings and whole-run summaries (text and JSON). Pure functions
//! of engine state and recording metadata.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    engine::{Anomalies, Engine, Finding, Vm, step_line},
    recording::{Damage, Header, Stack},
    render,
};

pub fn finding_text(f: &Finding) -> String {
    finding_text_with(f, &BTreeMap::new())
}

/// A finding as an engineer reads it, with symbolised stacks when known.
pub fn finding_text_with(f: &Finding, stacks: &BTreeMap<u32, Stack>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "!! {} [{}] {}",
        f.kind.id(),
        f.severity.name(),
        f.summary
    );
    if f.count > 1 {
        let _ = writeln!(
            o,
            "   seen {} times, first {} last {}",
            f.count,
            render::ts(f.first_ns),
            render::ts(f.last_ns)
        );
    } else {
        let _ = writeln!(o, "   at {}", render::ts(f.first_ns));
    }
    for t in &f.threads {
        let _ = writeln!(o, "   thread {}/{} (tgid {})", t.comm, t.pid, t.tgid);
    }
    for d in &f.detail {
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
    pub addr: String,
    pub generation: u32,
    pub destroyed: bool,
    pub users: Option<i32>,
    pub steps: usize,
    pub inferred_steps: usize,
    pub holders: Vec<(String, i32)>,
    /// users_count after each step that changed it, oldest first (kept steps).
    pub counts: Vec<i32>,
    /// Each change as "+1 HOLDER" / "-1 HOLDER" ("unattributed" when no hook
    /// named it; "(inferred)" when no probe saw it), oldest first.
    pub changes: Vec<String>,
    pub destroys: usize,
}

impl VmSummary {
    pub fn of(v: &Vm) -> Self {
        VmSummary {
            addr: format!("{:#x}", v.addr),
            generation: v.generation,
            destroyed: v.is_destroyed(),
            users: v.users,
            steps: v.timeline.len() + v.timeline.folded as usize,
            inferred_steps: v.timeline.steps.iter().filter(|s| s.inferred).count(),
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
                        s.holder.as_deref().unwrap_or("unattributed"),
                        if s.inferred { " (inferred)" } else { "" }
                    )
                })
                .collect(),
            destroys: v
                .timeline
                .steps
                .iter()
                .filter(|s| s.what == "destroyed" || s.what.starts_with("inferred-destroy"))
                .count(),
        }
    }
}

#[derive(Serialize)]
pub struct DeviceSummary {
    pub addr: String,
    pub generation: u32,
    /// open_count after each step that changed it, oldest first (kept steps).
    pub open_counts: Vec<i32>,
    pub closed: bool,
}

impl DeviceSummary {
    pub fn of(d: &crate::engine::Device) -> Self {
        DeviceSummary {
            addr: format!("{:#x}", d.addr),
            generation: d.generation,
            open_counts: d.timeline.counts_after_changes(),
            closed: d.closed_ns.is_some(),
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
    pub anomalies: Anomalies,
    pub vms: Vec<VmSummary>,
    pub devices: usize,
    /// Every device generation seen (open and closed), oldest first.
    pub device_list: Vec<DeviceSummary>,
    pub lock_graph: Vec<String>,
    pub findings: &'a [Finding],
}

impl<'a> Report<'a> {
    pub fn new(
        engine: &'a Engine,
        header: Option<&'a Header>,
        undecodable: u64,
        lost: BTreeMap<String, u64>,
        damage: Option<&Damage>,
    ) -> Self {
        let mut vms: Vec<VmSummary> = engine
            .dead_vms()
            .chain(engine.live_vms())
            .map(VmSummary::of)
            .collect();
        vms.sort_by(|a, b| (&a.addr, a.generation).cmp(&(&b.addr, b.generation)));
        Report {
            header,
            events: engine.events,
            undecodable,
            lost,
            damage: damage.map(|d| d.to_string()),
            anomalies: engine.anomalies.clone(),
            vms,
            devices: engine.devices().count(),
            device_list: engine.device_generations().map(DeviceSummary::of).collect(),
            lock_graph: engine
                .lock_graph()
                .keys()
                .map(|(a, b)| format!("{} -> {}", a.name(), b.name()))
                .collect(),
            findings: engine.findings(),
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
        if let Some(d) = &self.damage {
            let _ = writeln!(o, "DAMAGED FILE  {d}");
        }
        let a = &self.anomalies;
        if a.out_of_order + a.unseen_creation + a.unmatched_release > 0 {
            let _ = writeln!(
                o,
                "anomalies     {} out of order, {} objects first seen mid-life, {} unmatched lock releases",
                a.out_of_order, a.unseen_creation, a.unmatched_release
            );
        }
        let destroyed = self.vms.iter().filter(|v| v.destroyed).count();
        let _ = writeln!(
            o,
            "VMs           {} seen, {} destroyed; VFIO devices {}",
            self.vms.len(),
            destroyed,
            self.devices
        );
        if !self.lock_graph.is_empty() {
            let _ = writeln!(o, "lock order    {}", self.lock_graph.join(", "));
        }
        let _ = writeln!(o, "findings      {}", self.findings.len());
        for f in self.findings {
            let _ = writeln!(o);
            o.push_str(&finding_text_with(f, stacks));
        }
        o
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
    for s in &t.steps {
        let _ = writeln!(o, "{}", step_line(s));
        if with_stacks
            && let Some(id) = s.stack_id
            && let Some(st) = stacks.get(&id)
        {
            for sym in &st.symbols {
                let _ = writeln!(o, "        {sym}");
            }
        }
    }
    o
}
