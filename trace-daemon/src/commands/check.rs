//! `kvscope check`: what this host lets kvscope see, per role, and why.
//! It really loads and attaches (then detaches): what it reports was tried.
use serde::Serialize;

use super::lock_modes;
use crate::{
    attach::loader::{self, Facts, LoadOptions},
    attach::plan::{self, Method, Plan, StackVariant, Tier, VfioPaths},
    kernel::{btf::OffsetReport, caps::Privileges, lockdown::Lockdown, version::KernelVersion},
};

#[derive(Serialize)]
pub struct Status {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Result<(), String>> for Status {
    fn from(r: &Result<(), String>) -> Self {
        Status {
            ok: r.is_ok(),
            reason: r.as_ref().err().cloned(),
        }
    }
}

#[derive(Serialize)]
pub struct BtfStatus {
    pub vmlinux: bool,
    pub modules: Vec<String>,
    /// `--btf` files in use, each with how it was vouched for.
    pub user: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub kernel: KernelVersion,
    pub privileges: Privileges,
    pub needed_capabilities: &'static str,
    pub btf: BtfStatus,
    pub kallsyms_addresses_visible: bool,
    pub fentry: Status,
    pub kprobes: Status,
    pub tracefs: Status,
    pub lockdown: Lockdown,
    pub variant: StackVariant,
    pub variant_description: &'static str,
    /// Group and/or cdev: the paths the roles cover here.
    pub vfio_paths: VfioPaths,
    /// CONFIG_DEBUG_LOCK_ALLOC: every mutex_lock takes the slow path.
    pub lockdep: bool,
    pub tier: Tier,
    pub tier_description: &'static str,
    pub usable: bool,
    /// One line: why the host is not usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub plan: Plan,
    /// Per finding kind: what `--locks deep` and `--locks lean` raise here.
    pub lock_watch: Vec<lock_modes::ModeRow>,
    /// What each mode costs every system call of the host.
    pub syscalls: lock_modes::SyscallCost,
    pub offsets: Vec<OffsetReport>,
}

pub fn run(facts: &Facts) -> Report {
    let every = LoadOptions {
        every_role: true,
        ..LoadOptions::default()
    };
    let (plan, fentry, load_error) =
        match loader::load(facts, &every, &crate::attach::gate::NEVER_STOPPED) {
            Ok(p) => {
                let (plan, fentry) = (p.plan.clone(), p.fentry.clone());
                drop(p); // detach now: check only tries
                (plan, fentry, None)
            }
            Err(e) => {
                let why = format!("{e:#}");
                let plan = facts.plan(Err(why.clone()));
                (plan, Err(why.clone()), Some(why))
            }
        };
    let tier = if load_error.is_some() {
        Tier::None
    } else {
        plan.tier()
    };
    let usable = tier != Tier::None;
    Report {
        kernel: facts.version.clone(),
        privileges: facts.privileges.clone(),
        needed_capabilities: "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN); root to read kallsyms addresses and mount tracefs",
        btf: BtfStatus {
            vmlinux: facts.btf.vmlinux,
            modules: facts.btf.modules.clone(),
            user: facts.btf.user.clone(),
            problems: facts.btf.problems.clone(),
        },
        kallsyms_addresses_visible: facts.kallsyms.addresses_visible,
        fentry: (&fentry).into(),
        kprobes: (&facts.kprobes).into(),
        tracefs: (&facts.tracing.as_ref().map(|_| ()).map_err(Clone::clone)).into(),
        lockdown: facts.lockdown.clone(),
        variant: facts.variant,
        variant_description: facts.variant.describe(),
        vfio_paths: plan::vfio_paths(&facts.kallsyms),
        lockdep: plan::lockdep(&facts.kallsyms),
        tier,
        tier_description: tier.describe(),
        usable,
        reason: if usable {
            None
        } else {
            Some(load_error.unwrap_or_else(|| {
                "nothing attachable: no role and no tracepoint could be attached".to_owned()
            }))
        },
        lock_watch: lock_modes::rows(&plan, facts.variant),
        syscalls: lock_modes::syscall_cost(&plan),
        plan,
        offsets: facts.offset_report.clone(),
    }
}

fn paths_line(p: VfioPaths) -> String {
    let mut v = Vec::new();
    if p.group {
        v.push("group (/dev/vfio/N)");
    }
    if p.cdev {
        v.push(
            "cdev (/dev/vfio/devices/vfioN bound to iommufd: the same roles, dev_set->lock only)",
        );
    }
    if v.is_empty() {
        "none (no VFIO functions in kallsyms)".to_owned()
    } else {
        v.join("; ")
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn status_line(s: &Status) -> String {
    match &s.reason {
        None => "yes".to_owned(),
        Some(r) => format!("no ({r})"),
    }
}

/// Each known offset with where it was read, grouped by source.
fn offsets_text(o: &mut String, offsets: &[OffsetReport]) {
    use std::fmt::Write as _;
    let mut by_source: Vec<(&str, Vec<String>)> = Vec::new();
    for x in offsets {
        let (Some(off), Some(from)) = (x.offset, x.from.as_deref()) else {
            continue;
        };
        let item = format!("{} {off}", x.source);
        match by_source.iter_mut().find(|(f, _)| *f == from) {
            Some((_, v)) => v.push(item),
            None => by_source.push((from, vec![item])),
        }
    }
    for (from, items) in by_source {
        let _ = writeln!(o, "offsets from  {from}: {}", items.join(", "));
    }
}

pub fn render_text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "kernel        {}", r.kernel.release);
    let _ = writeln!(
        o,
        "privileges    euid {} cap_bpf {} cap_perfmon {} cap_sys_admin {}",
        r.privileges.euid,
        yes(r.privileges.cap_bpf),
        yes(r.privileges.cap_perfmon),
        yes(r.privileges.cap_sys_admin)
    );
    let _ = writeln!(
        o,
        "btf           vmlinux {}, modules [{}]",
        yes(r.btf.vmlinux),
        r.btf.modules.join(", ")
    );
    for u in &r.btf.user {
        let _ = writeln!(o, "              {u}");
    }
    for p in &r.btf.problems {
        let _ = writeln!(o, "              problem: {p}");
    }
    let _ = writeln!(
        o,
        "kallsyms      addresses {}",
        if r.kallsyms_addresses_visible {
            "visible"
        } else {
            "hidden (not root?)"
        }
    );
    let _ = writeln!(o, "fentry        {}", status_line(&r.fentry));
    let _ = writeln!(o, "kprobes       {}", status_line(&r.kprobes));
    let _ = writeln!(o, "tracefs       {}", status_line(&r.tracefs));
    let _ = writeln!(o, "lockdown      {}", r.lockdown.describe());
    let _ = writeln!(o, "stack         {}", r.variant_description);
    let _ = writeln!(o, "VFIO paths    {}", paths_line(r.vfio_paths));
    if r.lockdep {
        let _ = writeln!(
            o,
            "lockdep       on: every mutex_lock is mutex_lock_nested and takes the slow path; --locks deep costs more here than on a production kernel"
        );
    }
    let _ = writeln!(o);
    roles_text(&mut o, r);
    let _ = writeln!(o);
    offsets_text(&mut o, &r.offsets);
    let unknown: Vec<&str> = r
        .offsets
        .iter()
        .filter(|x| x.offset.is_none())
        .map(|x| x.source.as_str())
        .collect();
    if !unknown.is_empty() {
        let _ = writeln!(
            o,
            "unknown here  {} (those data are reported unknown)",
            unknown.join(", ")
        );
        if (r.kernel.major, r.kernel.minor) < (5, 11) && r.btf.user.is_empty() {
            let _ = writeln!(
                o,
                "              before 5.11 modules carry no BTF: --btf FILE gives the kvm and vfio modules' types (README, \"Older kernels\")"
            );
        }
    }
    let _ = writeln!(o, "tier          {}", r.tier_description);
    let _ = writeln!(o);
    modes_text(&mut o, r);
    let _ = writeln!(o);
    let _ = writeln!(o, "syscalls, deep  {}", r.syscalls.deep);
    let _ = writeln!(o, "syscalls, lean  {}", r.syscalls.lean);
    if let Some(why) = &r.reason {
        let _ = writeln!(o, "NOT USABLE    {why}");
    }
    o
}

/// What each lock-watching mode can raise: one line where both modes say the
/// same, else one line each (the reasons are sentences, too long for columns).
fn modes_text(o: &mut String, r: &Report) {
    use std::fmt::Write as _;
    let w = r
        .lock_watch
        .iter()
        .map(|m| m.kind.id().len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "{:<w$}  WHAT EACH MODE CAN RAISE (deep: --locks deep; lean: --locks lean, the default)",
        "FINDING"
    );
    for m in &r.lock_watch {
        if m.deep == m.lean {
            let _ = writeln!(o, "{:<w$}  both: {}", m.kind.id(), m.deep);
        } else {
            let _ = writeln!(o, "{:<w$}  deep: {}", m.kind.id(), m.deep);
            let _ = writeln!(o, "{:<w$}  lean: {}", "", m.lean);
        }
    }
}

fn roles_text(o: &mut String, r: &Report) {
    use std::fmt::Write as _;
    let mut rows: Vec<(String, String, &str, String)> = Vec::new();
    for role in &r.plan.roles {
        if role.choices.is_empty() {
            rows.push((
                role.name.to_owned(),
                "-".into(),
                "none",
                role.missing_reason().unwrap_or_default(),
            ));
        }
        for c in &role.choices {
            let method = match (c.method, &c.error) {
                (_, Some(_)) => "failed",
                (Method::Fentry, None) => "fentry",
                (Method::Kprobe, None) => "kprobe",
                (Method::Tracepoint, None) => "tracepoint",
                (Method::None, None) => "none",
            };
            let sym = match &c.module {
                Some(m) => format!("{} [{m}]", c.symbol),
                None => c.symbol.to_owned(),
            };
            let why = c.error.as_deref().unwrap_or(&c.reason);
            rows.push((role.name.to_owned(), sym, method, why.to_owned()));
        }
    }
    for t in &r.plan.tracepoints {
        let m = if t.method == Method::Tracepoint {
            "tracepoint"
        } else {
            "none"
        };
        rows.push((
            "syscalls/locks".into(),
            t.tracepoint.clone(),
            m,
            t.reason.clone(),
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
    let _ = writeln!(
        o,
        "{:<w0$}  {:<w1$}  {:<10}  why",
        "ROLE", "SYMBOL", "METHOD"
    );
    for (role, sym, method, why) in rows {
        let _ = writeln!(o, "{role:<w0$}  {sym:<w1$}  {method:<10}  {why}");
    }
}
