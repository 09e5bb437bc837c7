//! Findings: what the engine concludes, with a stable kind id, a severity, the
//! objects and threads involved, evidence, and first/last/count when repeated.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    GetAfterZero,
    GetSafeFailed,
    UnbalancedPut,
    LeakedRef,
    ZombieVm,
    DestroyUnderLock,
    SelfDeadlock,
    LockOrderInversion,
    LongWait,
    LongHold,
}

impl FindingKind {
    pub const ALL: &'static [FindingKind] = &[
        FindingKind::GetAfterZero,
        FindingKind::GetSafeFailed,
        FindingKind::UnbalancedPut,
        FindingKind::LeakedRef,
        FindingKind::ZombieVm,
        FindingKind::DestroyUnderLock,
        FindingKind::SelfDeadlock,
        FindingKind::LockOrderInversion,
        FindingKind::LongWait,
        FindingKind::LongHold,
    ];

    /// Each kind has one severity: a fact of the kind, not of the finding.
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::GetAfterZero | FindingKind::SelfDeadlock => Severity::Critical,
            FindingKind::UnbalancedPut
            | FindingKind::LeakedRef
            | FindingKind::LockOrderInversion => Severity::Error,
            FindingKind::ZombieVm
            | FindingKind::DestroyUnderLock
            | FindingKind::LongWait
            | FindingKind::LongHold => Severity::Warning,
            FindingKind::GetSafeFailed => Severity::Info,
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            FindingKind::GetAfterZero => "get-after-zero",
            FindingKind::GetSafeFailed => "get-safe-failed",
            FindingKind::UnbalancedPut => "unbalanced-put",
            FindingKind::LeakedRef => "leaked-ref",
            FindingKind::ZombieVm => "zombie-vm",
            FindingKind::DestroyUnderLock => "destroy-under-lock",
            FindingKind::SelfDeadlock => "self-deadlock",
            FindingKind::LockOrderInversion => "lock-order-inversion",
            FindingKind::LongWait => "long-wait",
            FindingKind::LongHold => "long-hold",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// A thread as the finding names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    /// One line, plain words.
    pub summary: String,
    /// Objects by role: ("kvm", addr), ("device", addr), ("lock", addr)...
    /// In JSON as `[["kvm", "0x..."], ...]`.
    #[serde(with = "crate::hexaddr::pairs")]
    pub objects: Vec<(String, u64)>,
    /// Lock classes involved, by name.
    pub locks: Vec<String>,
    pub threads: Vec<Thread>,
    /// Multi-line evidence: timeline excerpt, lockdep-style report.
    pub detail: Vec<String>,
    pub stacks: Vec<u32>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
    /// Identity for deduplication: same key, same finding repeated.
    #[serde(skip)]
    pub key: String,
}

impl Finding {
    pub fn object(&self, role: &str) -> Option<u64> {
        self.objects
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, a)| *a)
    }
}
