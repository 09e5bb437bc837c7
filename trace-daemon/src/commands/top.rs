//! `kvscope top`: the host's VMs, one row each, refreshed every interval.
//! The table is a pure function of the engine (`table`); the live part
//! feeds the engine and redraws.
use std::{fmt::Write as _, io::Write as _, time::Duration};

use crate::{
    attach::{
        live::{self, Session, Signals, Sink},
        loader::LoadOptions,
        lost_totals::LostTotals,
    },
    commands::{cli::TopSort, offline::vm_selected},
    engine::{Engine, ObjectRole, Vm},
    identity::Identity,
    vm_sel::VmSel,
};

pub struct TopOptions {
    pub load: LoadOptions,
    pub interval: Duration,
    pub vm: Option<VmSel>,
    pub sort: TopSort,
    /// Tables to print before exiting; None: until a signal.
    pub batch: Option<u32>,
}

/// One VM's row.
struct Row {
    name: String,
    pid: String,
    addr: u64,
    users: String,
    holders: String,
    devices: usize,
    findings: usize,
    state: &'static str,
    /// For sorting.
    users_n: i32,
    pid_n: u32,
}

fn state(v: &Vm) -> &'static str {
    if v.is_zombie() {
        "zombie"
    } else if v.blind_from_ns.is_some() {
        "unknown (blind gap)"
    } else if v.fd_closed_ns.is_some() {
        "fd closed"
    } else {
        "live"
    }
}

fn row(e: &Engine, v: &Vm) -> Row {
    let holders: Vec<String> = v
        .holders_now()
        .iter()
        .map(|(h, n)| format!("{h} {n}"))
        .collect();
    // VFIO devices open now whose steps name this VM.
    let devices = e
        .device_generations()
        .filter(|d| d.open_count.is_some_and(|c| c > 0))
        .filter(|d| d.last_vm() == Some(v.addr))
        .count();
    let findings = e
        .findings()
        .iter()
        .filter(|f| f.object(ObjectRole::Kvm) == Some(v.addr))
        .count();
    let pid_n = v.creator.as_ref().map_or(0, |c| c.tgid);
    Row {
        name: v
            .identity
            .as_ref()
            .map_or_else(|| "-".to_owned(), Identity::label),
        pid: if pid_n == 0 {
            "-".into()
        } else {
            pid_n.to_string()
        },
        addr: v.addr,
        users: v.users.map_or_else(|| "?".into(), |u| u.to_string()),
        holders: if holders.is_empty() {
            "-".into()
        } else {
            holders.join(", ")
        },
        devices,
        findings,
        state: state(v),
        users_n: v.users.unwrap_or(0),
        pid_n,
    }
}

/// VMs that were running before kvscope attached, by process: their fds
/// (`anon_inode:kvm-vm`) in /proc. kvscope saw nothing of them: no address,
/// count or holder, only that they are there.
pub type Before = std::collections::BTreeMap<u32, (usize, Identity)>;

/// Every process's VM fds now, less the VMs kvscope follows for it.
pub fn vms_before(e: &Engine) -> Before {
    let mut out = Before::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let n = fds
            .flatten()
            .filter(|f| {
                std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:kvm-vm")
            })
            .count();
        if n == 0 {
            continue;
        }
        let followed = e
            .live_vms()
            .filter(|v| !v.is_destroyed() && v.fd_closed_ns.is_none())
            .filter(|v| v.creator.as_ref().is_some_and(|c| c.tgid == pid))
            .count();
        if n > followed {
            out.insert(pid, (n - followed, Identity::read(pid, "")));
        }
    }
    out
}

fn row_before(pid: u32, n: usize, id: &Identity) -> Row {
    Row {
        name: id.label(),
        pid: pid.to_string(),
        addr: 0,
        users: "?".into(),
        holders: format!(
            "{n} VM{} running since before kvscope attached: not followed",
            if n == 1 { "" } else { "s" }
        ),
        devices: 0,
        findings: 0,
        state: "before attach",
        users_n: 0,
        pid_n: pid,
    }
}

/// The table: a header line, then one row per live VM (those `sel` picks),
/// in `sort` order, and one per process with VMs from `before` attach.
pub fn table(
    e: &Engine,
    before: &Before,
    header: &str,
    sel: Option<&VmSel>,
    sort: TopSort,
) -> String {
    let mut rows: Vec<Row> = e
        .live_vms()
        .filter(|v| !v.is_destroyed())
        .filter(|v| sel.is_none_or(|s| vm_selected(v, s)))
        .map(|v| row(e, v))
        .collect();
    rows.extend(
        before
            .iter()
            .filter(|(_, (_, id))| sel.is_none_or(|s| s.names(id)))
            .map(|(pid, (n, id))| row_before(*pid, *n, id)),
    );
    match sort {
        TopSort::Name => rows.sort_by(|a, b| (&a.name, a.pid_n).cmp(&(&b.name, b.pid_n))),
        TopSort::Users => rows.sort_by_key(|r| std::cmp::Reverse(r.users_n)),
        TopSort::Pid => rows.sort_by_key(|r| r.pid_n),
        TopSort::Findings => rows.sort_by_key(|r| std::cmp::Reverse(r.findings)),
    }
    let mut o = String::new();
    let _ = writeln!(o, "{header}");
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let _ = writeln!(
        o,
        "{:<w$}  {:>7}  {:<18}  {:>5}  {:>7}  {:>8}  {:<19}  HOLDERS",
        "NAME", "PID", "VM", "USERS", "DEVICES", "FINDINGS", "STATE"
    );
    if rows.is_empty() {
        let _ = writeln!(
            o,
            "(no live VM{})",
            sel.map_or(String::new(), |s| format!(" matches {s}"))
        );
    }
    for r in rows {
        let _ = writeln!(
            o,
            "{:<w$}  {:>7}  {:<18}  {:>5}  {:>7}  {:>8}  {:<19}  {}",
            r.name,
            r.pid,
            if r.addr == 0 {
                "?".to_owned()
            } else {
                format!("{:#x}", r.addr)
            },
            r.users,
            r.devices,
            r.findings,
            r.state,
            r.holders
        );
    }
    o
}

struct Top<'a> {
    engine: Engine,
    opts: &'a TopOptions,
    lost: LostTotals,
    /// Redraw in place (a terminal, no --batch).
    redraw: bool,
    shown: u32,
    context: String,
}

impl Top<'_> {
    fn header(&self) -> String {
        let lost: u64 = self.lost.totals().values().sum();
        let zombies = self.engine.zombie_vms();
        format!(
            "kvscope top: {}; {} events, {lost} lost{}; {} zombie; every {} s{}",
            self.context,
            self.engine.events,
            if lost > 0 {
                " (the ring overflowed: counts may be wrong)"
            } else {
                ""
            },
            zombies,
            self.opts.interval.as_secs(),
            if self.redraw { " (Ctrl-C quits)" } else { "" }
        )
    }
}

impl Sink for Top<'_> {
    fn event(
        &mut self,
        _s: &Session,
        _r: &trace_common::Event,
        ev: &crate::event::Event,
    ) -> anyhow::Result<()> {
        self.engine.ingest(ev);
        Ok(())
    }

    fn tick(
        &mut self,
        _s: &Session,
        lost: &[(trace_common::HookId, u64)],
        now: u64,
    ) -> anyhow::Result<()> {
        self.engine.tick(now);
        self.lost.update(lost);
        let before = vms_before(&self.engine);
        let text = table(
            &self.engine,
            &before,
            &self.header(),
            self.opts.vm.as_ref(),
            self.opts.sort,
        );
        let mut out = std::io::stdout().lock();
        let r = if self.redraw {
            // Home, clear, draw: one write, so the screen never shows half.
            write!(out, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(out, "{text}")
        };
        r.and_then(|()| out.flush())?;
        self.shown += 1;
        Ok(())
    }

    fn identified(&mut self, kvm: u64, created_ns: u64, id: &Identity) -> anyhow::Result<()> {
        self.engine.identify(kvm, created_ns, id.clone());
        Ok(())
    }

    fn blind(
        &mut self,
        _changes: &[crate::attach::modules::Change],
        gap: &crate::recording::Gap,
        _session: Option<&Session>,
    ) -> anyhow::Result<()> {
        self.engine.blind(gap.from_ns, gap.to_ns);
        self.lost.session_ended();
        Ok(())
    }

    fn done(&mut self) -> bool {
        self.opts.batch.is_some_and(|n| self.shown >= n)
    }
}

pub async fn run(opts: TopOptions, mut signals: Signals) -> anyhow::Result<()> {
    let Some(session) = live::attach(&opts.load, &mut signals).await? else {
        return Ok(());
    };
    let redraw = opts.batch.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut sink = Top {
        engine: Engine::new(session.engine_config(crate::engine::Config::default())),
        opts: &opts,
        lost: LostTotals::default(),
        redraw,
        shown: 0,
        context: format!(
            "{}, locks {}",
            session.facts.version.release,
            session.lock_watch.name()
        ),
    };
    session.announce(match opts.batch {
        Some(_) => "printing tables",
        None => "Ctrl-C to quit",
    });
    let (session, _stats) = crate::attach::reload::run_across_reloads(
        session,
        &mut sink,
        opts.interval,
        &opts.load,
        &mut signals,
    )
    .await?;
    if let Some(s) = session {
        s.close_for_exit();
    }
    Ok(())
}
