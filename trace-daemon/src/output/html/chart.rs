//! The page's pictures, inline SVG: every VM and device on one time axis
//! (labels in their own column, bars for holders, the count as a step line,
//! inferred steps as rings drawn last, findings as linked marks), and the
//! lock-order graph.
use std::fmt::Write as _;

use super::{Obj, esc};
use crate::{
    engine::{Engine, Finding},
    output::event_line as render,
};

/// Geometry of the chart (px). Labels get a column; lanes start after it.
const PLOT_W: f64 = 760.0;
const ROW_H: f64 = 18.0;
const COUNT_H: f64 = 54.0;
const CHAR_W: f64 = 6.7;

/// The shared-axis picture of every drawn object.
pub(super) fn chart(objs: &[Obj], findings: &[Finding], max_drawn: usize) -> String {
    let drawn = &objs[..objs.len().min(max_drawn)];
    let (Some(t0), Some(t1)) = (
        drawn
            .iter()
            .filter_map(|x| x.timeline.steps.front())
            .map(|s| s.ts_ns)
            .min(),
        drawn
            .iter()
            .filter_map(|x| x.timeline.steps.back())
            .map(|s| s.ts_ns)
            .max(),
    ) else {
        return "<p>No steps.</p>".to_owned();
    };
    let t1 = t1.max(t0 + 1);
    let longest = drawn
        .iter()
        .flat_map(|x| std::iter::once(x.label.len()).chain(x.lanes.keys().map(|k| k.len() + 2)))
        .max()
        .unwrap_or(10);
    let label_w = (longest as f64 * CHAR_W + 16.0).clamp(140.0, 320.0);
    let x = |t: u64| label_w + (t - t0) as f64 / (t1 - t0) as f64 * PLOT_W;
    let mut body = String::new();
    let mut y = 34.0;
    for (i, obj) in drawn.iter().enumerate() {
        if i > 0 {
            let _ = write!(
                body,
                r##"<line x1="0" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                label_w + PLOT_W + 10.0
            );
        }
        y = object_rows(&mut body, obj, findings, &x, label_w, y + 4.0);
    }
    let h = y + 10.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{h:.0}" role="img" aria-label="timeline">"#,
        label_w + PLOT_W + 20.0
    );
    axis(&mut o, t0, t1, &x, label_w);
    o.push_str(&body);
    o.push_str("</svg>");
    o
}

fn axis(o: &mut String, t0: u64, t1: u64, x: &dyn Fn(u64) -> f64, label_w: f64) {
    let _ = write!(
        o,
        r##"<text x="4" y="14">t0 = {}</text><line x1="{label_w:.1}" y1="22" x2="{:.1}" y2="22" stroke="#999"/>"##,
        render::ts(t0),
        label_w + PLOT_W
    );
    let step = nice_step(t1 - t0);
    let mut t = t0;
    while t <= t1 {
        let anchor = if t == t0 { "start" } else { "middle" };
        let _ = write!(
            o,
            r##"<line x1="{xt:.1}" y1="18" x2="{xt:.1}" y2="22" stroke="#999"/><text x="{xt:.1}" y="14" text-anchor="{anchor}">+{}</text>"##,
            duration_label(t - t0, step),
            xt = x(t)
        );
        t += step;
    }
}

/// A round tick interval (1, 2 or 5 times a power of ten ns) giving at most
/// five intervals over `span_ns`.
fn nice_step(span_ns: u64) -> u64 {
    let rough = span_ns.div_ceil(5).max(1);
    let mut p = 1u64;
    while p.saturating_mul(10) <= rough {
        p *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| p.saturating_mul(m))
        .find(|&s| s >= rough)
        .unwrap_or(p.saturating_mul(10))
}

/// `250 µs`, `10 ms`, `4 s`: counted in the largest unit the step is a
/// whole number of (steps are 1, 2 or 5 times a power of ten), so every
/// tick is a whole number.
fn duration_label(ns: u64, step: u64) -> String {
    let (div, unit) = match step {
        s if s >= 1_000_000_000 => (1_000_000_000, "s"),
        s if s >= 1_000_000 => (1_000_000, "ms"),
        s if s >= 1_000 => (1_000, "µs"),
        _ => (1, "ns"),
    };
    format!("{} {unit}", ns / div)
}

/// An object's rows: its label, its lanes, its count line. Returns the next y.
fn object_rows(
    o: &mut String,
    obj: &Obj,
    findings: &[Finding],
    x: &dyn Fn(u64) -> f64,
    label_w: f64,
    mut y: f64,
) -> f64 {
    let max_chars = ((label_w - 8.0) / CHAR_W) as usize;
    let fit = |s: &str| -> String {
        if s.chars().count() <= max_chars {
            esc(s)
        } else {
            esc(&(s.chars().take(max_chars - 1).collect::<String>() + "…"))
        }
    };
    let _ = write!(
        o,
        r##"<a href="#{}"><text x="4" y="{:.1}" font-weight="bold"><title>{}</title>{}</text></a>"##,
        obj.anchor,
        y + 12.0,
        esc(&obj.label),
        fit(&obj.label)
    );
    for f in findings
        .iter()
        .enumerate()
        .filter(|(_, f)| f.object(obj.role) == Some(obj.addr))
    {
        let (i, f) = f;
        let fx = x(f.first_ns.clamp(
            obj.timeline.steps.front().map_or(0, |s| s.ts_ns),
            obj.timeline.steps.back().map_or(u64::MAX, |s| s.ts_ns),
        ));
        // The mark says what it is, its name on the side with room.
        let (tx, anchor) = if fx > label_w + PLOT_W / 2.0 {
            (fx - 9.0, "end")
        } else {
            (fx + 9.0, "start")
        };
        let _ = write!(
            o,
            r##"<a href="#f-{i}"><path d="M{fx:.1},{:.1} l-6,-11 h12 z" fill="#d03030"><title>{}: {}</title></path><text x="{tx:.1}" y="{:.1}" text-anchor="{anchor}" fill="#d03030">{}</text></a>"##,
            y + 14.0,
            f.kind.id(),
            esc(&crate::output::finding_text::summary(f)),
            y + 12.0,
            f.kind.id()
        );
    }
    y += ROW_H;
    let end = x(obj.timeline.steps.back().map_or(0, |s| s.ts_ns));
    for (name, spans) in &obj.lanes {
        let _ = write!(
            o,
            r#"<text x="14" y="{:.1}">{}</text>"#,
            y + 12.0,
            fit(name)
        );
        for (a, b) in spans {
            let (xa, xb) = (x(*a), b.map(x).unwrap_or(end));
            let _ = write!(
                o,
                r##"<rect x="{xa:.1}" y="{:.1}" width="{:.1}" height="10" fill="#6a9fd8"><title>{}</title></rect>"##,
                y + 3.0,
                (xb - xa).max(2.0),
                esc(name)
            );
        }
        y += ROW_H;
    }
    count_line(o, obj, x, label_w, y)
}

/// The count as a step line with a dot per reading; count labels where they
/// fit; inferred steps as amber rings drawn last, so none hides under another.
fn count_line(o: &mut String, obj: &Obj, x: &dyn Fn(u64) -> f64, label_w: f64, y: f64) -> f64 {
    let steps = &obj.timeline.steps;
    let max_c = steps
        .iter()
        .filter_map(|s| s.count_after)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let base = y + COUNT_H - 6.0;
    let cy = |c: i32| base - c.max(0) as f64 / max_c * (COUNT_H - 18.0);
    let _ = write!(
        o,
        r#"<text x="14" y="{:.1}">{}</text>"#,
        y + COUNT_H / 2.0,
        obj.count_name
    );
    // The scale: 0 and the highest count, at the plot's left edge.
    let edge = label_w - 6.0;
    for c in [0, max_c as i32] {
        let _ = write!(
            o,
            r##"<text x="{edge:.1}" y="{:.1}" text-anchor="end" fill="#777">{c}</text>"##,
            cy(c) + 4.0
        );
    }
    let mut prev: Option<(f64, f64)> = None;
    let mut last_label = f64::MIN;
    let mut rings = String::new();
    for (i, s) in steps.iter().enumerate() {
        let Some(c) = s.count_after else { continue };
        let (nx, ny) = (x(s.ts_ns), cy(c));
        if let Some((px, py)) = prev {
            let _ = write!(
                o,
                r##"<path d="M{px:.1},{py:.1} H{nx:.1} V{ny:.1}" fill="none" stroke="#222" stroke-width="1.4"/>"##
            );
        }
        let title = format!(
            "{} {}{} -> {c}{}",
            render::ts(s.ts_ns),
            if s.inferred() { "~" } else { "" },
            s.kind,
            s.holder.map(|h| format!(" ({h})")).unwrap_or_default()
        );
        let link = format!("#{}-s{i}", obj.anchor);
        if s.inferred() {
            let _ = write!(
                rings,
                r##"<a href="{link}"><circle cx="{nx:.1}" cy="{ny:.1}" r="4.5" fill="none" stroke="#e0a000" stroke-width="2"><title>{}</title></circle></a>"##,
                esc(&title)
            );
        } else {
            let _ = write!(
                o,
                r##"<a href="{link}"><circle cx="{nx:.1}" cy="{ny:.1}" r="2.5" fill="#222"><title>{}</title></circle></a>"##,
                esc(&title)
            );
        }
        if prev.is_none_or(|(_, py)| py != ny) && nx - last_label >= 14.0 {
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}">{c}</text>"#,
                nx + 3.0,
                ny - 4.0
            );
            last_label = nx;
        }
        prev = Some((nx, ny));
    }
    o.push_str(&rings);
    y + COUNT_H
}

pub(super) fn lock_graph(o: &mut String, engine: &Engine) {
    let g = engine.lock_graph();
    let _ = write!(
        o,
        "<h2 id=\"locks\">Lock order ({})</h2>",
        crate::output::count(g.len() as u64, "edge", "edges")
    );
    if g.is_empty() {
        o.push_str("<p>No lock-order edge was seen (no watched lock taken under another).</p>");
        return;
    }
    let mut classes: Vec<_> = g.keys().flat_map(|(a, b)| [*a, *b]).collect();
    classes.sort();
    classes.dedup();
    let pos = |c| classes.iter().position(|x| *x == c).unwrap_or(0) as f64 * 200.0 + 100.0;
    // Room above and below the row of boxes for the arcs: each node an
    // arc spans lifts it higher, so a long arc passes over the boxes it
    // skips and over the shorter arcs, never under a box.
    let lift = 28.0;
    let top = 20.0 + lift * (classes.len().saturating_sub(1)) as f64;
    let (box_top, box_bottom) = (top, top + 18.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" role="img" aria-label="lock order">"#,
        classes.len() as f64 * 200.0,
        box_bottom + top
    );
    svg.push_str(r##"<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>"##);
    for c in &classes {
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{box_top:.1}" width="180" height="18" rx="4" fill="#eef"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            pos(*c) - 90.0,
            pos(*c),
            box_top + 13.0,
            esc(c.name())
        );
    }
    // Arcs after the boxes, ending just outside them: every arrowhead shows.
    for (a, b) in g.keys() {
        let (xa, xb) = (pos(*a), pos(*b));
        let span = ((xb - xa).abs() / 200.0).max(1.0);
        // Forward edges arc above, backward ones below: a cycle shows as a loop.
        let (y, bend) = if xa < xb {
            (box_top - 2.0, box_top - 2.0 * lift * span)
        } else {
            (box_bottom + 2.0, box_bottom + 2.0 * lift * span)
        };
        let _ = write!(
            svg,
            r##"<path d="M{xa:.1},{y:.1} Q{:.1},{bend:.1} {xb:.1},{y:.1}" fill="none" stroke="#444" marker-end="url(#arr)"/>"##,
            (xa + xb) / 2.0
        );
    }
    svg.push_str("</svg>");
    o.push_str(&svg);
    o.push_str("<table><tr><th>held</th><th>then taken</th><th>first seen</th><th>thread</th><th>stack</th></tr>");
    for ((a, b), e) in g {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}[{}]</td><td>{}</td></tr>",
            esc(a.name()),
            esc(b.name()),
            render::ts(e.ts_ns),
            esc(&e.comm.to_string()),
            e.pid,
            e.stack_id
                .map(|id| format!("<a href=\"#stack-{id}\">#{id}</a>"))
                .unwrap_or_default()
        );
    }
    o.push_str("</table>");
}

#[cfg(test)]
mod axis_tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_labelled_in_their_unit() {
        assert_eq!(nice_step(40_270_000), 10_000_000);
        assert_eq!(nice_step(9_000_000_000), 2_000_000_000);
        assert_eq!(nice_step(1_000), 200);
        assert_eq!(nice_step(0), 1);
        assert_eq!(duration_label(30_000_000, 10_000_000), "30 ms");
        assert_eq!(duration_label(4_000_000_000, 2_000_000_000), "4 s");
        assert_eq!(duration_label(600, 200), "600 ns");
        assert_eq!(duration_label(1_500, 500), "1500 ns");
    }
}
