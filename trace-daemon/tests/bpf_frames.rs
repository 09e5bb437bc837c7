//! Stack frames in BPF code, on a real stack from the guest lab
//! (tests/data/lab-6.12-bpf-frames, see its README): a fentry program on
//! mutex_lock and its trampoline, under kvm_dev_ioctl.
use std::path::Path;

use kvscope::kernel::kallsyms::Kallsyms;
use serde_json::Value;

fn data(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/lab-6.12-bpf-frames")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn kallsyms(with_bpf: bool) -> Kallsyms {
    let mut text = data("kallsyms-before-attach");
    if with_bpf {
        text += &data("kallsyms-bpf");
    }
    let mut k = Kallsyms::parse(&text);
    k.set_modules(&data("modules"));
    k
}

fn stacks() -> Vec<(Vec<u64>, Vec<String>)> {
    let v: Value = serde_json::from_str(&data("stacks.json")).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ips = s["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap());
            let names = s["guest_symbols"].as_array().unwrap().iter();
            (
                ips.collect(),
                names.map(|n| n.as_str().unwrap().to_owned()).collect(),
            )
        })
        .collect()
}

#[test]
fn trampoline_and_program_frames_are_named_bpf_after_attach() {
    let k = kallsyms(true);
    let all = stacks();
    assert!(!all.is_empty());
    for (ips, guest) in &all {
        let names: Vec<String> = ips.iter().map(|ip| k.frame(*ip)).collect();
        assert_eq!(&names, guest, "the guest and this symbolizer disagree");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("bpf_trampoline_") && n.ends_with(" [bpf]")),
            "no trampoline frame: {names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("bpf_prog_") && n.ends_with(" [bpf]")),
            "no program frame: {names:?}"
        );
        // The frames under the trampoline are the kernel's own.
        let at = names
            .iter()
            .position(|n| n.starts_with("bpf_trampoline_"))
            .unwrap();
        assert!(names[at + 1].starts_with("mutex_lock+"), "{names:?}");
    }
}

#[test]
fn kallsyms_read_before_attach_cannot_name_them() {
    // What kvscope used before it re-read kallsyms after attaching: the BPF
    // frames have no symbol, so they stay raw addresses (never a `[bpf]` name
    // and never another symbol's).
    let k = kallsyms(false);
    for (ips, guest) in stacks() {
        for (ip, g) in ips.iter().zip(&guest) {
            if g.ends_with(" [bpf]") {
                assert_eq!(k.frame(*ip), format!("{ip:#x}"));
            }
        }
    }
}

#[test]
fn an_address_past_a_module_is_never_named_after_it() {
    // The reported misnaming: `cleanup_module+0x12dc6 [kvscope_testdev]`, a
    // trampoline allocated after the module. kvscope_testdev is 12 KiB here.
    let k = kallsyms(true);
    // testdev_exit is kvscope_testdev's cleanup_module (same address).
    let exit = k
        .get("testdev_exit")
        .expect("testdev_exit in the fixture")
        .addr;
    let inside = k.frame(exit + 0x10);
    assert!(inside.ends_with("+0x10 [kvscope_testdev]"), "{inside}");
    let past = exit + 0x12dc6;
    let name = k.frame(past);
    assert!(!name.contains("kvscope_testdev"), "{name}");
    // Without /proc/modules the distance guard alone would have named it.
    let mut bare = Kallsyms::parse(&data("kallsyms-before-attach"));
    bare.set_modules("");
    assert!(bare.frame(exit + 0x2000).contains("[kvscope_testdev]"));
}
