//! The HTML report: one self-contained page (inline SVG and CSS, no scripts,
//! nothing fetched). One time axis shared by every VM and device, labels in a
//! column of their own so lanes never cover them, every step visible in a
//! table with its count, findings linked to the object, step and stacks they
//! cite, the lock-order graph, anomalies, and a banner when the recording is
//! damaged. A pure function of engine state and recording metadata. The
//! pictures (the shared-axis chart, the lock-order graph) are in `chart.rs`.
mod chart;

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    engine::{Device, Engine, Finding, ObjectRole, Vm, timeline::Timeline},
    output::{event_line as render, finding_text},
    recording::{Delivery, Stack},
};

/// What the page shows besides the engine's state.
pub struct Page<'a> {
    pub title: &'a str,
    pub damage: Option<&'a str>,
    pub stacks: &'a BTreeMap<u32, Stack>,
    pub lost: u64,
    pub delivery: Option<&'a Delivery>,
    /// Blind gaps, each said in one line.
    pub gaps: &'a [String],
    /// Monotonic to wall-clock time, when the recording has the pair.
    pub clock: Option<crate::output::wall::Clock>,
}

/// Objects drawn on the shared axis, and given step tables.
const MAX_DRAWN: usize = 60;
const MAX_TABLES: usize = 200;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A VM or a device generation, as the page draws it.
struct Obj<'a> {
    anchor: String,
    label: String,
    count_name: &'static str,
    timeline: &'a Timeline,
    /// Holder lanes (VM) or the open lane (device): name -> spans.
    lanes: BTreeMap<String, Vec<(u64, Option<u64>)>>,
    addr: u64,
    role: ObjectRole,
}

/// How each kind of object is named on the page.
struct Kind {
    anchor: &'static str,
    label: &'static str,
    count_name: &'static str,
    role: ObjectRole,
}

const VM: Kind = Kind {
    anchor: "vm",
    label: "VM",
    count_name: "users_count",
    role: ObjectRole::Kvm,
};
const DEVICE: Kind = Kind {
    anchor: "dev",
    label: "VFIO device",
    count_name: "open_count",
    role: ObjectRole::Device,
};

impl<'a> Obj<'a> {
    fn new(
        k: &Kind,
        (addr, generation): (u64, u32),
        state: &str,
        timeline: &'a Timeline,
        lanes: BTreeMap<String, Vec<(u64, Option<u64>)>>,
    ) -> Self {
        Obj {
            anchor: format!("{}-{addr:x}-g{generation}", k.anchor),
            label: format!("{} {addr:#x} gen {generation}{state}", k.label),
            count_name: k.count_name,
            timeline,
            lanes,
            addr,
            role: k.role,
        }
    }
}

fn vm_obj(v: &Vm) -> Obj<'_> {
    let mut lanes: BTreeMap<String, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for s in &v.timeline.steps {
        let Some(h) = &s.holder else { continue };
        let l = lanes.entry(h.to_string()).or_default();
        if s.delta > 0 {
            l.push((s.ts_ns, None));
        } else if s.delta < 0
            && let Some(open) = l.iter_mut().rev().find(|(_, end)| end.is_none())
        {
            open.1 = Some(s.ts_ns);
        }
    }
    let live = if v.is_destroyed() { "" } else { ", live" };
    // The operator's name first: the address alone says nothing to them.
    let state = match &v.identity {
        Some(i) => format!(" {}{live}", i.label()),
        None => live.to_owned(),
    };
    Obj::new(&VM, (v.addr, v.generation), &state, &v.timeline, lanes)
}

fn device_obj<'a>(d: &'a Device, engine: &Engine) -> Obj<'a> {
    let mut open: Vec<(u64, Option<u64>)> = Vec::new();
    for s in &d.timeline.steps {
        match s.count_after {
            Some(c) if c > 0 && open.last().is_none_or(|(_, e)| e.is_some()) => {
                open.push((s.ts_ns, None))
            }
            Some(0) => {
                if let Some(o) = open.last_mut().filter(|(_, e)| e.is_none()) {
                    o.1 = Some(s.ts_ns);
                }
            }
            _ => {}
        }
    }
    let mut lanes = BTreeMap::new();
    lanes.insert("open".to_owned(), open);
    let open = if d.closed_ns.is_some() { "" } else { ", open" };
    // Which VM it served, by the operator's name where known.
    let state = match d.last_vm() {
        Some(a) => match engine.vm_label_now(a) {
            Some(name) => format!(" of VM {a:#x} {name}{open}"),
            None => format!(" of VM {a:#x}{open}"),
        },
        None => open.to_owned(),
    };
    Obj::new(&DEVICE, (d.addr, d.generation), &state, &d.timeline, lanes)
}

fn objects(engine: &Engine) -> Vec<Obj<'_>> {
    let mut vms: Vec<&Vm> = engine.dead_vms().chain(engine.live_vms()).collect();
    vms.sort_by_key(|v| (v.first_ns, v.addr, v.generation));
    let mut out: Vec<Obj> = vms.into_iter().map(vm_obj).collect();
    out.extend(engine.device_generations().map(|d| device_obj(d, engine)));
    out.retain(|o| !o.timeline.steps.is_empty());
    out
}

/// The object and step a finding cites: its object (by role) whose steps
/// cover its time, and the last step at or before it.
fn cited_step(objs: &[Obj], f: &Finding) -> Option<(usize, usize)> {
    let (role, addr) = f
        .objects
        .iter()
        .find(|(r, _)| matches!(r, ObjectRole::Kvm | ObjectRole::Device))?;
    let role = *role;
    let mut best = None;
    for (oi, o) in objs.iter().enumerate() {
        if o.role != role || o.addr != *addr {
            continue;
        }
        let si = o
            .timeline
            .steps
            .iter()
            .rposition(|s| s.ts_ns <= f.first_ns)
            .unwrap_or(0);
        best = Some((oi, si));
        if o.timeline
            .steps
            .back()
            .is_some_and(|s| s.ts_ns >= f.first_ns)
        {
            break;
        }
    }
    best
}

pub fn html(engine: &Engine, page: &Page) -> String {
    let objs = objects(engine);
    let findings = engine.findings();
    let mut o = String::new();
    head(&mut o, page.title);
    summary(&mut o, engine, page, &objs);
    findings_section(&mut o, findings, &objs, page);
    let _ = write!(
        o,
        "<h2 id=\"timeline\">Timeline</h2><p class=\"legend\">One time axis for every VM and \
         device. Bars: who holds a reference (a device: while it is open). Line: the count as \
         read from the kernel at each step; <span class=\"inf\">amber rings</span>: inferred \
         steps (a change no probe saw). <span class=\"fnd\">Red marks</span>: findings (links).</p>"
    );
    o.push_str(&chart::chart(&objs, findings, MAX_DRAWN));
    if objs.len() > MAX_DRAWN {
        let _ = write!(
            o,
            "<p>{} more objects are not drawn; their steps are below.</p>",
            objs.len() - MAX_DRAWN
        );
    }
    steps_tables(&mut o, &objs, page.stacks);
    chart::lock_graph(&mut o, engine);
    anomalies(&mut o, engine);
    stacks_section(&mut o, findings, &objs, page.stacks);
    o.push_str("</body></html>\n");
    o
}

fn head(o: &mut String, title: &str) {
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>kvscope: {t}</title><style>\
         body{{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}}\
         pre{{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-word}}\
         .critical,.error{{color:#b00000}} .warning{{color:#a06000}} .info{{color:#335}}\
         .damage{{background:#fee;border:2px solid #b00000;padding:.6em;margin:1em 0}}\
         .finding{{border-left:4px solid #d03030;padding-left:.8em;margin:1em 0}}\
         table{{border-collapse:collapse;font-size:12px;margin:.4em 0 1.2em}}\
         td,th{{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}} tr:target{{background:#fff3b0}}\
         .inf{{color:#b07000}} .fnd{{color:#d03030}} .legend{{font-size:13px;color:#444}}\
         svg text{{font-family:monospace;font-size:11px}} h2{{margin-top:1.6em}}\
         </style></head><body><h1>kvscope report</h1><p>{t}</p>",
        t = esc(title)
    );
}

fn summary(o: &mut String, engine: &Engine, page: &Page, objs: &[Obj]) {
    if let Some(d) = page.damage {
        let _ = write!(
            o,
            "<div class=\"damage\" role=\"alert\"><b>Damaged recording:</b> {}. \
             Everything below covers only the events before the damage.</div>",
            esc(d)
        );
    }
    for g in page.gaps {
        let _ = write!(
            o,
            "<div class=\"damage\" role=\"alert\"><b>Blind:</b> {}. \
             What lived across it is marked unknown.</div>",
            esc(g)
        );
    }
    let vms = objs.iter().filter(|x| x.role == ObjectRole::Kvm).count();
    use crate::output::count;
    let _ = write!(
        o,
        "<p>{}; {}, {}; {}; {} lost in the kernel{}.</p>",
        count(engine.events, "event", "events"),
        count(vms as u64, "VM", "VMs"),
        count((objs.len() - vms) as u64, "VFIO device", "VFIO devices"),
        count(engine.findings().len() as u64, "finding", "findings"),
        count(page.lost, "event", "events"),
        match page.delivery {
            Some(d) => format!("; delivery {}", esc(&d.summary())),
            None => String::new(),
        }
    );
}

fn findings_section(o: &mut String, findings: &[Finding], objs: &[Obj], page: &Page) {
    let stacks = page.stacks;
    let _ = write!(o, "<h2 id=\"findings\">Findings ({})</h2>", findings.len());
    if findings.is_empty() {
        o.push_str("<p>None.</p>");
    }
    for (i, f) in findings.iter().enumerate() {
        let sev = f.severity().name();
        let _ = write!(
            o,
            "<article class=\"finding\" id=\"f-{i}\"><h3 class=\"{sev}\">{} [{sev}] {}</h3><p>",
            f.kind.id(),
            esc(&finding_text::summary(f))
        );
        o.push_str(&render::finding_when(f, page.clock.as_ref()));
        if let Some((oi, si)) = cited_step(objs, f) {
            let a = &objs[oi].anchor;
            let _ = write!(
                o,
                "; <a href=\"#{a}\">{}</a>, <a href=\"#{a}-s{si}\">its step at that time</a>",
                esc(&objs[oi].label)
            );
        }
        for id in &f.stacks {
            let _ = write!(o, "; <a href=\"#stack-{id}\">stack #{id}</a>");
        }
        let _ = write!(
            o,
            "</p><pre>{}</pre>",
            esc(&finding_text::detail(f).join("\n"))
        );
        for id in &f.stacks {
            if let Some(s) = stacks.get(id) {
                let _ = write!(o, "<pre>stack #{id}:\n{}</pre>", esc(&s.symbols.join("\n")));
            }
        }
        o.push_str("</article>");
    }
}

fn steps_tables(o: &mut String, objs: &[Obj], stacks: &BTreeMap<u32, Stack>) {
    let _ = write!(o, "<h2 id=\"steps\">Steps</h2>");
    for obj in objs.iter().take(MAX_TABLES) {
        let _ = write!(
            o,
            "<h3 id=\"{}\">{}</h3><table><tr><th>time</th><th>thread</th><th>step</th>\
             <th>change</th><th>{}</th><th>holder / VM</th><th>seen by</th><th>stack</th></tr>",
            obj.anchor,
            esc(&obj.label),
            obj.count_name
        );
        if obj.timeline.folded > 0 {
            let _ = write!(
                o,
                "<tr><td colspan=\"8\">{} older steps folded (net {:+})</td></tr>",
                obj.timeline.folded, obj.timeline.folded_delta
            );
        }
        for (i, (s, last)) in obj.timeline.counted().enumerate() {
            let who = match (&s.holder, s.vm) {
                (Some(h), _) => esc(&h.to_string()),
                (None, Some(v)) => format!("VM {v:#x}"),
                _ => String::new(),
            };
            let stack = match s.stack_id {
                Some(id) if stacks.contains_key(&id) => {
                    format!("<a href=\"#stack-{id}\">#{id}</a>")
                }
                Some(id) => format!("#{id} (not recorded)"),
                None => String::new(),
            };
            let _ = write!(
                o,
                "<tr id=\"{}-s{i}\"><td>{}</td><td>{}[{}]</td><td>{}{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td>{who}</td><td>{}</td><td>{stack}</td></tr>",
                obj.anchor,
                render::ts(s.ts_ns),
                esc(&s.comm.to_string()),
                s.pid,
                if s.inferred() { "~" } else { "" },
                esc(s.kind.name()),
                if s.delta == 0 {
                    String::new()
                } else {
                    format!("{:+}", s.delta)
                },
                last.map_or("?".to_owned(), |c| c.to_string()),
                esc(s.hook.map_or("(inferred)", |h| h.symbol()))
            );
        }
        o.push_str("</table>");
    }
    if objs.len() > MAX_TABLES {
        let _ = write!(
            o,
            "<p>{} more objects; use <code>kvscope timeline</code>.</p>",
            objs.len() - MAX_TABLES
        );
    }
}

fn anomalies(o: &mut String, engine: &Engine) {
    let a = &engine.anomalies;
    let _ = write!(o, "<h2 id=\"anomalies\">Anomalies</h2>");
    if a.out_of_order + a.unseen_creation + a.unmatched_release == 0 {
        o.push_str("<p>None.</p>");
    } else {
        let _ = write!(
            o,
            "<p>{} out of order, {} first seen mid-life, {}{}.</p>",
            a.out_of_order,
            crate::output::count(a.unseen_creation, "object", "objects"),
            crate::output::count(
                a.unmatched_release,
                "unmatched lock release",
                "unmatched lock releases"
            ),
            esc(&crate::output::unmatched_releases(a))
        );
    }
    if !a.taken_before_watched.is_empty() {
        let _ = write!(
            o,
            "<p>Not an anomaly: locks released that were taken before kvscope watched them: {}.</p>",
            esc(&crate::output::by_class(&a.taken_before_watched))
        );
    }
}

fn stacks_section(
    o: &mut String,
    findings: &[Finding],
    objs: &[Obj],
    stacks: &BTreeMap<u32, Stack>,
) {
    let mut ids: Vec<u32> = findings.iter().flat_map(|f| f.stacks.clone()).collect();
    ids.extend(
        objs.iter()
            .take(MAX_TABLES)
            .flat_map(|x| x.timeline.steps.iter().filter_map(|s| s.stack_id)),
    );
    ids.sort_unstable();
    ids.dedup();
    ids.retain(|id| stacks.contains_key(id));
    let _ = write!(o, "<h2 id=\"stacks\">Stacks ({})</h2>", ids.len());
    for id in ids {
        let _ = write!(
            o,
            "<pre id=\"stack-{id}\">stack #{id}\n{}</pre>",
            esc(&stacks[&id].symbols.join("\n"))
        );
    }
}
