//! Load and attach errors as one line a user can act on.

/// An error with its causes on one line (aya's load errors carry the errno in
/// the source chain).
pub fn reason(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    log::debug!("{s}");
    // Verifier logs can be long: the first line names the call that failed,
    // the log's last line what the verifier refused (its first lines can be
    // noise, as BTF notes on a 5.10 kernel are). The whole log at debug.
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first: String = lines.next().unwrap_or("").chars().take(300).collect();
    // The verifier's own last words come before its statistics and the
    // error chain's tail (": Permission denied").
    let tail = ["verification time", "stack depth", "processed ", ":"];
    match lines.rev().find(|l| !tail.iter().any(|t| l.starts_with(t))) {
        Some(last) => format!("{first} ... {}", last.chars().take(200).collect::<String>()),
        None => first,
    }
}

#[cfg(test)]
mod tests {
    /// A verifier refusal on a 5.10 kernel: its first line is BTF noise, its
    /// reason near the end, before the statistics and the errno.
    #[test]
    fn a_verifier_refusal_is_told_by_its_last_words() {
        #[derive(Debug)]
        struct E(&'static str);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {}
        let e = E(
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: arg#0 type is not a struct\n 212: (b7) r1 = 1\ninvalid read from stack R10 off=-176 size=8\nverification time 190367 usec\nstack depth 192+0\nprocessed 2287 insns (limit 1000000)\n: Permission denied (os error 13)",
        );
        let r = super::reason(&e);
        assert!(
            r.starts_with("the BPF_PROG_LOAD syscall returned Permission denied"),
            "{r}"
        );
        assert!(
            r.ends_with("... invalid read from stack R10 off=-176 size=8"),
            "{r}"
        );
        assert_eq!(super::reason(&E("one line")), "one line");
    }
}
