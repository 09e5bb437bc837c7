//! `kvscope trace`: attach, then stream readable (or JSON) events until Ctrl-C
//! or SIGTERM, with filters and a periodic line about lost events.
use std::{io::Write as _, time::Duration};

use crate::{
    attach::live::{self, Session, Signals, Sink},
    attach::loader::LoadOptions,
    attach::modules::Change,
    engine,
    event::{Event, Kind},
    identity::Identity,
    output::event_line as render,
    output::finding_text::FindingJson,
    output::report,
    output::wall::Clock,
    recording::Gap,
    vm_sel::VmSel,
};

/// User-side filters (the pid one is also applied in the kernel).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub vm: Option<VmSel>,
    /// VMs created by the `--vm` pid, learnt from the stream.
    vms_of_pid: Vec<u64>,
}

impl Filter {
    pub fn new(pid: Option<u32>, comm: Option<String>, vm: Option<VmSel>) -> Self {
        Filter {
            pid,
            comm,
            vm,
            vms_of_pid: Vec::new(),
        }
    }

    pub fn matches(&mut self, e: &Event) -> bool {
        if let Some(p) = self.pid
            && e.tgid != p
            && e.pid != p
        {
            return false;
        }
        if let Some(c) = &self.comm
            && e.comm != c.as_str()
        {
            return false;
        }
        match &self.vm {
            None => true,
            Some(VmSel::Addr(a)) => e.kvm == Some(*a) || e.lock.is_some_and(|l| l.owner == *a),
            Some(sel) => {
                // By pid or name: the VMs that process makes, learnt at their
                // creation (a name read from /proc then).
                if e.kind == Kind::VmCreated
                    && let Some(k) = e.kvm
                    && match sel {
                        VmSel::Pid(p) => e.tgid == *p,
                        _ => sel.names(&Identity::read(e.tgid, &e.comm.to_string())),
                    }
                {
                    self.vms_of_pid.push(k);
                }
                matches!(sel, VmSel::Pid(p) if e.tgid == *p)
                    || e.kvm.is_some_and(|k| self.vms_of_pid.contains(&k))
                    || e.lock.is_some_and(|l| self.vms_of_pid.contains(&l.owner))
            }
        }
    }
}

pub struct TraceOptions {
    pub json: bool,
    pub stacks: bool,
    pub filter: Filter,
    pub load: LoadOptions,
    pub engine: engine::Config,
    /// Seconds between lost-event checks.
    pub loss_interval: Duration,
}

/// Prints events, and the findings the engine raises from them as they come.
struct TraceSink {
    json: bool,
    stacks: bool,
    filter: Filter,
    engine: engine::Engine,
    /// The reader of standard output went away (`trace | head`): stop.
    reader_gone: bool,
    /// The last event was shown (passed the filter): its VM's identity, which
    /// comes next, is shown too.
    last_shown: bool,
    /// For findings' wall-clock times.
    clock: Option<Clock>,
}

impl TraceSink {
    fn print_findings(&mut self, found: &[engine::Finding]) -> anyhow::Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        let (json, clock) = (self.json, self.clock);
        self.write(|out| {
            for f in found {
                if json {
                    serde_json::to_writer(
                        &mut *out,
                        &serde_json::json!({ "finding": FindingJson::of(f).at(clock.as_ref()) }),
                    )?;
                    writeln!(out)?;
                } else {
                    write!(out, "{}", report::finding_text(f, clock.as_ref()))?;
                }
            }
            Ok(())
        })
    }

    /// Writes to standard output and flushes. A closed pipe is not an error:
    /// the reader has what it wanted, and the trace stops cleanly.
    fn write(
        &mut self,
        f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        if self.reader_gone {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        match f(&mut out).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.reader_gone = true;
                Ok(())
            }
            r => r.map_err(|e| anyhow::anyhow!("writing to standard output: {e}")),
        }
    }
}

impl Sink for TraceSink {
    fn lock_watch_changed(&mut self, s: &Session) {
        self.engine
            .set_lock_watch(s.lock_watch == crate::attach::plan::LockWatch::Lean);
    }

    fn event(
        &mut self,
        session: &Session,
        _rec: &trace_common::Event,
        ev: &Event,
    ) -> anyhow::Result<()> {
        let found = self.engine.ingest(ev);
        self.last_shown = ev.kind != Kind::Other && self.filter.matches(ev);
        if self.last_shown {
            let (json, stacks) = (self.json, self.stacks);
            let stack = ev
                .stack_id
                .filter(|_| stacks && !json)
                .and_then(|id| session.stack(id));
            self.write(|out| {
                if json {
                    serde_json::to_writer(&mut *out, ev)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", render::line(ev))?;
                    for s in stack.map(|st| st.symbols).unwrap_or_default() {
                        writeln!(out, "    {s}")?;
                    }
                }
                Ok(())
            })?;
        }
        self.print_findings(&found)
    }

    fn done(&mut self) -> bool {
        self.reader_gone
    }

    /// Said in the stream (text: a line; JSON: an `identity` object) and
    /// kept by the engine for the findings.
    fn identified(&mut self, kvm: u64, created_ns: u64, id: &Identity) -> anyhow::Result<()> {
        self.engine.identify(kvm, created_ns, id.clone());
        if !self.last_shown {
            return Ok(());
        }
        let line = if self.json {
            serde_json::json!({ "kind": "identity", "kvm": format!("{kvm:#x}"), "identity": id })
                .to_string()
        } else {
            format!("  VM {kvm:#x} belongs to {}", id.describe())
        };
        self.write(|out| writeln!(out, "{line}"))
    }

    /// Said on stderr by attach_again; the engine told, so that nothing is
    /// raised about what lived across the gap.
    fn blind(
        &mut self,
        _changes: &[Change],
        gap: &Gap,
        _session: Option<&Session>,
    ) -> anyhow::Result<()> {
        self.engine.blind(gap.from_ns, gap.to_ns);
        Ok(())
    }

    fn tick(
        &mut self,
        _s: &Session,
        _lost: &[(trace_common::HookId, u64)],
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let found = self.engine.tick(now_ns);
        self.print_findings(&found)
    }
}

pub async fn run(opts: TraceOptions) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let Some(session) = live::attach(&opts.load, &mut signals).await? else {
        return Ok(());
    };
    session.announce("Ctrl-C to stop");
    let mut sink = TraceSink {
        json: opts.json,
        stacks: opts.stacks,
        filter: opts.filter,
        engine: engine::Engine::new(session.engine_config(opts.engine)),
        reader_gone: false,
        last_shown: false,
        clock: Clock::of(&session.header()),
    };
    let (session, stats) = crate::attach::reload::run_across_reloads(
        session,
        &mut sink,
        opts.loss_interval,
        &opts.load,
        &mut signals,
    )
    .await?;
    if let Some(s) = session {
        s.close_for_exit();
    }
    if sink.reader_gone {
        eprintln!("kvscope: standard output was closed (its reader went away): stopped");
    }
    eprintln!(
        "kvscope: detached; {} events, {} lost, {} undecodable, {} findings",
        stats.events,
        stats.lost,
        stats.undecodable,
        sink.engine.findings().len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, tgid: u32, kvm: Option<u64>) -> Event {
        let mut e = Event::new(
            1,
            tgid,
            "qemu".into(),
            kind,
            trace_common::HookId::KvmPutKvm,
        );
        e.kvm = kvm;
        e
    }

    #[test]
    fn vm_pid_filter_follows_that_pids_vms_into_other_threads() {
        let mut f = Filter::new(None, None, Some(VmSel::Pid(10)));
        assert!(f.matches(&ev(Kind::VmCreated, 10, Some(0xa))));
        // A kworker putting that VM is shown; another VM is not.
        assert!(f.matches(&ev(Kind::VmPut, 99, Some(0xa))));
        assert!(!f.matches(&ev(Kind::VmPut, 99, Some(0xb))));
    }

    #[test]
    fn pid_and_comm_filters() {
        let mut f = Filter::new(Some(10), None, None);
        assert!(f.matches(&ev(Kind::VmPut, 10, None)));
        assert!(!f.matches(&ev(Kind::VmPut, 11, None)));
        let mut f = Filter::new(None, Some("qemu".into()), None);
        assert!(f.matches(&ev(Kind::VmPut, 11, None)));
        let mut e = ev(Kind::VmPut, 11, None);
        e.comm = "bash".into();
        assert!(!f.matches(&e));
    }
}
