//! Inspects the BPF object embedded in the binary: every program the hook table
//! can ask for is there in the right section, with the maps, the config global
//! and a GPL-compatible license. This is what proves tiers 1-2 on a host that
//! cannot attach them (the guest lab attaches them for real).
use std::collections::HashMap;

use kvscope::{attach::hooks, attach::loader::PROBES};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};
use trace_common::maps;

fn object() -> object::File<'static> {
    assert!(
        !PROBES.is_empty(),
        "build.rs embedded an empty object (AYA_BUILD_SKIP?)"
    );
    object::File::parse(PROBES).expect("the embedded BPF object parses as ELF")
}

/// program name -> section name
fn programs(obj: &object::File<'_>) -> HashMap<String, String> {
    obj.symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
        .filter_map(|s| {
            let sec = obj.section_by_index(s.section_index()?).ok()?;
            Some((s.name().ok()?.to_owned(), sec.name().ok()?.to_owned()))
        })
        .collect()
}

#[test]
fn is_a_bpf_elf() {
    let obj = object();
    assert_eq!(obj.architecture(), object::Architecture::Bpf);
    assert!(obj.is_little_endian());
}

#[test]
fn every_program_of_the_hook_table_is_in_its_section() {
    let obj = object();
    let progs = programs(&obj);
    let names = hooks::all_program_names();
    // 102 fentry/fexit/kprobe/kretprobe programs for the path, handler,
    // fd-holder, notifier-era, driver and lock hooks, 22 tracepoints.
    assert_eq!(names.len(), 124, "{names:?}");
    for name in &names {
        let section = progs
            .get(name)
            .unwrap_or_else(|| panic!("program {name} missing from the BPF object"));
        let want = ["fentry", "fexit", "kprobe", "kretprobe", "tp"]
            .into_iter()
            .find(|p| name.starts_with(&format!("{p}_")))
            .map(|p| if p == "tp" { "tracepoint" } else { p })
            .unwrap();
        assert_eq!(section, want, "{name}");
    }
    // And nothing in the object that no table entry attaches.
    for (name, section) in &progs {
        if ["fentry", "fexit", "kprobe", "kretprobe", "tracepoint"].contains(&section.as_str()) {
            assert!(
                names.contains(name),
                "{name} in {section} is not in the hook table"
            );
        }
    }
}

#[test]
fn both_flavours_exist_for_every_role_candidate() {
    let obj = object();
    let progs = programs(&obj);
    for role in hooks::ROLES {
        for c in role.candidates {
            let f = c.fentry_programs();
            let k = c.kprobe_programs();
            assert!(!f.is_empty() && !k.is_empty(), "{}", c.symbol());
            for p in f.iter().chain(k.iter()) {
                assert!(progs.contains_key(p), "{}: {p}", role.role.name());
            }
        }
    }
}

#[test]
fn maps_config_and_license() {
    let obj = object();
    let syms: Vec<String> = obj
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    for m in [
        maps::EVENTS,
        maps::LOST,
        maps::RING_FILL,
        maps::WATCHED,
        maps::WATCH_HINT,
        maps::STACKS,
        maps::TRACKED_FDS,
        maps::TRACKED_TGIDS,
        maps::ARG_STASH,
        maps::CONFIG_GLOBAL,
    ] {
        assert!(syms.iter().any(|s| s == m), "symbol {m} missing");
    }
    let license = obj.section_by_name("license").expect("license section");
    let data = license.data().unwrap();
    let text = std::str::from_utf8(&data[..data.len() - 1]).unwrap();
    assert!(
        text.contains("GPL"),
        "license {text:?} must be GPL-compatible"
    );
    assert_eq!(*data.last().unwrap(), 0, "license is NUL-terminated");
}
