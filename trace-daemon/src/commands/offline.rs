//! Offline analysis of a recording: `replay`, `timeline`, `report`. The same
//! engine as live, fed from the file.
use std::path::Path;

use anyhow::bail;

use crate::{
    commands::cli::{EventsArgs, OfflineArgs},
    engine::{self, Engine},
    event::Event,
    output::event_line as render,
    output::report::{self, Report},
    recording::{self, Loaded},
};

pub fn analyse(path: &Path, cfg: engine::Config) -> anyhow::Result<(Loaded, Engine)> {
    let loaded = recording::load(path)?;
    let mut cfg = cfg;
    cfg.destroy_observable = loaded.header.destroy_observable;
    cfg.release_closes = loaded.header.release_closes;
    cfg.table_edges = loaded.header.lock_watch == "lean";
    cfg.set_kvm_takes_group_lock = loaded.header.set_kvm_takes_group_lock;
    let mut e = Engine::new(cfg);
    let mut last = 0;
    let mut gaps = loaded.gaps.iter().peekable();
    let mut gap_ends = loaded.gaps.iter().peekable();
    let mut names = loaded.identities.iter().peekable();
    for ev in &loaded.events {
        // What lived across a gap is no longer known (engine/blind.rs): told
        // at its start, and again at its end for what the session that had
        // not yet seen the change made inside it (live tells it then too).
        while let Some(g) = gaps.next_if(|g| g.from_ns <= ev.ts_ns) {
            e.blind(g.from_ns, g.to_ns);
        }
        while let Some(g) = gap_ends.next_if(|g| g.to_ns < ev.ts_ns) {
            e.blind(g.from_ns, g.to_ns);
        }
        e.ingest(ev);
        // Named right after its creation, as live: findings carry the name.
        while let Some(i) = names.next_if(|i| i.created_ns <= ev.ts_ns) {
            e.identify(i.kvm, i.created_ns, i.identity.clone());
        }
        last = last.max(ev.ts_ns);
        // Thresholds are checked as the recorded time passes.
        e.tick(last);
    }
    for g in gaps.chain(gap_ends) {
        e.blind(g.from_ns, g.to_ns);
    }
    for i in names {
        e.identify(i.kvm, i.created_ns, i.identity.clone());
    }
    Ok((loaded, e))
}

/// The report of everything a recording holds (no selection).
pub fn full_report<'a>(l: &'a Loaded, e: &'a Engine) -> Report<'a> {
    let mut r = Report::new(
        e,
        Some(&l.header),
        l.undecodable,
        l.lost.clone(),
        l.damage.as_ref(),
        &l.stacks,
    );
    r.drops = l.drops.clone();
    r.gaps = l.gaps.clone();
    r
}

/// What an offline command prints, whether its recording was damaged (the
/// caller exits non-zero then, unless asked to salvage), and the header's
/// warning when delivery was never verified.
pub struct Output {
    pub text: String,
    pub damage: Option<String>,
    pub delivery_warning: Option<String>,
    /// The most severe finding shown (`--fail-on`).
    pub worst: Option<crate::engine::Severity>,
}

pub fn report(path: &Path, opts: &OfflineArgs, format: &str) -> anyhow::Result<Output> {
    let (l, e) = analyse(path, opts.engine())?;
    let mut r = full_report(&l, &e);
    r.select(opts.vm_filter.as_ref(), opts.pid_filter);
    let damage = l.damage.as_ref().map(ToString::to_string);
    let worst = r.findings.iter().map(|f| f.severity()).max();
    let text = match format {
        "text" => r.text(&l.stacks),
        "json" => serde_json::to_string_pretty(&r)? + "\n",
        "html" => crate::output::html::html(
            &e,
            &crate::output::html::Page {
                title: &format!(
                    "{} on {} ({}; {})",
                    l.header.kernel_release, l.header.hostname, l.header.tier, l.header.variant
                ),
                damage: damage.as_deref(),
                stacks: &l.stacks,
                lost: l.lost.values().sum(),
                delivery: Some(&l.header.delivery),
                gaps: &l
                    .gaps
                    .iter()
                    .map(|g| g.summary(l.header.mono_start_ns))
                    .collect::<Vec<_>>(),
                clock: crate::output::wall::Clock::of(&l.header),
            },
        ),
        "perfetto" => {
            serde_json::to_string(&crate::output::perfetto::perfetto(&e, damage.as_deref()))? + "\n"
        }
        f => bail!("unknown report format {f:?}: use text, json, html or perfetto"),
    };
    Ok(Output {
        text,
        damage,
        delivery_warning: l.header.delivery.warning(),
        worst,
    })
}

/// `kvscope events`: the recording's raw events, one line (or JSON object)
/// each, with lost-event counters where they were recorded and the damage at
/// the end. Nothing is analysed.
pub fn events(a: &EventsArgs) -> anyhow::Result<Output> {
    use std::fmt::Write as _;
    let mut r = recording::Reader::open(&a.file)?;
    let mut stacks = std::collections::BTreeMap::new();
    let mut frames = Vec::new();
    while let Some(f) = r.next_frame() {
        if let recording::Frame::Stack(s) = &f {
            stacks.insert(s.id, s.clone());
        }
        frames.push(f);
    }
    let mut o = String::new();
    for f in frames {
        match f {
            recording::Frame::Event(rec) => {
                let ev = match Event::decode(&rec) {
                    Ok(ev) => ev,
                    Err(e) => {
                        if a.json {
                            let j = serde_json::json!({ "kind": "undecodable", "undecodable": e.to_string() });
                            let _ = writeln!(o, "{j}");
                        } else {
                            let _ = writeln!(o, "# undecodable record: {e}");
                        }
                        continue;
                    }
                };
                if a.pid.is_some_and(|p| ev.tgid != p) || a.vm.is_some_and(|v| ev.kvm != Some(v)) {
                    continue;
                }
                if a.json {
                    let _ = writeln!(o, "{}", serde_json::to_string(&ev)?);
                    continue;
                }
                let _ = writeln!(o, "{}", render::line(&ev));
                if a.stacks
                    && let Some(st) = ev.stack_id.and_then(|id| stacks.get(&id))
                {
                    for sym in &st.symbols {
                        let _ = writeln!(o, "    {sym}");
                    }
                }
            }
            recording::Frame::Lost(m) if !a.json => {
                let total: u64 = m.values().sum();
                let _ = writeln!(o, "# {total} events lost in the kernel so far: {m:?}");
            }
            recording::Frame::Lost(m) => {
                let _ = writeln!(
                    o,
                    "{}",
                    serde_json::json!({ "kind": "lost-so-far", "lost_so_far": m })
                );
            }
            recording::Frame::Drops(d) if !a.json => {
                let _ = writeln!(o, "# kernel-side drops so far: {}", d.summary());
            }
            recording::Frame::Drops(d) => {
                let _ = writeln!(
                    o,
                    "{}",
                    serde_json::json!({ "kind": "drops-so-far", "drops_so_far": d })
                );
            }
            recording::Frame::Gap(g) if !a.json => {
                let _ = writeln!(o, "# BLIND {}", g.summary(r.header.mono_start_ns));
            }
            recording::Frame::Gap(g) => {
                let _ = writeln!(o, "{}", serde_json::json!({ "kind": "gap", "gap": g }));
            }
            recording::Frame::Identity(i) if !a.json => {
                let _ = writeln!(o, "# VM {:#x} belongs to {}", i.kvm, i.identity.describe());
            }
            recording::Frame::Identity(i) => {
                let _ = writeln!(
                    o,
                    "{}",
                    serde_json::json!({ "kind": "identity", "identity": i })
                );
            }
            recording::Frame::Stack(_) => {}
        }
    }
    let damage = r.damage.as_ref().map(ToString::to_string);
    if let Some(d) = &damage {
        if a.json {
            let _ = writeln!(
                o,
                "{}",
                serde_json::json!({ "kind": "damage", "damage": d })
            );
        } else {
            let _ = writeln!(o, "# DAMAGED FILE: {d}");
        }
    }
    Ok(Output {
        text: o,
        damage,
        delivery_warning: r.header.delivery.warning(),
        worst: None,
    })
}

pub enum Object {
    /// By address, creator pid or name: every generation selected.
    Vm(crate::vm_sel::VmSel),
    Device(u64),
}

pub fn timeline(
    path: &Path,
    cfg: engine::Config,
    obj: Object,
    stacks: bool,
) -> anyhow::Result<Output> {
    let (l, e) = analyse(path, cfg)?;
    let mut text = render_timeline(&e, &l.stacks, obj, stacks, &path.display().to_string())?;
    let damage = l.damage.as_ref().map(ToString::to_string);
    if let Some(d) = &damage {
        text += &format!("DAMAGED FILE: {d}\n");
    }
    Ok(Output {
        text,
        damage,
        delivery_warning: l.header.delivery.warning(),
        worst: None,
    })
}

/// One object's history from an engine (offline or live). `source` names
/// where the events came from, for the "not found" message.
pub fn render_timeline(
    e: &Engine,
    stack_map: &std::collections::BTreeMap<u32, crate::recording::Stack>,
    obj: Object,
    stacks: bool,
    source: &str,
) -> anyhow::Result<String> {
    // (title, generation, timeline) of every generation selected, and the
    // objects seen, for the "not found" message.
    let (what, entries, known) = match &obj {
        Object::Vm(sel) => {
            let vms: Vec<&crate::engine::Vm> = match sel {
                crate::vm_sel::VmSel::Addr(a) => e.vm_history(*a),
                _ => {
                    let mut v: Vec<&crate::engine::Vm> = e
                        .dead_vms()
                        .chain(e.live_vms())
                        .filter(|v| vm_selected(v, sel))
                        .collect();
                    v.sort_by_key(|v| (v.timeline.steps.front().map(|s| s.ts_ns), v.addr));
                    v
                }
            };
            let mut known: Vec<String> = e
                .dead_vms()
                .chain(e.live_vms())
                .map(|v| match &v.identity {
                    Some(i) => format!("{:#x} ({})", v.addr, i.label()),
                    None => format!("{:#x}", v.addr),
                })
                .collect();
            known.sort();
            known.dedup();
            let entries = vms
                .into_iter()
                .map(|v| {
                    let who = v
                        .identity
                        .as_ref()
                        .map_or(String::new(), |i| format!(" {}", i.label()));
                    (format!("VM {:#x}{who}", v.addr), v.generation, &v.timeline)
                })
                .collect::<Vec<_>>();
            (sel.to_string(), entries, known)
        }
        Object::Device(a) => {
            let mut known: Vec<String> = e.devices().map(|d| format!("{:#x}", d.addr)).collect();
            known.sort();
            known.dedup();
            (
                format!("VFIO device {a:#x}"),
                e.device_history(*a)
                    .into_iter()
                    .map(|d| (format!("VFIO device {a:#x}"), d.generation, &d.timeline))
                    .collect(),
                known,
            )
        }
    };
    if entries.is_empty() {
        bail!(
            "no {what} in {source}; seen: {}",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    let mut out = String::new();
    for (title, generation, timeline) in entries {
        out += &report::timeline_text(&title, generation, timeline, stack_map, stacks);
    }
    Ok(out)
}

/// Whether a VM is the one a pid or name selects (its creator, its identity).
pub fn vm_selected(v: &crate::engine::Vm, sel: &crate::vm_sel::VmSel) -> bool {
    use crate::vm_sel::VmSel;
    match sel {
        VmSel::Addr(a) => v.addr == *a,
        VmSel::Pid(p) => v.creator.as_ref().is_some_and(|c| c.tgid == *p),
        VmSel::Name(_) => v.identity.as_ref().is_some_and(|i| sel.names(i)),
    }
}

/// `timeline --live`: attach, follow until Ctrl-C / SIGTERM, then print.
pub async fn timeline_live(
    obj: Object,
    stacks: bool,
    load: crate::attach::loader::LoadOptions,
) -> anyhow::Result<String> {
    use crate::attach::live::{self, Session, Sink};
    struct Collect {
        engine: Engine,
        stacks: std::collections::BTreeMap<u32, crate::recording::Stack>,
    }
    impl Sink for Collect {
        fn event(
            &mut self,
            s: &Session,
            _r: &trace_common::Event,
            ev: &crate::event::Event,
        ) -> anyhow::Result<()> {
            self.engine.ingest(ev);
            if let Some(id) = ev.stack_id
                && !self.stacks.contains_key(&id)
                && let Some(st) = s.stack(id)
            {
                self.stacks.insert(id, st);
            }
            Ok(())
        }
        fn tick(
            &mut self,
            _s: &Session,
            _l: &[(trace_common::HookId, u64)],
            now: u64,
        ) -> anyhow::Result<()> {
            self.engine.tick(now);
            Ok(())
        }
        /// Names kept: `--vm NAME` selects a VM made after the start.
        fn identified(
            &mut self,
            kvm: u64,
            created_ns: u64,
            id: &crate::identity::Identity,
        ) -> anyhow::Result<()> {
            self.engine.identify(kvm, created_ns, id.clone());
            Ok(())
        }
    }
    let mut signals = live::Signals::install()?;
    let Some(mut session) = live::attach(&load, &mut signals).await? else {
        return Ok(String::new());
    };
    session.announce("following until Ctrl-C, then printing the timeline");
    let mut sink = Collect {
        engine: Engine::new(session.engine_config(engine::Config::default())),
        stacks: Default::default(),
    };
    live::run(
        &mut session,
        &mut sink,
        std::time::Duration::from_secs(1),
        &mut signals,
    )
    .await?;
    session.close_for_exit();
    render_timeline(&sink.engine, &sink.stacks, obj, stacks, "the live stream")
}
