//! `kvscope record`: the raw stream to a file, with the stacks it refers to
//! (symbolised here) and the loss counters, for replay anywhere.
use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::BufWriter,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    attach::live::{self, Session, Signals, Sink},
    attach::loader::LoadOptions,
    attach::lost_totals::LostTotals,
    attach::modules::Change,
    event::Event,
    identity::Identity,
    recording::private_file::{self, Open},
    recording::{Gap, STACK_IDS_PER_ATTACH, VmIdentity, Writer},
};

/// What a recording waits for instead of a signal (`kvscope run`'s command).
pub trait Workload {
    /// Called once attached and ready.
    fn start(&mut self);
    /// Polled at every tick and signal: the recording ends once true.
    fn finished(&mut self) -> bool;
    /// For the ready line: what is recorded.
    fn describe(&self) -> String;
}

pub struct RecordOptions {
    pub output: PathBuf,
    pub duration: Option<Duration>,
    pub load: LoadOptions,
    /// Create the file 0644 instead of 0600.
    pub share: bool,
}

struct RecordSink<'a> {
    workload: Option<&'a mut dyn Workload>,
    w: Writer<BufWriter<File>>,
    stacks_written: HashSet<u32>,
    /// Added to stack ids: each attach's stack map starts again at 0.
    stack_base: i32,
    started: Instant,
    duration: Option<Duration>,
    /// Lost events per hook as last written.
    lost_written: BTreeMap<String, u64>,
    /// Lost events over every session of the recording.
    lost: LostTotals,
    last_drops: crate::event::drops::Drops,
    /// A progress line is on the terminal (end it before the summary).
    progress_shown: bool,
    /// Standard error is a terminal (asked once, not at every tick).
    progress: bool,
    /// For errors: which file could not be written.
    path: PathBuf,
}

impl RecordSink<'_> {
    /// Lost events per hook over the whole recording: the current session's
    /// counters and those of the sessions before.
    fn lost_so_far(&mut self, lost: &[(trace_common::HookId, u64)]) -> BTreeMap<String, u64> {
        self.lost
            .update(lost)
            .into_iter()
            .map(|(h, n)| (h.symbol().to_owned(), n))
            .collect()
    }

    /// An I/O error names the recording (`/dev/full`: "No space left on
    /// device" alone would not say where).
    fn io<T>(&self, r: std::io::Result<T>) -> anyhow::Result<T> {
        r.map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))
    }
}

impl Sink for RecordSink<'_> {
    fn event(&mut self, s: &Session, rec: &trace_common::Event, ev: &Event) -> anyhow::Result<()> {
        let mut rec = *rec;
        if rec.stack_id >= 0 {
            rec.stack_id += self.stack_base;
        }
        let r = self.w.event(&rec);
        self.io(r)?;
        if let Some(id) = ev.stack_id
            && self.stacks_written.insert(rec.stack_id as u32)
            && let Some(mut st) = s.stack(id)
        {
            st.id = rec.stack_id as u32;
            let r = self.w.stack(&st);
            self.io(r)?;
        }
        Ok(())
    }

    fn identified(&mut self, kvm: u64, created_ns: u64, id: &Identity) -> anyhow::Result<()> {
        let r = self.w.identity(&VmIdentity {
            kvm,
            created_ns,
            identity: id.clone(),
        });
        self.io(r)
    }

    /// The gap as a frame (replay, report and HTML say it); stack ids move on.
    fn blind(
        &mut self,
        _changes: &[Change],
        gap: &Gap,
        _session: Option<&Session>,
    ) -> anyhow::Result<()> {
        self.stack_base += STACK_IDS_PER_ATTACH;
        // The old session's last counts were written by the tick before it
        // closed (run_across_reloads); the new one's counters start at 0.
        self.lost.session_ended();
        let r = self.w.gap(gap).and_then(|()| self.w.flush());
        self.io(r)
    }

    fn tick(
        &mut self,
        s: &Session,
        lost: &[(trace_common::HookId, u64)],
        _now: u64,
    ) -> anyhow::Result<()> {
        let m = self.lost_so_far(lost);
        if m != self.lost_written {
            let r = self.w.lost(&m);
            self.io(r)?;
            self.lost_written = m;
        }
        if s.drops != self.last_drops {
            let r = self.w.drops(&s.drops);
            self.io(r)?;
            self.last_drops = s.drops.clone();
        }
        // Flushed every tick: a crash loses at most the last interval.
        let r = self.w.flush();
        self.io(r)?;
        // One updating line on a terminal; a log gets only the final summary.
        if self.progress {
            eprint!(
                "\rkvscope: recording: {} frames, {:.0} s\x1b[K",
                self.w.frames,
                self.started.elapsed().as_secs_f64()
            );
            self.progress_shown = true;
        }
        Ok(())
    }

    fn done(&mut self) -> bool {
        self.duration.is_some_and(|d| self.started.elapsed() >= d)
            || self.workload.as_mut().is_some_and(|w| w.finished())
    }
}

/// Records until a signal, `--duration`, or the end of `workload`.
pub async fn run(
    opts: RecordOptions,
    mut signals: Signals,
    mut workload: Option<&mut dyn Workload>,
) -> anyhow::Result<()> {
    // A path that cannot be written fails before anything is attached.
    let file = private_file::open(&opts.output, Open::Truncate, private_file::mode(opts.share))?;
    let Some(session) = live::attach(&opts.load, &mut signals).await? else {
        drop(file);
        remove_if_empty(&opts.output);
        return Ok(());
    };
    let w = Writer::create(file, &session.header())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", opts.output.display()))?;
    // A timed recording ends by itself: say when, not how to stop it.
    let ends = match (&workload, opts.duration) {
        (Some(w), _) => w.describe(),
        (None, Some(d)) => format!("for {:.0} s (Ctrl-C ends it sooner)", d.as_secs_f64()),
        (None, None) => "Ctrl-C to stop".to_owned(),
    };
    session.announce(&format!("recording to {}; {ends}", opts.output.display()));
    if let Some(w) = workload.as_mut() {
        w.start();
    }
    let mut sink = RecordSink {
        workload,
        w,
        stacks_written: HashSet::new(),
        stack_base: 0,
        started: Instant::now(),
        duration: opts.duration,
        lost_written: BTreeMap::new(),
        lost: LostTotals::default(),
        last_drops: Default::default(),
        progress_shown: false,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        path: opts.output.clone(),
    };
    let tick = Duration::from_secs(1).min(opts.duration.unwrap_or(Duration::MAX));
    let (session, stats) = crate::attach::reload::run_across_reloads(
        session,
        &mut sink,
        tick,
        &opts.load,
        &mut signals,
    )
    .await?;
    // Final loss counters and flush, then detach.
    let lost = match &session {
        Some(s) => s.probes.lost().unwrap_or_default(),
        None => Vec::new(),
    };
    let m = sink.lost_so_far(&lost);
    let r = sink.w.lost(&m).and_then(|()| sink.w.flush());
    sink.io(r)?;
    live::stop_phase("recording flushed");
    let unverified = session.as_ref().and_then(|s| s.delivery.warning());
    if let Some(s) = session {
        s.close_for_exit();
    }
    if sink.progress_shown {
        eprintln!();
    }
    eprintln!(
        "kvscope: detached; wrote {} events ({} frames) to {}; {} lost",
        stats.events,
        sink.w.frames,
        opts.output.display(),
        m.values().sum::<u64>()
    );
    if stats.events == 0
        && let Some(w) = unverified
    {
        eprintln!("kvscope: warning: no events, and {w}");
    }
    Ok(())
}

/// A recording stopped before it began holds nothing: remove the file we
/// created (a regular, empty file only, never what a link points to).
fn remove_if_empty(path: &std::path::Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}
