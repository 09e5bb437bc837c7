//! Man pages from the CLI definitions: `kvscope(1)` with what every command
//! shares (exit status, environment, files) and one `kvscope-COMMAND(1)` per
//! command with its options and examples, as git and perf ship theirs.
use std::fmt::Write as _;

use clap::CommandFactory as _;

use super::cli::Cli;

/// (file name, roff text) of every page: kvscope.1, then kvscope-COMMAND.1.
pub fn pages() -> anyhow::Result<Vec<(String, String)>> {
    let root = root_command();
    let mut out = vec![("kvscope.1".to_owned(), page_of(root.clone(), true)?)];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kvscope-{}", sub.get_name());
        let cmd = sub
            .clone()
            .name(name.clone())
            .bin_name(name.replace('-', " "));
        out.push((format!("{name}.1"), page_of(cmd, false)?));
    }
    Ok(out)
}

/// The page of `kvscope` or of one of its commands.
pub fn page(command: Option<&str>) -> anyhow::Result<String> {
    let want = command.map_or("kvscope.1".to_owned(), |c| format!("kvscope-{c}.1"));
    let all = pages()?;
    let names: Vec<&str> = all.iter().map(|(n, _)| n.trim_end_matches(".1")).collect();
    all.iter()
        .find(|(n, _)| *n == want)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no man page {}: the pages are {}",
                want.trim_end_matches(".1"),
                names.join(", ")
            )
        })
}

fn root_command() -> clap::Command {
    let mut c = Cli::command().disable_help_subcommand(true);
    c.build();
    c
}

fn page_of(cmd: clap::Command, root: bool) -> anyhow::Result<String> {
    let examples = cmd.get_after_help().map(ToString::to_string);
    let sub_names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect();
    // Examples get a section of their own, not clap's EXTRA.
    let man = clap_mangen::Man::new(cmd.clone().after_help("").after_long_help(""));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if root {
        man.render_subcommands_section(&mut out)?;
    }
    let mut s = String::from_utf8(out)?;
    section(&mut s, "EXIT STATUS", EXIT_STATUS);
    if root {
        section(&mut s, "ENVIRONMENT", ENVIRONMENT);
        section(&mut s, "FILES", FILES);
    }
    if let Some(e) = examples.filter(|e| !e.trim().is_empty()) {
        let body = e.trim_start_matches("Examples:").trim_matches('\n');
        let _ = writeln!(s, ".SH EXAMPLES\n.nf");
        for line in body.lines() {
            let _ = writeln!(s, "{}", escape(line.trim_start()));
        }
        let _ = writeln!(s, ".fi");
    }
    let see: Vec<String> = if root {
        sub_names
            .iter()
            .map(|n| format!("kvscope-{n}(1)"))
            .collect()
    } else {
        vec!["kvscope(1)".into()]
    };
    section(&mut s, "SEE ALSO", &see.join(", "));
    Ok(s)
}

const EXIT_STATUS: &str = "0: done. 1: an error (one line on standard error names it and the fix), or a damaged recording without --salvage. 2: a bad command line. 3: replay or report with --fail-on, a finding at least that severe (after the output). kvscope run: the command's own status when it failed (128+N when killed by signal N); 90 when findings of its process tree reach --fail-on; 91 when the check was incomplete (events lost, a blind gap, delivery not verified); 125 when kvscope itself failed; 126 and 127 when the command cannot be executed or is not found; 130 when stopped before the command ran.";

const ENVIRONMENT: &str = "KVSCOPE_LOG: as --log (off, error, warn, info, debug, trace, or target=level directives). KVSCOPE_BTF: as --btf, a colon-separated list of module BTF files for kernels before 5.11. TMPDIR: where kvscope run keeps its recording (a private directory of its own) unless -o is given.";

const FILES: &str = "/etc/kvscope/kvscope.toml: the daemon's configuration (every key with its default; kvscope config check FILE validates one). /var/lib/kvscope/findings.jsonl: the daemon's findings, one JSON object per line, rotated. /usr/share/kvscope/dashboards/: the Grafana dashboard and the Prometheus alert rules. Recordings, reports and findings files are created 0600 unless --share (share_files): they hold kernel addresses and stacks.";

/// A section of one paragraph.
fn section(s: &mut String, title: &str, text: &str) {
    let _ = writeln!(s, ".SH \"{title}\"");
    for sentence in text.split(". ") {
        let _ = writeln!(s, "{}", escape(sentence.trim_end_matches('.')) + ".");
    }
}

/// roff text: backslashes escaped, no line starting with a control character.
fn escape(line: &str) -> String {
    let l = line.replace('\\', "\\e").replace('-', "\\-");
    if l.starts_with('.') || l.starts_with('\'') {
        format!("\\&{l}")
    } else {
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_command_with_exit_status_and_examples() {
        let all = pages().unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        for n in [
            "kvscope.1",
            "kvscope-trace.1",
            "kvscope-run.1",
            "kvscope-manpage.1",
        ] {
            assert!(names.contains(&n), "{names:?}");
        }
        let root = &all[0].1;
        for s in [
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "EXAMPLES",
            "kvscope\\-run(1)",
        ] {
            assert!(root.contains(s), "{s} missing from kvscope.1");
        }
        assert!(!root.contains(".SH EXTRA"));
        let run = page(Some("run")).unwrap();
        assert!(
            run.contains("\\-\\-fail\\-on"),
            "the run page lists its options"
        );
        assert!(run.contains(".SH EXAMPLES"));
        assert!(
            page(Some("nope"))
                .unwrap_err()
                .to_string()
                .contains("kvscope-trace")
        );
    }
}
