//! Keeps the metric names in step: every name the API and the worker record, every name the
//! alert rules and the Grafana dashboard query, and the table in docs/OPERATIONS.md, against
//! `sluice_shared::metrics::CATALOG`. The YAML is read with yaml_serde, the JSON with serde_json.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use sluice_shared::metrics::{CATALOG, Kind, is_defined};
use std::path::{Path, PathBuf};
use yaml_serde::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `sluice_…` word in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        names.push(word);
    }
    names
}

fn alert_exprs() -> Vec<(String, String)> {
    let doc: Yaml = yaml_serde::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let mut exprs = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            exprs.push((name, expr));
        }
    }
    exprs
}

#[test]
fn alerts_query_only_defined_metrics() {
    let exprs = alert_exprs();
    assert!(exprs.len() >= 4, "{exprs:?}");
    for (alert, expr) in &exprs {
        let names = names_in(expr);
        assert!(!names.is_empty(), "{alert} queries no Sluice metric");
        for name in names {
            assert!(
                is_defined(&name),
                "{alert} queries {name}, which no code defines"
            );
        }
    }
    // Each situation the alerts must cover has a rule.
    let alerts: Vec<&str> = exprs.iter().map(|(a, _)| a.as_str()).collect();
    for wanted in [
        "SluiceDeadLettersGrowing",
        "SluiceOutboxLagging",
        "SluiceEveryKeyCoolingOrDisabled",
        "SluiceRepliesTimingOut",
    ] {
        assert!(alerts.contains(&wanted), "{wanted} missing: {alerts:?}");
    }
}

#[test]
fn prometheus_config_scrapes_api_and_workers_and_loads_the_rules() {
    let config: Yaml = yaml_serde::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let rules: Vec<&str> = config["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(!rules.is_empty());
    for file in &rules {
        assert!(
            repo().join("deploy/prometheus").join(file).exists(),
            "{file}"
        );
    }
    let jobs: Vec<&str> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|job| {
            assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
            job["job_name"].as_str().expect("job_name")
        })
        .collect();
    assert_eq!(jobs, ["sluice-api", "sluice-worker"]);
}

#[test]
fn the_dashboard_queries_only_defined_metrics() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/sluice.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names = names_in(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(is_defined(&name), "panel {} queries {name}", panel["title"]);
            }
        }
    }
}

/// Every `metrics::counter!("sluice_…"` (and gauge, histogram) in the API's and the worker's
/// sources names a catalogued metric of that kind.
#[test]
fn the_code_records_only_catalogued_metrics() {
    let mut found = 0;
    for dir in ["api/src", "worker/src", "shared/src"] {
        for file in rust_files(&repo().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (macro_name, kind) in [
                ("counter!(", Kind::Counter),
                ("gauge!(", Kind::Gauge),
                ("histogram!(", Kind::Histogram),
            ] {
                for (at, _) in text.match_indices(macro_name) {
                    let after = text[at + macro_name.len()..].trim_start();
                    let Some(name) = after
                        .strip_prefix('"')
                        .and_then(|a| a.split_once('"'))
                        .map(|(n, _)| n)
                    else {
                        continue;
                    };
                    if !name.starts_with("sluice_") || name.starts_with("sluice_test") {
                        continue;
                    }
                    found += 1;
                    let def = CATALOG.iter().find(|d| d.name == name);
                    assert!(
                        def.is_some_and(|d| d.kind == kind),
                        "{}: {name} is not in the catalog as a {kind:?}",
                        file.display()
                    );
                }
            }
        }
    }
    assert!(
        found > 30,
        "only {found} metric calls found: is the scan broken?"
    );
}

#[test]
fn operations_doc_lists_every_metric_and_alert() {
    let doc = read("docs/OPERATIONS.md");
    for def in CATALOG {
        assert!(
            doc.contains(&format!("| `{}` |", def.name)),
            "docs/OPERATIONS.md lacks {}",
            def.name
        );
    }
    for (alert, _) in alert_exprs() {
        assert!(doc.contains(&format!("`{alert}`")), "docs lack {alert}");
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
