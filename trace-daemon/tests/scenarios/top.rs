//! `kvscope top`'s table, from the engine alone.
use kvscope::{
    commands::{
        cli::TopSort,
        top::{Before, table},
    },
    engine::{Config, Engine},
    identity::Identity,
};
use kvscope_testkit::scenario::Script;

fn engine() -> Engine {
    let mut s = Script::new();
    // lab-a with a vCPU; python3's VM; a destroyed one, not shown.
    s.create_vm(200, 0xa000).sleep_ms(1);
    s.create_vcpu(200, 0xa000, 0, 0xf00, 2).sleep_ms(1);
    s.create_vm(300, 0xb000).sleep_ms(1);
    s.create_vm(400, 0xc000).sleep_ms(1).destroy(400, 0xc000);
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    let created = e.live_vms().find(|v| v.addr == 0xa000).unwrap().first_ns;
    e.identify(
        0xa000,
        created,
        Identity {
            pid: 200,
            comm: "qemu-system-x86".into(),
            name: Some("lab-a".into()),
            domain: Some("lab-a".into()),
            uuid: None,
        },
    );
    e
}

#[test]
fn one_row_per_live_vm_named_sorted_and_filtered() {
    let e = engine();
    let none = Before::new();
    let t = table(&e, &none, "HEADER", None, TopSort::Users);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "HEADER");
    assert!(lines[1].starts_with("NAME"), "{t}");
    assert_eq!(
        lines.len(),
        4,
        "two live VMs, the destroyed one not shown:\n{t}"
    );
    // Most references first: lab-a (vm fd and vcpu 0 fd), then pid 300's.
    assert!(lines[2].starts_with("lab-a "), "{t}");
    assert!(
        lines[2].contains("0xa000") && lines[2].contains("vcpu 0 fd 1"),
        "{t}"
    );
    assert!(
        lines[3].starts_with("- ") && lines[3].contains("300"),
        "{t}"
    );
    let by_name = table(
        &e,
        &none,
        "H",
        Some(&"lab-a".parse().unwrap()),
        TopSort::Name,
    );
    assert_eq!(by_name.lines().count(), 3, "{by_name}");
    let nothing = table(
        &e,
        &none,
        "H",
        Some(&"nosuch".parse().unwrap()),
        TopSort::Name,
    );
    assert!(
        nothing.contains("(no live VM matches VM nosuch)"),
        "{nothing}"
    );
    // A VM running since before the attach: its process and name, no count.
    let id = Identity {
        pid: 77,
        comm: "qemu-system-x86".into(),
        name: None,
        domain: Some("old-vm".into()),
        uuid: None,
    };
    let before = Before::from([(77, (1, id))]);
    let t = table(
        &e,
        &before,
        "H",
        Some(&"old-vm".parse().unwrap()),
        TopSort::Name,
    );
    let row = t.lines().nth(2).unwrap_or_default();
    assert!(
        row.starts_with("old-vm") && row.contains(" 77 ") && row.contains("before attach"),
        "{t}"
    );
    assert!(
        row.contains("1 VM running since before kvscope attached: not followed"),
        "{t}"
    );
}
