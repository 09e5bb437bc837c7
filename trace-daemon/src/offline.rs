//! Offline analysis of a recording: `replay`, `timeline`, `report`. The same
//! engine as live, fed from the file.
use std::path::Path;

use anyhow::bail;

use crate::{
    engine::{self, Engine},
    recording::{self, Loaded},
    report::{self, Report},
};

pub fn analyse(path: &Path, cfg: engine::Config) -> anyhow::Result<(Loaded, Engine)> {
    let loaded = recording::load(path)?;
    let mut cfg = cfg;
    cfg.destroy_observable = loaded.header.destroy_observable;
    cfg.release_closes = loaded.header.release_closes;
    let mut e = Engine::new(cfg);
    let mut last = 0;
    for ev in &loaded.events {
        e.ingest(ev);
        last = last.max(ev.ts_ns);
        // Thresholds are checked as the recorded time passes.
        e.tick(last);
    }
    Ok((loaded, e))
}

pub fn report(path: &Path, cfg: engine::Config, format: &str) -> anyhow::Result<String> {
    let (l, e) = analyse(path, cfg)?;
    let r = Report::new(
        &e,
        Some(&l.header),
        l.undecodable,
        l.lost.clone(),
        l.damage.as_ref(),
    );
    Ok(match format {
        "text" => r.text(&l.stacks),
        "json" => serde_json::to_string_pretty(&r)? + "\n",
        "html" => crate::visual::html(
            &e,
            &format!(
                "{} on {} ({}), {} events",
                l.header.kernel_release, l.header.hostname, l.header.tier, e.events
            ),
        ),
        "perfetto" => serde_json::to_string(&crate::visual::perfetto(&e))? + "\n",
        f => bail!("unknown report format {f:?}: use text, json, html or perfetto"),
    })
}

pub enum Object {
    Vm(u64),
    Device(u64),
}

pub fn timeline(
    path: &Path,
    cfg: engine::Config,
    obj: Object,
    stacks: bool,
) -> anyhow::Result<String> {
    let (l, e) = analyse(path, cfg)?;
    let mut out = render_timeline(&e, &l.stacks, obj, stacks, &path.display().to_string())?;
    if let Some(d) = &l.damage {
        out += &format!("note: {d}\n");
    }
    Ok(out)
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
    // (title, generation, timeline) of every generation of the object, and the
    // addresses seen, for the "not found" message.
    let (what, addr, entries, known) = match obj {
        Object::Vm(a) => (
            "VM",
            a,
            e.vm_history(a)
                .into_iter()
                .map(|v| (v.generation, &v.timeline))
                .collect::<Vec<_>>(),
            e.dead_vms()
                .chain(e.live_vms())
                .map(|v| format!("{:#x}", v.addr))
                .collect::<Vec<_>>(),
        ),
        Object::Device(a) => (
            "VFIO device",
            a,
            e.device_history(a)
                .into_iter()
                .map(|d| (d.generation, &d.timeline))
                .collect(),
            e.devices().map(|d| format!("{:#x}", d.addr)).collect(),
        ),
    };
    if entries.is_empty() {
        bail!(
            "no {what} {addr:#x} in {source}; {what}s seen: {}",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    let mut out = String::new();
    for (generation, timeline) in entries {
        out += &report::timeline_text(
            &format!("{what} {addr:#x}"),
            generation,
            timeline,
            stack_map,
            stacks,
        );
    }
    Ok(out)
}

/// `timeline --live`: attach, follow until Ctrl-C / SIGTERM, then print.
pub async fn timeline_live(
    obj: Object,
    stacks: bool,
    load: crate::loader::LoadOptions,
) -> anyhow::Result<String> {
    use crate::live::{self, Session, Sink};
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
    drop(session);
    render_timeline(&sink.engine, &sink.stacks, obj, stacks, "the live stream")
}
