//! The README's support matrix: each kernel's last passing run (kept in the
//! cache by every passing run), written into the matrix's last column.
use crate::cmd;

/// Where passing runs leave their date, per matrix kernel.
fn passes_file() -> std::path::PathBuf {
    crate::setup::cache_dir().join("lab").join("passed.tsv")
}

fn passes() -> Vec<(String, String, String)> {
    std::fs::read_to_string(passes_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next()?.to_owned(),
            ))
        })
        .collect()
}

pub fn record_pass(kernel: &str, release: &str) -> anyhow::Result<()> {
    let date = crate::setup::output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let mut all: Vec<_> = passes().into_iter().filter(|p| p.0 != kernel).collect();
    all.push((
        kernel.to_owned(),
        release.to_owned(),
        date.trim().to_owned(),
    ));
    let text: String = all
        .iter()
        .map(|(k, r, d)| format!("{k}\t{r}\t{d}\n"))
        .collect();
    std::fs::write(passes_file(), text)?;
    Ok(())
}

/// Rewrites the last cell ("last passed") of each README support-matrix row
/// whose first cell is a matrix kernel's name, from the recorded passes.
pub fn update_readme() -> anyhow::Result<()> {
    let path = cmd::workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let passes = passes();
    let mut changed = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            for (k, r, d) in &passes {
                if l.starts_with(&format!("| {k} |")) {
                    let cells: Vec<&str> = l.trim_end_matches('|').split('|').collect();
                    if cells.len() > 2 {
                        changed += 1;
                        let keep = cells[..cells.len() - 1].join("|");
                        return format!("{keep}| {d} ({r}) |");
                    }
                }
            }
            l.to_owned()
        })
        .collect();
    std::fs::write(&path, out.join("\n") + "\n")?;
    eprintln!(
        "lab: README support matrix: {changed} rows dated from {}",
        passes_file().display()
    );
    Ok(())
}
