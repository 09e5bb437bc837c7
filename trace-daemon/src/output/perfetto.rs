//! The Chrome trace-event / Perfetto JSON export of refcount timelines (the
//! HTML report is in `html.rs`).
use serde_json::{Value, json};

use crate::engine::{Engine, Vm};

fn vms(engine: &Engine) -> Vec<&Vm> {
    let mut v: Vec<&Vm> = engine.dead_vms().chain(engine.live_vms()).collect();
    v.sort_by_key(|x| (x.first_ns, x.addr, x.generation));
    v
}

/// Chrome trace-event JSON (opens in Perfetto and chrome://tracing): one track
/// group per VM with its users_count as a counter, each step as an instant
/// event, and findings as global instants.
/// `damage`: the recording's damage, shown as a marker and in the metadata.
pub fn perfetto(engine: &Engine, damage: Option<&str>) -> Value {
    let mut ev = Vec::new();
    for (i, vm) in vms(engine).iter().enumerate() {
        let pid = i + 1;
        ev.push(json!({
            "ph": "M", "name": "process_name", "pid": pid,
            "args": { "name": format!("VM {:#x} gen {}", vm.addr, vm.generation) }
        }));
        for s in &vm.timeline.steps {
            let ts = s.ts_ns as f64 / 1000.0;
            if let Some(c) = s.count_after {
                ev.push(json!({
                    "ph": "C", "name": "users_count", "pid": pid, "ts": ts,
                    "args": { "users_count": c }
                }));
            }
            ev.push(json!({
                "ph": "i", "s": "t", "name": s.kind.name(), "pid": pid, "tid": s.pid, "ts": ts,
                "args": {
                    "delta": s.delta, "holder": s.holder, "hook": s.hook.map(|h| h.symbol()),
                    "inferred": s.inferred(), "comm": s.comm,
                }
            }));
        }
    }
    for f in engine.findings() {
        ev.push(json!({
            "ph": "i", "s": "g", "name": format!("{}: {}", f.kind.id(), crate::output::finding_text::summary(f)),
            "pid": 0, "ts": f.first_ns as f64 / 1000.0,
            "args": { "severity": f.severity().name(), "count": f.count }
        }));
    }
    let mut doc = json!({ "traceEvents": ev, "displayTimeUnit": "ms" });
    if let Some(d) = damage {
        doc["metadata"] = json!({ "kvscope-damage": d });
        let last = engine.last_ts_ns() as f64 / 1000.0;
        if let Some(events) = doc["traceEvents"].as_array_mut() {
            events.push(json!({
                "ph": "i", "s": "g", "name": format!("DAMAGED RECORDING: {d}"),
                "pid": 0, "ts": last
            }));
        }
    }
    doc
}
