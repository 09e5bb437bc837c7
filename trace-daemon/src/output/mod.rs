//! Rendering at the edge: everything here is a pure function of the engine's
//! data and the recording's metadata (text, JSON, HTML, Perfetto).
pub mod ci_results;
pub mod event_line;
pub mod finding_text;
pub mod html;
pub mod perfetto;
pub mod report;
pub mod wall;

/// `1 VM`, `2 VMs`: a count with its noun in the number it takes.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// ` (kvm.lock 1: released by a thread not seen taking them)` after the
/// count of unmatched lock releases, or nothing when there are none.
pub fn unmatched_releases(a: &crate::engine::Anomalies) -> String {
    if a.unmatched_release == 0 {
        return String::new();
    }
    format!(
        " ({}: released by a thread not seen taking them)",
        by_class(&a.unmatched_release_by_class)
    )
}

/// Counts per lock class as prose: `kvm.lock 2, vfio_group.group_lock 1`.
pub fn by_class(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_take_their_number() {
        assert_eq!(super::count(1, "VM", "VMs"), "1 VM");
        assert_eq!(super::count(0, "VM", "VMs"), "0 VMs");
        assert_eq!(super::count(2, "finding", "findings"), "2 findings");
        let m = [
            ("kvm.lock".to_owned(), 2),
            ("vfio_device_set.lock".to_owned(), 1),
        ]
        .into();
        assert_eq!(super::by_class(&m), "kvm.lock 2, vfio_device_set.lock 1");
    }
}
