//! Shipped artefacts: alert rules (promtool), the systemd unit
//! (systemd-analyze verify), and the dashboard and rules against the daemon's
//! real metric registry.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use kvscope::service::metrics::Metrics;

mod common;
use common::tool;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric families referenced by PromQL in a text (suffixes of histograms and
/// the `up` series of Prometheus itself aside).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("kvscope_") {
        let start = i + p;
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        let mut name = &text[start..end];
        for suf in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suf) {
                name = n;
            }
        }
        out.insert(name.to_owned());
        i = end;
    }
    out
}

#[test]
fn dashboard_and_rules_use_only_exported_metrics_and_cover_them_all() {
    let exported: BTreeSet<String> = Metrics::new().names().into_iter().collect();
    assert!(exported.len() >= 18, "{exported:?}");
    let dash = std::fs::read_to_string(repo().join("dashboards/kvscope-grafana.json")).unwrap();
    let rules = std::fs::read_to_string(repo().join("dashboards/kvscope-alerts.yml")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut exprs = String::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let in_dash = referenced(&exprs);
    let in_rules = referenced(&rules);
    for m in in_dash.iter().chain(in_rules.iter()) {
        assert!(
            exported.contains(m),
            "{m} is queried but the daemon does not export it"
        );
    }
    // Every exported metric has a panel (no metric is exempt today).
    for m in &exported {
        assert!(in_dash.contains(m), "{m} has no panel on the dashboard");
    }
    // Current schema, a datasource variable and an instance variable.
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<(&str, &str)> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert!(vars.contains(&("datasource", "datasource")), "{vars:?}");
    assert!(vars.contains(&("instance", "query")), "{vars:?}");
    // Every metric has HELP text.
    for (name, help) in Metrics::new().describe() {
        assert!(!help.trim().is_empty(), "{name} has no HELP");
    }
}

/// Runs `c`, failing the test with its output unless it succeeds.
fn succeeds(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    if !tool("promtool") {
        return;
    }
    succeeds(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo().join("dashboards/kvscope-alerts.yml")),
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if !tool("systemd-analyze") {
        return;
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(repo().join("packaging/kvscope.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/kvscope daemon"));
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    let dir = std::env::temp_dir().join(format!("kvscope-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kvscope.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kvscope", env!("CARGO_BIN_EXE_kvscope")),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("kvscope.service:"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The alert rules as (name, block text).
fn rule_blocks() -> Vec<(String, String)> {
    let rules = std::fs::read_to_string(repo().join("dashboards/kvscope-alerts.yml")).unwrap();
    rules
        .split("- alert: ")
        .skip(1)
        .map(|b| {
            let name = b.lines().next().unwrap().trim().to_owned();
            (name, b.to_owned())
        })
        .collect()
}

#[test]
fn every_critical_and_error_finding_kind_alerts_with_a_runbook_in_the_readme() {
    use kvscope::engine::{FindingKind, Severity};
    let blocks = rule_blocks();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for k in FindingKind::ALL {
        if !matches!(k.severity(), Severity::Critical | Severity::Error) {
            continue;
        }
        let sel = format!("kind=\"{}\"", k.id());
        let (name, block) = blocks
            .iter()
            .find(|(_, b)| b.contains(&sel))
            .unwrap_or_else(|| panic!("no alert rule for {} findings", k.id()));
        let label = format!("severity: {}", k.severity().name());
        assert!(block.contains(&label), "{name}: not labelled {label}");
    }
    for (name, block) in &blocks {
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = url
            .trim_matches('"')
            .strip_prefix("README.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not a README anchor"));
        assert!(
            readme.contains(&format!("<a id=\"{anchor}\"></a>")),
            "{name}: README has no anchor {anchor}"
        );
    }
    // KvscopeDown's job is the one the README's scrape config names.
    let down = &blocks.iter().find(|(n, _)| n == "KvscopeDown").unwrap().1;
    assert!(down.contains("up{job=\"kvscope\"}"));
    assert!(
        readme.contains("job_name: kvscope"),
        "README lacks the scrape config"
    );
}

#[test]
fn rules_fire_on_findings_and_not_on_roles_a_kernel_line_lacks() {
    if !tool("promtool") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvscope-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = repo().join("dashboards/kvscope-alerts.yml");
    // A healthy 6.12 host: vm-created does not exist there (inlined), so the
    // daemon exports 0 for it; one get-after-zero finding at minute 2.
    let test = format!(
        r#"rule_files: ["{rules}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'kvscope_role_missing{{instance="h",job="kvscope",role="vm-created"}}'
        values: '0x40'
      - series: 'kvscope_findings_total{{instance="h",job="kvscope",kind="get-after-zero",severity="critical"}}'
        values: '0 0 1 1 1'
      - series: 'kvscope_domain_zombie_vms{{instance="h",job="kvscope",domain="lab-a"}}'
        values: '0 1 1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 8m
        alertname: KvscopeZombieVM
        exp_alerts:
          - exp_labels: {{instance: h, job: kvscope, domain: lab-a, severity: warning}}
            exp_annotations:
              summary: "h: 1 VM(s) of lab-a closed but not destroyed"
              description: "A VM's fd was closed but kvm_destroy_vm never ran. `kvscope` findings (zombie-vm) name who still holds references."
              runbook_url: "README.md#runbook-zombie-vm"
      - eval_time: 3m
        alertname: KvscopeZombieVM
        exp_alerts: []
      - eval_time: 40m
        alertname: KvscopeRolesMissing
        exp_alerts: []
      - eval_time: 3m
        alertname: KvscopeGetAfterZero
        exp_alerts:
          - exp_labels: {{instance: h, job: kvscope, kind: get-after-zero, severity: critical}}
            exp_annotations:
              summary: "h: a reference was taken on a VM whose count had reached 0"
              description: "A use-after-free in the making: something took a reference on a VM that was being or had been destroyed. The get-after-zero finding names the holder and its stack."
              runbook_url: "README.md#runbook-get-after-zero"
"#,
        rules = rules.display()
    );
    let path = dir.join("test.yml");
    std::fs::write(&path, test).unwrap();
    succeeds(Command::new("promtool").args(["test", "rules"]).arg(&path));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dashboard_has_thresholds_a_tier_mapping_and_instant_tables() {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("dashboards/kvscope-grafana.json")).unwrap(),
    )
    .unwrap();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        let defaults = &p["fieldConfig"]["defaults"];
        match p["type"].as_str().unwrap() {
            "table" => {
                for t in p["targets"].as_array().unwrap() {
                    assert_eq!(
                        t["instant"], true,
                        "{title}: a table of current values needs an instant query"
                    );
                }
            }
            _ => assert!(
                defaults["thresholds"]["steps"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty()),
                "{title}: no thresholds"
            ),
        }
        if title.starts_with("Tier") {
            let m = &defaults["mappings"][0]["options"];
            for v in ["0", "1", "2", "3"] {
                assert!(m[v]["text"].is_string(), "{title}: tier {v} has no text");
            }
        }
    }
}
