//! What xtask hands the guest (a `Suite`) and what the guest hands back (one
//! `GuestResult` JSON document on one console line after `RESULT_PREFIX`).
//! Shared by both sides: xtask depends on this crate's library for it.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The console line carrying the guest's result.
pub const RESULT_PREFIX: &str = "KVSCOPE-LAB-RESULT ";

/// Where the guest finds QEMU: xtask copies the lab's own there (with its
/// libraries and firmware) for the scenarios that drive it.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Suite {
    pub steps: Vec<Step>,
    /// KVM selftests (in /usr/bin) to run under `kvscope run`, after the steps.
    #[serde(default)]
    pub selftests: Vec<String>,
}

/// One KVM selftest under `kvscope run --fail-on info --junit`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SelftestResult {
    pub name: String,
    /// `kvscope run`'s exit status (None: it did not run).
    pub run_status: Option<i32>,
    pub junit: String,
    /// kvscope's standard error: its ready line, the report, the conclusion.
    pub kvscope_said: String,
    /// The test's own output, its last lines.
    pub output_tail: String,
}

/// One scenario: optionally the test module in a mode, then `kvscope record`
/// around `kvscope-lab-driver DRIVER...`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub id: usize,
    /// kvscope_testdev's `mode=` (None: the edu device bound to vfio-pci).
    pub testdev: Option<String>,
    pub driver: Vec<String>,
    /// `kvscope record --locks MODE` (None: the default, deep).
    #[serde(default)]
    pub locks: Option<String>,
    /// The driver is expected to block (a thread waiting for itself): kill it
    /// (SIGKILL) after this long. None: it must finish by itself.
    #[serde(default)]
    pub kill_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestResult {
    /// `kvscope check --json`, or why there is none.
    pub check: Result<Value, String>,
    pub steps: Vec<StepResult>,
    #[serde(default)]
    pub selftests: Vec<SelftestResult>,
    /// The test module's kernel messages.
    pub dmesg: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub id: usize,
    /// The step's `locks`, echoed.
    #[serde(default)]
    pub locks: Option<String>,
    /// `kvscope replay --json` of the step's recording.
    pub report: Option<Value>,
    /// `kvscope timeline --stacks` of the recording's first VM.
    pub timeline: String,
    /// What went wrong running the step (module, record, driver, replay).
    pub errors: Vec<String>,
    /// The driver's own lines.
    pub driver_output: String,
    /// Steps that end by themselves run under `kvscope run --fail-on info
    /// --junit`: its exit status (None: recorded with `record` instead)...
    #[serde(default)]
    pub run_status: Option<i32>,
    /// ... and its JUnit XML.
    #[serde(default)]
    pub junit: String,
}
