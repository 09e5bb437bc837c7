//! The HTML report and the Perfetto export, on the S3 scenario.
use kvscope::{
    engine::{Config, Engine},
    scenario::Script,
    visual,
};
use trace_common::LockClass::{VfioDevSetLock, VfioGroupLock};

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

#[test]
fn html_is_self_contained_with_a_picture_per_vm() {
    let e = s3();
    let html = visual::html(&e, "S3 scenario", None);
    assert!(html.starts_with("<!doctype html>"));
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("https://"), "nothing fetched");
    assert_eq!(html.matches("<svg").count(), 1, "one VM, one picture");
    assert!(html.contains("destroy-under-lock"));
    // Holder lanes: the VM fd, the kvm-vfio fd and the VFIO device.
    for lane in ["vm fd", "kvm-vfio fd", "vfio device 0xd000"] {
        assert!(html.contains(&format!(">{lane}</text>")), "lane {lane}");
    }
    assert!(
        html.contains("stroke-dasharray"),
        "the inferred get is drawn dashed"
    );
    assert!(html.contains("fill=\"#d03030\""), "the finding is marked");
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
        .map(|x| x["args"]["users"].as_i64().unwrap())
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
