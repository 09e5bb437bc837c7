//! `kvscope run`'s verdict for CI readers: JUnit XML and TAP version 13, one
//! test case per line of the verdict (the command, coverage, each finding
//! kind on each subject).
use std::fmt::Write as _;

/// One test case.
pub struct Case {
    /// What it checks: `command`, `coverage`, or a finding kind.
    pub class: String,
    /// Of what: the command line, a VM's name, `host`.
    pub name: String,
    pub outcome: Outcome,
    /// The findings' text and stacks (or what else explains the outcome).
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Failed: findings at or above `--fail-on`, or the command failed.
    Fail(String),
    /// The check itself is incomplete (events lost, a blind gap).
    Error(String),
}

/// The run as a whole, for the suite's attributes.
pub struct Suite<'a> {
    pub name: &'a str,
    pub hostname: &'a str,
    /// RFC 3339, when the run started.
    pub timestamp: &'a str,
    pub seconds: f64,
    pub properties: &'a [(&'a str, String)],
}

pub fn junit(suite: &Suite, cases: &[Case]) -> String {
    let failures = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
        .count();
    let errors = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Error(_)))
        .count();
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\"",
        cases.len(),
        suite.seconds
    );
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(o, "<testsuites name=\"kvscope run\" {counts}>");
    let _ = writeln!(
        o,
        "  <testsuite name=\"{}\" {counts} skipped=\"0\" timestamp=\"{}\" hostname=\"{}\">",
        xml(suite.name),
        xml(suite.timestamp),
        xml(suite.hostname)
    );
    o.push_str("    <properties>\n");
    for (k, v) in suite.properties {
        let _ = writeln!(
            o,
            "      <property name=\"{}\" value=\"{}\"/>",
            xml(k),
            xml(v)
        );
    }
    o.push_str("    </properties>\n");
    for c in cases {
        let _ = write!(
            o,
            "    <testcase classname=\"kvscope.{}\" name=\"{}\" time=\"0\"",
            xml(&c.class),
            xml(&c.name)
        );
        let (tag, message) = match &c.outcome {
            Outcome::Pass if c.body.is_empty() => {
                o.push_str("/>\n");
                continue;
            }
            Outcome::Pass => {
                let _ = writeln!(
                    o,
                    ">\n      <system-out>{}</system-out>\n    </testcase>",
                    xml(&c.body)
                );
                continue;
            }
            Outcome::Fail(m) => ("failure", m),
            Outcome::Error(m) => ("error", m),
        };
        let _ = writeln!(
            o,
            ">\n      <{tag} message=\"{}\" type=\"{}\">{}</{tag}>\n    </testcase>",
            xml(message),
            xml(&c.class),
            xml(&c.body)
        );
    }
    o.push_str("  </testsuite>\n</testsuites>\n");
    o
}

/// TAP version 13: `ok`/`not ok` per case, a YAML block with the message
/// and body where there is one.
pub fn tap(cases: &[Case]) -> String {
    let mut o = format!("TAP version 13\n1..{}\n", cases.len());
    for (i, c) in cases.iter().enumerate() {
        let (ok, message) = match &c.outcome {
            Outcome::Pass => ("ok", None),
            Outcome::Fail(m) | Outcome::Error(m) => ("not ok", Some(m)),
        };
        let _ = writeln!(
            o,
            "{ok} {} - {}: {}",
            i + 1,
            tap_text(&c.class),
            tap_text(&c.name)
        );
        if message.is_none() && c.body.is_empty() {
            continue;
        }
        o.push_str("  ---\n");
        if let Some(m) = message {
            let _ = writeln!(o, "  message: {}", yaml_string(m));
        }
        if !c.body.is_empty() {
            o.push_str("  detail: |\n");
            for line in c.body.lines() {
                let line: String = line
                    .chars()
                    .map(|c| if c < ' ' && c != '\t' { '?' } else { c })
                    .collect();
                let _ = writeln!(o, "    {line}");
            }
        }
        o.push_str("  ...\n");
    }
    o
}

/// Text for an attribute or element: escaped, and without the control
/// characters XML 1.0 cannot carry.
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// A test line's text: one line, `#` escaped (it starts a directive).
fn tap_text(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('#', "\\#")
}

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> Vec<Case> {
        vec![
            Case {
                class: "command".into(),
                name: "sh -c 'exit 0' # <&>".into(),
                outcome: Outcome::Pass,
                body: String::new(),
            },
            Case {
                class: "unbalanced-put".into(),
                name: "VM a\"b".into(),
                outcome: Outcome::Fail("1 finding at error".into()),
                body: "!! unbalanced-put\n   stack #1:\n     vfio_\u{1}x".into(),
            },
            Case {
                class: "coverage".into(),
                name: "every event seen".into(),
                outcome: Outcome::Error("3 events lost".into()),
                body: String::new(),
            },
        ]
    }

    #[test]
    fn junit_counts_and_escapes() {
        let s = Suite {
            name: "kvscope run: x",
            hostname: "h",
            timestamp: "2026-12-03T00:00:00Z",
            seconds: 1.5,
            properties: &[("kernel", "6.12".into())],
        };
        let x = junit(&s, &cases());
        assert!(x.contains("tests=\"3\" failures=\"1\" errors=\"1\""), "{x}");
        assert!(
            x.contains("name=\"sh -c &apos;exit 0&apos; # &lt;&amp;&gt;\""),
            "{x}"
        );
        assert!(x.contains("name=\"VM a&quot;b\""), "{x}");
        assert!(x.contains("vfio_?x"), "control characters go: {x}");
        assert!(!x.contains('\u{1}'));
    }

    #[test]
    fn tap_numbers_every_case_and_escapes_hashes() {
        let t = tap(&cases());
        assert!(t.starts_with("TAP version 13\n1..3\n"), "{t}");
        assert!(
            t.contains("ok 1 - command: sh -c 'exit 0' \\# <&>\n"),
            "{t}"
        );
        assert!(t.contains("not ok 2 - unbalanced-put: VM a\"b\n  ---\n  message: \"1 finding at error\"\n  detail: |\n    !! unbalanced-put\n"), "{t}");
        assert!(t.contains("not ok 3 - coverage: every event seen\n"), "{t}");
    }
}
