//! `kvscope run -- CMD`: a sanitizer for kernel CI. Attach, wait until ready,
//! run the command (streams passed through, signals forwarded), wait for its
//! whole process tree, detach, and judge: the findings that involve the tree
//! (or the host's, `--all`), as text on stderr, JUnit XML and TAP. The exit
//! status keeps the command's failure and adds kvscope's own.
mod child;
mod tree;
pub mod verdict;

use std::{
    collections::HashSet,
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicI32},
    time::Duration,
};

use crate::{
    attach::{forward::Forwarder, live::Signals, loader::LoadOptions},
    commands::{offline, record},
    engine::Severity,
    output::{ci_results, wall::Clock},
};

pub use child::Exit;
pub use verdict::{EXIT_FINDINGS, EXIT_INCOMPLETE, EXIT_KVSCOPE_FAILED};

pub struct RunOptions {
    pub argv: Vec<OsString>,
    pub load: LoadOptions,
    pub fail_on: Severity,
    pub junit: Option<PathBuf>,
    /// TAP to this file, or to standard output when `-`.
    pub tap: Option<PathBuf>,
    /// Keep the recording here (else a private temporary file, removed).
    pub output: Option<PathBuf>,
    /// Judge every finding on the host, not only the command's tree's.
    pub all: bool,
    pub share: bool,
    /// How long the tree's other processes are waited for after the command.
    pub tree_grace: Duration,
    /// How long kvscope still records after the tree ended.
    pub settle: Duration,
}

impl record::Workload for child::Command {
    fn start(&mut self) {
        child::Command::start(self);
    }
    fn finished(&mut self) -> bool {
        child::Command::finished(self)
    }
    fn describe(&self) -> String {
        format!("running {}", self.line())
    }
}

/// Runs the command under kvscope; the exit status to return.
pub async fn run(opts: RunOptions) -> anyhow::Result<u8> {
    let pid = Arc::new(AtomicI32::new(0));
    let signals = Signals::forwarding(Forwarder::install(pid.clone())?);
    let mut cmd = child::Command::new(opts.argv.clone(), pid, opts.tree_grace, opts.settle);
    let recording = Recording::new(opts.output.clone())?;
    let ropts = record::RecordOptions {
        output: recording.path.clone(),
        duration: None,
        load: opts.load.clone(),
        share: opts.share,
    };
    record::run(ropts, signals, Some(&mut cmd)).await?;
    let Some(exit) = cmd.exit() else {
        eprintln!("kvscope: stopped before {} ran", cmd.line());
        return Ok(130);
    };
    cmd.conclude();
    if !cmd.left_running.is_empty() {
        eprintln!(
            "kvscope: {} process(es) of the command's tree still running {} s after it ended, not waited for (pids {:?}): their later events are not judged",
            cmd.left_running.len(),
            opts.tree_grace.as_secs(),
            cmd.left_running
        );
    }
    let scope = match (opts.all, cmd.tree.incomplete()) {
        (true, _) => Scope::All,
        (false, None) => Scope::Tree(cmd.tree.members()),
        (false, Some(why)) => {
            eprintln!(
                "kvscope: the command's process tree is not known in full ({why}): every finding on the host is judged, as with --all"
            );
            Scope::All
        }
    };
    let run = Run {
        line: cmd.line(),
        exit,
        seconds: cmd.elapsed().as_secs_f64(),
        fail_on: opts.fail_on,
    };
    let j = judge(&recording.path, &scope, &run)?;
    eprint!("{}", j.text);
    if let Some(p) = &opts.junit {
        write_file(p, &j.junit, opts.share)?;
    }
    match opts.tap.as_deref() {
        Some(p) if p.as_os_str() == "-" => print!("{}", j.tap),
        Some(p) => write_file(p, &j.tap, opts.share)?,
        None => {}
    }
    eprintln!("kvscope: {}", conclusion(&run, j.status));
    Ok(j.status)
}

/// What is judged: the command's process tree (thread groups), or the host.
pub enum Scope<'a> {
    Tree(&'a HashSet<u32>),
    All,
}

/// The command as it ran.
pub struct Run {
    pub line: String,
    pub exit: Exit,
    pub seconds: f64,
    pub fail_on: Severity,
}

/// The verdict in each form, and the exit status it makes.
pub struct Judged {
    /// The report, as `report` prints it.
    pub text: String,
    pub junit: String,
    pub tap: String,
    pub status: u8,
}

/// Analyses a recording of the run: a pure function of the file, the scope
/// and the command's end.
pub fn judge(path: &Path, scope: &Scope, run: &Run) -> anyhow::Result<Judged> {
    let (l, e) = offline::analyse(path, crate::engine::Config::default())?;
    let mut report = offline::full_report(&l, &e);
    let scope_name = match scope {
        Scope::Tree(tgids) => {
            let n = tgids.len();
            let s = if n == 1 { "" } else { "es" };
            report.select_tree(
                tgids,
                format!("the command's process tree ({n} process{s})"),
            );
            "process tree"
        }
        Scope::All => "host",
    };
    let clock = Clock::of(&l.header);
    let gaps = verdict::coverage_gaps(&l);
    let cases = verdict::cases(
        &run.line,
        run.exit,
        &gaps,
        &report,
        &l.stacks,
        clock.as_ref(),
        run.fail_on,
    );
    let suite_name = format!("kvscope run: {}", run.line);
    let properties = [
        ("kernel", l.header.kernel_release.clone()),
        ("kvscope", l.header.kvscope_version.clone()),
        ("tier", l.header.tier.clone()),
        ("lock_watch", l.header.lock_watch.clone()),
        ("fail_on", run.fail_on.name().to_owned()),
        ("scope", scope_name.to_owned()),
    ];
    let timestamp = clock.map_or(String::new(), |c| c.rfc3339(l.header.mono_start_ns));
    let suite = ci_results::Suite {
        name: &suite_name,
        hostname: &l.header.hostname,
        timestamp: &timestamp,
        seconds: run.seconds,
        properties: &properties,
    };
    Ok(Judged {
        text: report.text(&l.stacks),
        junit: ci_results::junit(&suite, &cases),
        tap: ci_results::tap(&cases),
        status: verdict::exit_status(run.exit, &cases),
    })
}

fn conclusion(run: &Run, status: u8) -> String {
    let why = match status {
        0 => "no finding at or above --fail-on, nothing missed".to_owned(),
        EXIT_FINDINGS => "findings at or above --fail-on".to_owned(),
        EXIT_INCOMPLETE => "the check is incomplete (see coverage above)".to_owned(),
        _ => "the command failed".to_owned(),
    };
    format!(
        "{}: {}; exit {status}: {why}",
        run.line,
        run.exit.describe()
    )
}

fn write_file(p: &std::path::Path, text: &str, share: bool) -> anyhow::Result<()> {
    use crate::recording::private_file::{Open, mode, open};
    use std::io::Write as _;
    let mut f = open(p, Open::Truncate, mode(share))?;
    f.write_all(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))
}

/// The recording: kept where `-o` says, else in a private directory of its
/// own under $TMPDIR (0700, a new name: nothing there can be a planted
/// link), removed when the run ends.
struct Recording {
    path: PathBuf,
    temporary_dir: Option<PathBuf>,
}

impl Recording {
    fn new(output: Option<PathBuf>) -> anyhow::Result<Recording> {
        if let Some(path) = output {
            return Ok(Recording {
                path,
                temporary_dir: None,
            });
        }
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("kvscope-run.{}.{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating {}: {e} (set TMPDIR to a writable directory, or give -o FILE)",
                    dir.display()
                )
            })?;
        Ok(Recording {
            path: dir.join("run.kvs"),
            temporary_dir: Some(dir),
        })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(dir) = &self.temporary_dir {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}
