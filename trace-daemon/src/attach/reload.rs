//! Watched modules changed (kvm, vfio and their drivers, unloaded or loaded
//! again): kvscope attaches again by the same rules as at start, and the time
//! it saw nothing is a gap that every output says.
use std::time::Duration;

use super::{
    live::{Session, Signals, Sink, Stats, attach, mono_now_ns, run},
    loader::LoadOptions,
};
use crate::recording::Gap;

/// [`run`], attaching again (`attach_again`) each time watched modules
/// change, until a stop. The totals over every session, and the last session
/// (None when a stop came while attaching again).
pub async fn run_across_reloads(
    mut session: Session,
    sink: &mut dyn Sink,
    interval: Duration,
    load: &LoadOptions,
    signals: &mut Signals,
) -> anyhow::Result<(Option<Session>, Stats)> {
    let mut total = Stats::default();
    loop {
        let run = run(&mut session, sink, interval, signals).await?;
        total.events += run.events;
        total.undecodable += run.undecodable;
        total.lost += run.lost;
        if run.reattach.is_empty() {
            return Ok((Some(session), total));
        }
        // The old session's last counts, before its maps go.
        let lost = session.probes.lost().unwrap_or_default();
        sink.tick(&session, &lost, mono_now_ns())?;
        let (next, gap) = attach_again(session, load, &run, signals).await?;
        sink.blind(&run.reattach, &gap, next.as_ref())?;
        match next {
            Some(s) => session = s,
            None => {
                eprintln!("kvscope: stopped while attaching again");
                return Ok((None, total));
            }
        }
    }
}

/// Attaches again after watched modules changed (`stats.reattach`), by the
/// same rules as at start: kallsyms, BTF, offsets and the plan read anew for
/// the new module instances, the old programs detached first. What went
/// unseen is the gap, from the last look that found the modules as before
/// until attached again; it is said on stderr, and the caller records it.
/// The session is None when a stop came while attaching.
pub async fn attach_again(
    old: Session,
    load: &LoadOptions,
    stats: &Stats,
    signals: &mut Signals,
) -> anyhow::Result<(Option<Session>, Gap)> {
    let why: Vec<String> = stats.reattach.iter().map(ToString::to_string).collect();
    let why = why.join(", ");
    eprintln!("kvscope: {why}: attaching again; blind until attached");
    let mut load = load.clone();
    load.lock_watch = old.lock_watch;
    // Dropped, not closed for an exit: its BTF and symbol tables are freed
    // (kept, each attach again would hold another hundred MB: seen in the
    // host lab as 400 MB in the unit's cgroup after three).
    drop(old);
    let session = attach_retrying(&load, signals).await;
    let gap = Gap {
        from_ns: stats.unchanged_ns,
        to_ns: mono_now_ns(),
        why,
    };
    if let Ok(Some(s)) = &session {
        s.announce(&format!(
            "attached again after {}: blind {} ms",
            gap.why,
            (gap.to_ns - gap.from_ns) / 1_000_000
        ));
    }
    Ok((session?, gap))
}

/// Tries of [`attach_retrying`], a second apart.
const ATTACH_TRIES: u32 = 10;

/// Attaches, trying again a second later when it fails: modules may still be
/// coming or going (modprobe loads one after another, and a module's BTF or
/// symbols can vanish while they are read), and a daemon must not die of a
/// reload it was built to follow. Each failure is said; the last one is
/// returned.
async fn attach_retrying(
    load: &LoadOptions,
    signals: &mut Signals,
) -> anyhow::Result<Option<Session>> {
    let mut tries = 1;
    loop {
        match attach(load, signals).await {
            Err(e) if tries < ATTACH_TRIES => {
                eprintln!("kvscope: attaching again failed ({e:#}); trying again in 1 s");
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            r => return r,
        }
    }
}
