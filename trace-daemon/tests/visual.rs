//! The HTML report and the Perfetto export, on the S3 scenario.
use kvscope::{
    engine::{Config, Engine},
    output::{html, perfetto as visual},
};
use kvscope_testkit::scenario::Script;
use trace_common::LockClass::{VfioDevSetLock, VfioGroupLock};

mod common;

fn s3() -> Engine {
    let (kvm, dev, group, set) = (0xffff_8881_0000_0000u64, 0xd000u64, 0x6000u64, 0x5000u64);
    let mut s = Script::new();
    s.create_vm(1, kvm)
        .create_kvm_vfio(1, kvm, 2)
        .file_link(1, group, kvm);
    s.lock(1, group + 8, VfioGroupLock, group)
        .lock(1, set + 8, VfioDevSetLock, set)
        .vfio_get_kvm(1, dev, kvm, 3)
        .device_opened(1, dev, group, 1)
        .unlock(1, set + 8, VfioDevSetLock, set)
        .unlock(1, group + 8, VfioGroupLock, group);
    s.sleep_ms(5).close_vm_fd(1, kvm, 3);
    s.sleep_ms(5)
        .close_kvm_vfio_fd(1, kvm, kvm + 0x40, 2, |_| {});
    s.sleep_ms(5)
        .device_release(1, dev, 1)
        .lock(1, group + 8, VfioGroupLock, group)
        .lock(1, set + 8, VfioDevSetLock, set)
        .device_close(1, dev, 1)
        .vfio_put_kvm(1, dev, kvm, 1)
        .unlock(1, set + 8, VfioDevSetLock, set)
        .unlock(1, group + 8, VfioGroupLock, group);
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    e
}

fn page(e: &Engine, damage: Option<&str>) -> String {
    html::html(
        e,
        &html::Page {
            title: "S3 scenario",
            damage,
            stacks: &Default::default(),
            lost: 0,
            delivery: None,
            gaps: &[],
            clock: None,
        },
    )
}

#[test]
fn html_is_self_contained_with_one_shared_axis_steps_and_links() {
    let e = s3();
    let html = page(&e, None);
    assert!(html.starts_with("<!doctype html>"));
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("https://"), "nothing fetched");
    // One picture for the VM and its device on one axis, one for the lock order.
    assert_eq!(html.matches("aria-label=\"timeline\"").count(), 1);
    assert_eq!(html.matches("aria-label=\"lock order\"").count(), 1);
    assert!(html.contains("VM 0xffff888100000000 gen 1"));
    assert!(html.contains("VFIO device 0xd000 gen 1"));
    // Holder lanes: the VM fd, the kvm-vfio fd and the VFIO device.
    for lane in ["vm fd", "kvm-vfio fd", "vfio device 0xd000"] {
        assert!(html.contains(&format!(">{lane}</text>")), "lane {lane}");
    }
    assert!(
        html.contains("stroke=\"#e0a000\""),
        "the inferred get is an amber ring"
    );
    // The finding links to its object and step, and is marked on the chart.
    assert!(html.contains("id=\"f-0\""));
    assert!(
        html.contains("href=\"#f-0\""),
        "chart mark links to the finding"
    );
    assert!(
        html.contains("href=\"#vm-ffff888100000000-g1-s"),
        "finding links to a step"
    );
    assert!(
        html.contains("<td>destroyed</td>"),
        "steps are visible text"
    );
    assert!(!html.contains("class=\"damage\""));
    assert!(page(&e, Some("cut short at byte 99")).contains("class=\"damage\""));
    if let Ok(dir) = std::env::var("KVSCOPE_ARTIFACTS") {
        std::fs::write(format!("{dir}/s3.html"), &html).unwrap();
    }
}

#[test]
fn perfetto_export_has_counter_tracks_and_findings() {
    let e = s3();
    let v = visual::perfetto(&e, None);
    let evs = v["traceEvents"].as_array().unwrap();
    let counters: Vec<i64> = evs
        .iter()
        .filter(|x| x["ph"] == "C")
        .map(|x| x["args"]["users_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counters.first(), Some(&1));
    assert_eq!(counters.last(), Some(&0));
    assert!(counters.contains(&3));
    let global: Vec<&str> = evs
        .iter()
        .filter(|x| x["s"] == "g")
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(global.len(), 1);
    assert!(global[0].starts_with("destroy-under-lock"));
    assert!(evs.iter().any(|x| x["ph"] == "M"));
}

/// Runs headless Chromium on `args`, bounded in time; its stdout.
fn chromium(args: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s);
        s
    });
    let t = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > std::time::Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s: {args:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// Measures, in the rendered page, overlaps between labels and between labels
/// and lane bars of the timeline picture, and writes them on <body>.
const PROBE: &str = r#"<script>
const q = s => [...document.querySelectorAll(s)].map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0);
const hit = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
const texts = q('svg[aria-label=timeline] text'), bars = q('svg[aria-label=timeline] rect');
let tt = 0, tb = 0;
texts.forEach((a, i) => texts.slice(i + 1).forEach(b => { if (hit(a, b)) tt++; }));
texts.forEach(a => bars.forEach(b => { if (hit(a, b)) tb++; }));
document.body.dataset.texts = texts.length;
document.body.dataset.textOverlaps = tt;
document.body.dataset.labelBarOverlaps = tb;
</script></body>"#;

#[test]
fn the_page_renders_in_a_real_browser_without_overlaps() {
    if !common::tool("chromium") {
        return;
    }
    let e = s3();
    let dir = std::env::temp_dir().join(format!("kvscope-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html = page(&e, Some("cut short at byte 4242"));
    let page_path = dir.join("page.html");
    std::fs::write(&page_path, &html).unwrap();
    let probe_path = dir.join("probe.html");
    std::fs::write(&probe_path, html.replace("</body>", PROBE)).unwrap();

    // The DOM as the browser built it, with the probe's measurements.
    let dom = chromium(&["--dump-dom", &format!("file://{}", probe_path.display())]);
    let attr = |name: &str| -> i64 {
        let k = format!("{name}=\"");
        dom.split(&k)
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} on <body>: the probe did not run"))
    };
    assert!(attr("data-texts") >= 8, "labels rendered");
    assert_eq!(attr("data-text-overlaps"), 0, "labels overlap each other");
    assert_eq!(
        attr("data-label-bar-overlaps"),
        0,
        "a lane bar covers a label"
    );
    assert!(dom.contains("Damaged recording"), "damage banner rendered");
    assert!(dom.contains("destroy-under-lock"), "finding rendered");
    assert!(dom.contains("<td>destroyed</td>"), "steps rendered as text");

    // A screenshot that is not blank: colour where the chart is.
    let shot = dir.join("shot.png");
    chromium(&[
        "--window-size=1280,1600",
        &format!("--screenshot={}", shot.display()),
        &format!("file://{}", page_path.display()),
    ]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let (mut ink, mut red, mut blue) = (0usize, 0usize, 0usize);
    for p in pixels.chunks(px) {
        let (r, g, b) = (p[0], p[1], p[2]);
        if r < 200 || g < 200 || b < 200 {
            ink += 1;
        }
        if r > 180 && g < 90 && b < 90 {
            red += 1;
        }
        if b > 180 && r < 140 && g > 130 && g < 190 {
            blue += 1;
        }
    }
    let total = pixels.len() / px;
    assert!(
        ink * 100 > total,
        "the screenshot is blank ({ink} of {total} pixels)"
    );
    assert!(red > 20, "no finding mark or banner in red ({red} pixels)");
    assert!(blue > 200, "no holder bars in blue ({blue} pixels)");
    if let Ok(out) = std::env::var("KVSCOPE_ARTIFACTS") {
        std::fs::copy(&shot, format!("{out}/s3.png")).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
