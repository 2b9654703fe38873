//! `median`: reads the JSON lines of several runs (as `bench/run.sh` prints them) and prints
//! the median of every number in them, with each run's value, so repeated runs paste into
//! docs/BENCHMARKS.md as "median (run 1, run 2, run 3)".

use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct MedianArgs {
    /// Files of JSON lines (one object per run); stdin when none is given. Lines that are not
    /// JSON objects (e.g. log lines) are skipped.
    files: Vec<PathBuf>,
    /// Only the figures whose dotted path contains one of these (comma separated), e.g.
    /// `completed_per_s,p99_ms,us_per_message`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print one JSON object `{"runs": N, "median": {path: value}}` on stdout (the table then
    /// goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Every number in `v` by dotted path, in document order. Array elements that are objects
/// with a `label` (the per-process arrays) are keyed by it, other elements by index.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((prefix.to_owned(), f));
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = item
                    .get("label")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_owned);
                flatten(&join(&key), item, out);
            }
        }
        _ => {}
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Paths in order of first appearance, each with the values of the runs that have it.
fn collect(runs: &[Value]) -> Vec<(String, Vec<f64>)> {
    let mut table: Vec<(String, Vec<f64>)> = Vec::new();
    for run in runs {
        let mut flat = Vec::new();
        flatten("", run, &mut flat);
        for (path, value) in flat {
            match table.iter_mut().find(|(p, _)| *p == path) {
                Some((_, values)) => values.push(value),
                None => table.push((path, vec![value])),
            }
        }
    }
    table
}

fn read_runs(args: &MedianArgs) -> anyhow::Result<Vec<Value>> {
    let readers: Vec<Box<dyn BufRead>> = if args.files.is_empty() {
        vec![Box::new(BufReader::new(std::io::stdin()))]
    } else {
        args.files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(f)
                    .with_context(|| format!("cannot open {}", f.display()))?;
                Ok(Box::new(BufReader::new(file)) as Box<dyn BufRead>)
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut runs = Vec::new();
    for reader in readers {
        for line in reader.lines() {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line?) {
                runs.push(v);
            }
        }
    }
    Ok(runs)
}

/// Three decimals at most: the runs' own figures carry no more, and averages of two middle
/// values should not print binary noise (22.299999999999997).
fn tidy(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn run(args: MedianArgs) -> anyhow::Result<()> {
    let runs = read_runs(&args)?;
    anyhow::ensure!(!runs.is_empty(), "no JSON object found in the input");
    let table: Vec<(String, Vec<f64>)> = collect(&runs)
        .into_iter()
        .filter(|(path, _)| args.only.is_empty() || args.only.iter().any(|o| path.contains(o)))
        .collect();
    let width = table.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let mut text = format!("medians of {} run(s)", runs.len());
    let mut medians = Map::new();
    for (path, values) in &table {
        let m = tidy(median(values));
        let each: Vec<String> = values.iter().map(|v| format!("{}", tidy(*v))).collect();
        text.push_str(&format!(
            "\n  {path:<width$}  {m:>12}  ({})",
            each.join(", ")
        ));
        if values.len() < runs.len() {
            text.push_str(&format!(" — in {} of {} runs", values.len(), runs.len()));
        }
        medians.insert(path.clone(), json!(m));
    }
    if args.json {
        eprintln!("{text}");
        println!("{}", json!({"runs": runs.len(), "median": medians}));
    } else {
        println!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_by_path_with_labelled_arrays() {
        let runs = vec![
            json!({"rate": 3, "lat": {"p99_ms": 9.0}, "processes": [{"label": "api", "mib": 40}], "s": "x"}),
            json!({"rate": 1, "lat": {"p99_ms": 7.0}, "processes": [{"label": "api", "mib": 50}]}),
            json!({"rate": 2, "lat": {"p99_ms": 8.0}, "processes": [{"label": "api", "mib": 45}], "extra": 5}),
        ];
        let table = collect(&runs);
        let get = |p: &str| {
            table
                .iter()
                .find(|(path, _)| path == p)
                .map(|(_, v)| (median(v), v.len()))
        };
        assert_eq!(get("rate"), Some((2.0, 3)));
        assert_eq!(get("lat.p99_ms"), Some((8.0, 3)));
        assert_eq!(get("processes.api.mib"), Some((45.0, 3)));
        assert_eq!(get("extra"), Some((5.0, 1)));
        assert_eq!(get("s"), None);
    }

    #[test]
    fn an_even_count_averages_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
