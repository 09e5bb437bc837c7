//! Pictures of refcount timelines: the Chrome trace-event / Perfetto JSON export
//! and the self-contained HTML report (inline SVG, no scripts, no network).
use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{Value, json};

use crate::engine::{Engine, Finding, Vm};

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
                    "args": { "users": c }
                }));
            }
            ev.push(json!({
                "ph": "i", "s": "t", "name": s.what, "pid": pid, "tid": s.pid, "ts": ts,
                "args": {
                    "delta": s.delta, "holder": s.holder, "hook": s.hook,
                    "inferred": s.inferred, "comm": s.comm,
                }
            }));
        }
    }
    for f in engine.findings() {
        ev.push(json!({
            "ph": "i", "s": "g", "name": format!("{}: {}", f.kind.id(), f.summary),
            "pid": 0, "ts": f.first_ns as f64 / 1000.0,
            "args": { "severity": f.severity.name(), "count": f.count }
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 900.0;
const LANE_H: f64 = 16.0;
const PLOT_H: f64 = 120.0;
const LEFT: f64 = 150.0;

/// One VM: lanes for holders (a bar while a holder has a reference), the count
/// as a step line, inferred steps dashed, findings as red marks.
fn vm_svg(vm: &Vm, findings: &[&Finding]) -> String {
    let steps = &vm.timeline.steps;
    let (t0, t1) = match (steps.front(), steps.back()) {
        (Some(a), Some(b)) => (a.ts_ns, b.ts_ns.max(a.ts_ns + 1)),
        _ => return String::new(),
    };
    let x = |t: u64| LEFT + (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64 * (W - LEFT - 20.0);
    // Holder lanes from attributed steps.
    let mut lanes: BTreeMap<String, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for s in steps {
        if let Some(h) = &s.holder {
            let l = lanes.entry(h.clone()).or_default();
            if s.delta > 0 {
                l.push((s.ts_ns, None));
            } else if s.delta < 0
                && let Some(open) = l.iter_mut().rev().find(|(_, end)| end.is_none())
            {
                open.1 = Some(s.ts_ns);
            }
        }
    }
    let max_c = steps
        .iter()
        .filter_map(|s| s.count_after)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let lanes_h = lanes.len() as f64 * LANE_H;
    let h = lanes_h + PLOT_H + 40.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="monospace" font-size="11">"#
    );
    for (i, (name, spans)) in lanes.iter().enumerate() {
        let y = 10.0 + i as f64 * LANE_H;
        let _ = write!(o, r#"<text x="4" y="{}">{}</text>"#, y + 11.0, esc(name));
        for (a, b) in spans {
            let xa = x(*a);
            let xb = b.map(&x).unwrap_or(W - 20.0);
            let _ = write!(
                o,
                r##"<rect x="{xa:.1}" y="{}" width="{:.1}" height="10" fill="#6a9fd8"><title>{} holds a reference</title></rect>"##,
                y + 2.0,
                (xb - xa).max(2.0),
                esc(name)
            );
        }
    }
    let base = 10.0 + lanes_h + PLOT_H;
    let y = |c: i32| base - (c.max(0) as f64 / max_c) * (PLOT_H - 10.0);
    let _ = write!(
        o,
        r##"<text x="4" y="{:.1}">users_count</text><line x1="{LEFT}" y1="{base}" x2="{}" y2="{base}" stroke="#999"/>"##,
        base - PLOT_H / 2.0,
        W - 20.0
    );
    for c in 0..=max_c as i32 {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#777">{c}</text>"##,
            LEFT - 6.0,
            y(c) + 4.0
        );
    }
    let mut prev: Option<(f64, f64)> = None;
    for s in steps {
        let Some(c) = s.count_after else { continue };
        let (nx, ny) = (x(s.ts_ns), y(c));
        if let Some((px, py)) = prev {
            let dash = if s.inferred {
                r#" stroke-dasharray="4 3""#
            } else {
                ""
            };
            let _ = write!(
                o,
                r##"<path d="M{px:.1},{py:.1} H{nx:.1} V{ny:.1}" fill="none" stroke="#222" stroke-width="1.5"{dash}/>"##
            );
        }
        let colour = if s.inferred { "#e0a000" } else { "#222" };
        let _ = write!(
            o,
            r#"<circle cx="{nx:.1}" cy="{ny:.1}" r="2.5" fill="{colour}"><title>{} {} -> {c}{}</title></circle>"#,
            crate::render::ts(s.ts_ns),
            esc(&s.what),
            s.holder
                .as_deref()
                .map(|h| format!(" ({})", esc(h)))
                .unwrap_or_default()
        );
        prev = Some((nx, ny));
    }
    for f in findings {
        let fx = x(f.first_ns.clamp(t0, t1));
        let _ = write!(
            o,
            r##"<path d="M{fx:.1},{:.1} l-5,-9 h10 z" fill="#d03030"><title>{}: {}</title></path>"##,
            base + 12.0,
            f.kind.id(),
            esc(&f.summary)
        );
    }
    let _ = write!(
        o,
        r#"<text x="{LEFT}" y="{:.1}">{}</text><text x="{}" y="{:.1}" text-anchor="end">+{:.3} ms</text></svg>"#,
        h - 4.0,
        crate::render::ts(t0),
        W - 20.0,
        h - 4.0,
        (t1 - t0) as f64 / 1e6
    );
    o
}

pub fn html(engine: &Engine, title: &str, damage: Option<&str>) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kvscope: {t}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:980px}} pre{{background:#f4f4f4;padding:.6em;overflow-x:auto}}\
         .critical,.error{{color:#b00000}} .damage{{background:#fee;border:2px solid #b00000;padding:.6em}} .warning{{color:#a06000}} h2{{margin-top:1.6em}}</style></head><body>\
         <h1>kvscope report</h1><p>{t}</p>",
        t = esc(title)
    );
    if let Some(d) = damage {
        let _ = write!(
            o,
            "<div class=\"damage\" role=\"alert\"><b>Damaged recording:</b> {}. \
             Everything below covers only the events before the damage.</div>",
            esc(d)
        );
    }
    let findings = engine.findings();
    let _ = write!(o, "<h2>Findings ({})</h2>", findings.len());
    if findings.is_empty() {
        o.push_str("<p>None.</p>");
    }
    for f in findings {
        let _ = write!(
            o,
            "<h3 class=\"{}\">{} [{}] {}</h3><pre>{}</pre>",
            f.severity.name(),
            f.kind.id(),
            f.severity.name(),
            esc(&f.summary),
            esc(&f.detail.join("\n"))
        );
    }
    let all = vms(engine);
    let _ = write!(
        o,
        "<h2>VMs ({})</h2><p>Lanes: who holds a reference. Line: users_count as read from the kernel; \
         dashed and amber: changes no observed event explains (inferred). Red marks: findings.</p>",
        all.len()
    );
    for vm in all.iter().take(200) {
        let fs: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.object("kvm") == Some(vm.addr))
            .collect();
        let _ = write!(
            o,
            "<h3>VM {:#x} (generation {}){}</h3>{}",
            vm.addr,
            vm.generation,
            if vm.is_destroyed() {
                ""
            } else {
                ", not destroyed"
            },
            vm_svg(vm, &fs)
        );
    }
    if all.len() > 200 {
        let _ = write!(
            o,
            "<p>{} more VMs not drawn; use kvscope timeline.</p>",
            all.len() - 200
        );
    }
    o.push_str("</body></html>\n");
    o
}
