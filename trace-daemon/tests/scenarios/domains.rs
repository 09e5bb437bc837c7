//! Per-VM metric series by the operator's name: live VMs only, capped.
use kvscope::{
    engine::{Config, Engine},
    identity::Identity,
    service::domains::{MAX_DOMAINS, OVERFLOW, by_domain},
};
use kvscope_testkit::scenario::Script;

fn named(pid: u32, name: Option<&str>) -> Identity {
    Identity {
        pid,
        comm: "qemu-system-x86".into(),
        name: None,
        domain: name.map(str::to_owned),
        uuid: None,
    }
}

/// Names the VM at `kvm` as the daemon does when it sees it created.
fn identify(e: &mut Engine, kvm: u64, id: Identity) {
    let created = e
        .live_vms()
        .find(|v| v.addr == kvm)
        .map_or(0, |v| v.first_ns);
    e.identify(kvm, created, id);
}

#[test]
fn live_vms_by_name_and_the_rest_under_other() {
    let mut s = Script::new();
    // Two VMs of libvirt's lab-a (a restart), one unnamed, one destroyed.
    let vms: [u64; 4] = [0x1000, 0x2000, 0x3000, 0x4000];
    for (i, kvm) in vms.iter().enumerate() {
        s.create_vm(10 + i as u32, *kvm).sleep_ms(1);
    }
    s.destroy(13, 0x4000);
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    for (kvm, name) in [
        (0x1000, Some("lab-a")),
        (0x2000, Some("lab-a")),
        (0x4000, Some("gone")),
    ] {
        identify(&mut e, kvm, named(1, name));
    }
    let rows = by_domain(&e);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        ["lab-a", "unnamed"],
        "{rows:?}"
    );
    assert_eq!((rows["lab-a"].vms, rows["lab-a"].users), (2, 2));
    assert_eq!(rows["unnamed"].vms, 1);

    // Past the cap, the newest VMs are counted under _other.
    let mut s = Script::new();
    let n = MAX_DOMAINS + 5;
    for i in 0..n {
        s.create_vm(100, 0x10_0000 + 0x1000 * i as u64).sleep_ms(1);
    }
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    for i in 0..n {
        let name = format!("vm-{i:03}");
        identify(
            &mut e,
            0x10_0000 + 0x1000 * i as u64,
            named(100, Some(&name)),
        );
    }
    let rows = by_domain(&e);
    assert_eq!(rows.len(), MAX_DOMAINS + 1);
    assert_eq!(rows[OVERFLOW].vms, 5);
    assert!(rows.contains_key("vm-000") && !rows.contains_key(&format!("vm-{:03}", n - 1)));
}
