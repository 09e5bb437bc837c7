//! What a `kvscope run` concludes: test cases (the command, coverage, each
//! finding kind on each subject) and the exit status they make.
use std::collections::BTreeMap;

use super::child::Exit;
use crate::{
    engine::{Finding, FindingKind, ObjectRole, Severity},
    output::ci_results::{Case, Outcome},
    output::report::{Report, finding_text_with},
    output::wall::Clock,
    recording::{Loaded, Stack},
};

/// Exit status when findings reach `--fail-on`. Not `replay`'s 3: kselftest
/// gives 0-4 their own meanings (4 is a skip, 3 an unexpected pass), and
/// 124-165 belong to timeout and the shells.
pub const EXIT_FINDINGS: u8 = 90;
/// Exit status when the check was incomplete: events lost, a blind gap,
/// delivery not verified, a damaged recording.
pub const EXIT_INCOMPLETE: u8 = 91;
/// Exit status when kvscope itself failed (as `timeout` does).
pub const EXIT_KVSCOPE_FAILED: u8 = 125;

/// Why the check may have missed something (nothing: complete).
pub fn coverage_gaps(l: &Loaded) -> Vec<String> {
    let mut why = Vec::new();
    let lost: u64 = l.lost.values().sum();
    if lost > 0 {
        why.push(format!("{lost} events lost (raise --ring-bytes)"));
    }
    for g in &l.gaps {
        why.push(g.summary(l.header.mono_start_ns));
    }
    if let Some(w) = l.header.delivery.warning() {
        why.push(w);
    }
    if let Some(d) = &l.damage {
        why.push(format!("the recording is damaged ({d})"));
    }
    why
}

/// The cases, in order: the command, coverage, then each finding kind.
pub fn cases(
    line: &str,
    exit: Exit,
    gaps: &[String],
    report: &Report,
    stacks: &BTreeMap<u32, Stack>,
    clock: Option<&Clock>,
    fail_on: Severity,
) -> Vec<Case> {
    let mut out = vec![Case {
        class: "command".into(),
        name: line.to_owned(),
        outcome: if exit.failed() {
            Outcome::Fail(exit.describe())
        } else {
            Outcome::Pass
        },
        body: String::new(),
    }];
    out.push(Case {
        class: "coverage".into(),
        name: "every event seen".into(),
        outcome: if gaps.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Error(gaps.join("; "))
        },
        body: String::new(),
    });
    for kind in FindingKind::ALL {
        out.extend(kind_cases(*kind, report, stacks, clock, fail_on));
    }
    out
}

/// One case per subject (VM, or the host's locks) with findings of `kind`;
/// one passing case when there is none.
fn kind_cases(
    kind: FindingKind,
    report: &Report,
    stacks: &BTreeMap<u32, Stack>,
    clock: Option<&Clock>,
    fail_on: Severity,
) -> Vec<Case> {
    let mut by_subject: BTreeMap<String, Vec<&Finding>> = BTreeMap::new();
    for f in report.findings.iter().filter(|f| f.kind == kind) {
        by_subject.entry(subject(f)).or_default().push(f);
    }
    if by_subject.is_empty() {
        return vec![Case {
            class: kind.id().into(),
            name: "no finding".into(),
            outcome: Outcome::Pass,
            body: String::new(),
        }];
    }
    by_subject
        .into_iter()
        .map(|(name, fs)| {
            let body: String = fs
                .iter()
                .map(|f| finding_text_with(f, stacks, clock))
                .collect();
            let n: u64 = fs.iter().map(|f| f.count).sum();
            let severity = kind.severity();
            let message = format!(
                "{n} {} [{}] at or above --fail-on",
                kind.id(),
                severity.name()
            );
            Case {
                class: kind.id().into(),
                name,
                outcome: if severity >= fail_on {
                    Outcome::Fail(message)
                } else {
                    Outcome::Pass
                },
                body,
            }
        })
        .collect()
}

/// What a finding is about, as an operator names it.
fn subject(f: &Finding) -> String {
    match (f.object(ObjectRole::Kvm), &f.vm_name) {
        (Some(a), Some(n)) => format!("VM {n} ({a:#x})"),
        (Some(a), None) => format!("VM {a:#x}"),
        (None, _) => "host".into(),
    }
}

/// The run's exit status: the command's failure first (never hidden), then
/// findings at `--fail-on`, then an incomplete check.
pub fn exit_status(exit: Exit, cases: &[Case]) -> u8 {
    if exit.failed() {
        return exit.status();
    }
    let failed = |c: &&Case| matches!(c.outcome, Outcome::Fail(_));
    let errored = |c: &&Case| matches!(c.outcome, Outcome::Error(_));
    if cases.iter().any(|c| c.class != "command" && failed(&c)) {
        EXIT_FINDINGS
    } else if cases.iter().any(|c| errored(&c)) {
        EXIT_INCOMPLETE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(class: &str, outcome: Outcome) -> Case {
        Case {
            class: class.into(),
            name: "x".into(),
            outcome,
            body: String::new(),
        }
    }

    #[test]
    fn the_commands_failure_comes_first_then_findings_then_coverage() {
        let finding = case("unbalanced-put", Outcome::Fail("1".into()));
        let lost = case("coverage", Outcome::Error("lost".into()));
        let ok = case("command", Outcome::Pass);
        assert_eq!(exit_status(Exit::Code(0), &[]), 0);
        assert_eq!(exit_status(Exit::Code(7), &[]), 7);
        let both = [case("command", Outcome::Fail("x".into())), finding];
        assert_eq!(exit_status(Exit::Code(7), &both), 7);
        assert_eq!(exit_status(Exit::Code(0), &both[1..]), EXIT_FINDINGS);
        assert_eq!(exit_status(Exit::Code(0), &[ok, lost]), EXIT_INCOMPLETE);
        assert_eq!(exit_status(Exit::Signal(9), &[]), 137);
    }
}
