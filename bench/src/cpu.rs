//! CPU time of the processes under test over the measured phase, from `/proc/PID/stat`, and
//! how busy the whole machine was meanwhile (`/proc/stat`), so per-message costs and noise
//! from outside the stack can be reported.

use crate::report::Target;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs;
use std::time::Instant;

/// Clock ticks per second in `/proc`: USER_HZ, fixed at 100 by the kernel's ABI on the
/// architectures we run on (it is not the kernel's internal HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// `/proc/PID/stat` fields after the command name (0-based there): ppid, utime, stime,
/// cutime, cstime (fields 4, 14, 15, 16 and 17, 1-based, in proc(5)).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime: the process's own time and that of every child it
    /// has reaped, so a tree's sum keeps the time of members that exited meanwhile.
    ticks: u64,
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name may hold spaces and parentheses; the fields after the last `)` are plain.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let children = |i: usize| f.get(i)?.parse::<i64>().ok().map(|v| v.max(0) as u64);
    Some(Stat {
        ppid: u32::try_from(num(1)?).ok()?,
        ticks: num(11)? + num(12)? + children(13)? + children(14)?,
    })
}

/// Every process's stat, by PID (a process that exits while we read is skipped).
fn all_stats() -> HashMap<u32, Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&stat)?))
        })
        .collect()
}

/// CPU ticks of `root` and all its live descendants (with their reaped children), or `None`
/// when `root` is gone.
fn tree_ticks(stats: &HashMap<u32, Stat>, root: u32) -> Option<u64> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, s) in stats {
        children.entry(s.ppid).or_default().push(*pid);
    }
    let mut total = stats.get(&root)?.ticks;
    let mut todo = children.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = todo.pop() {
        if let Some(s) = stats.get(&pid) {
            total += s.ticks;
        }
        if let Some(c) = children.get(&pid) {
            todo.extend(c);
        }
    }
    Some(total)
}

/// `(busy, total)` ticks of all CPUs since boot, from the `cpu` line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = v.get(3)? + v.get(4)?;
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

/// CPU ticks of each labelled process tree at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    ticks: Vec<(String, Option<u64>)>,
    machine: Option<(u64, u64)>,
}

/// Takes a snapshot of `targets` (each with its descendants) and of this process ("bench").
pub fn snapshot(targets: &[Target]) -> Snapshot {
    let stats = all_stats();
    let mut ticks: Vec<(String, Option<u64>)> = targets
        .iter()
        .map(|t| {
            let label = t.label.clone().unwrap_or_else(|| t.pid.to_string());
            (label, tree_ticks(&stats, t.pid))
        })
        .collect();
    ticks.push(("bench".into(), tree_ticks(&stats, std::process::id())));
    Snapshot {
        at: Instant::now(),
        ticks,
        machine: machine_ticks(),
    }
}

/// CPU used between two snapshots, per label and per message.
#[derive(Debug, Clone)]
pub struct Usage {
    secs: f64,
    /// Label, CPU seconds (None when the process was gone at either end).
    per_label: Vec<(String, Option<f64>)>,
    machine_busy_percent: Option<f64>,
    outside_percent: Option<f64>,
    messages: u64,
}

pub fn usage(start: &Snapshot, end: &Snapshot, messages: u64) -> Usage {
    let secs = end.at.duration_since(start.at).as_secs_f64();
    let per_label: Vec<(String, Option<f64>)> = start
        .ticks
        .iter()
        .zip(&end.ticks)
        .map(|((label, a), (_, b))| {
            let d = match (a, b) {
                (Some(a), Some(b)) => Some(b.saturating_sub(*a) as f64 / TICKS_PER_SEC),
                _ => None,
            };
            (label.clone(), d)
        })
        .collect();
    let machine = match (start.machine, end.machine) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0, t1 - t0)),
        _ => None,
    };
    // Percent of the whole machine (100 % = every CPU busy), like the kernel counts it.
    let machine_busy_percent = machine.map(|(b, t)| 100.0 * b as f64 / t as f64);
    let outside_percent = machine.map(|(b, t)| {
        let ours: f64 = per_label.iter().filter_map(|(_, s)| *s).sum();
        (100.0 * (b as f64 / TICKS_PER_SEC - ours) / (t as f64 / TICKS_PER_SEC)).max(0.0)
    });
    Usage {
        secs,
        per_label,
        machine_busy_percent,
        outside_percent,
        messages,
    }
}

fn round(v: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (v * k).round() / k
}

impl Usage {
    fn per_message_us(&self, cpu_secs: f64) -> Option<f64> {
        (self.messages > 0).then(|| round(cpu_secs * 1e6 / self.messages as f64, 1))
    }

    fn core_percent(&self, cpu_secs: f64) -> Option<f64> {
        (self.secs > 0.0).then(|| round(100.0 * cpu_secs / self.secs, 1))
    }

    /// CPU µs per message of every process but `except` (the bench itself), or `None` without
    /// messages; a process gone at either end counts as nothing.
    pub fn sum_us_per_message(&self, except: &str) -> Option<f64> {
        self.per_message_us(self.secs_except(except))
    }

    /// CPU of every process but `except`, in % of one core over the span.
    pub fn sum_core_percent(&self, except: &str) -> Option<f64> {
        self.core_percent(self.secs_except(except))
    }

    /// CPU seconds of every process but `except`; a process gone at either end counts as
    /// nothing.
    fn secs_except(&self, except: &str) -> f64 {
        self.per_label
            .iter()
            .filter(|(label, _)| label != except)
            .filter_map(|(_, cpu)| *cpu)
            .sum()
    }

    /// `{"secs", "messages", "machine_busy_percent", "outside_stack_percent",
    /// "processes": {label: {"cpu_secs", "us_per_message", "core_percent"}}}`.
    pub fn to_json(&self) -> Value {
        let processes: serde_json::Map<String, Value> = self
            .per_label
            .iter()
            .map(|(label, cpu)| {
                let v = match cpu {
                    Some(c) => json!({
                        "cpu_secs": round(*c, 2),
                        "us_per_message": self.per_message_us(*c),
                        "core_percent": self.core_percent(*c),
                    }),
                    None => Value::Null,
                };
                (label.clone(), v)
            })
            .collect();
        json!({
            "secs": round(self.secs, 3),
            "messages": self.messages,
            "machine_busy_percent": self.machine_busy_percent.map(|p| round(p, 1)),
            "outside_stack_percent": self.outside_percent.map(|p| round(p, 1)),
            "processes": processes,
        })
    }

    /// One line per process, most expensive first.
    pub fn lines(&self) -> String {
        let mut rows: Vec<&(String, Option<f64>)> = self.per_label.iter().collect();
        rows.sort_by(|a, b| b.1.unwrap_or(-1.0).total_cmp(&a.1.unwrap_or(-1.0)));
        let mut out = format!(
            "over {:.1} s, {} messages; machine {}% busy (100% = all CPUs), {}% outside the stack",
            self.secs,
            self.messages,
            self.machine_busy_percent
                .map_or("n/a".into(), |p| format!("{p:.1}")),
            self.outside_percent
                .map_or("n/a".into(), |p| format!("{p:.1}")),
        );
        for (label, cpu) in rows {
            match cpu {
                Some(c) => out.push_str(&format!(
                    "\n  {label:<12} {:>8} µs/message  {c:>7.2} s CPU  {:>5}% of a core",
                    self.per_message_us(*c)
                        .map_or("n/a".into(), |v| format!("{v:.1}")),
                    self.core_percent(*c)
                        .map_or("n/a".into(), |v| format!("{v:.1}")),
                )),
                None => out.push_str(&format!("\n  {label:<12} gone before the end")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime …
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 10 0 0 0 300 25 4 1 20 0 1 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 7,
                ticks: 330
            })
        );
        assert_eq!(parse_stat("42 (cut"), None);
    }

    #[test]
    fn a_tree_sums_its_descendants_only() {
        let s = |ppid, ticks| Stat { ppid, ticks };
        let stats = HashMap::from([
            (1, s(0, 1000)),
            (10, s(1, 5)),
            (11, s(10, 7)),
            (12, s(11, 3)),
            (20, s(1, 500)),
        ]);
        assert_eq!(tree_ticks(&stats, 10), Some(15));
        assert_eq!(tree_ticks(&stats, 12), Some(3));
        assert_eq!(tree_ticks(&stats, 99), None);
    }

    #[test]
    fn this_process_is_measured() -> anyhow::Result<()> {
        let me = Target {
            label: Some("me".into()),
            pid: std::process::id(),
        };
        let start = snapshot(std::slice::from_ref(&me));
        // Burn CPU until at least two ticks show, with a bounded deadline.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        let burnt = loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let end = snapshot(std::slice::from_ref(&me));
            let u = usage(&start, &end, 1000);
            let cpu = u.per_label[0].1.unwrap_or_default();
            if cpu >= 0.02 || Instant::now() > deadline {
                break u;
            }
        };
        let j = burnt.to_json();
        let cpu = j["processes"]["me"]["cpu_secs"]
            .as_f64()
            .unwrap_or_default();
        assert!(cpu >= 0.02, "{j}");
        // 1000 messages: µs per message is CPU µs ÷ 1000.
        let per = j["processes"]["me"]["us_per_message"]
            .as_f64()
            .unwrap_or_default();
        assert!((per - cpu * 1000.0).abs() < 0.2, "{j}");
        assert!(j["processes"]["bench"].is_object(), "{j}");
        // Without the bench only "me" is left; with every label, "bench" is added.
        let me_only = burnt.sum_us_per_message("bench").unwrap_or_default();
        assert!((me_only - per).abs() < 0.2, "{me_only} vs {per}");
        assert!(burnt.sum_us_per_message("none").unwrap_or_default() >= me_only);
        assert!(j["machine_busy_percent"].as_f64().is_some(), "{j}");
        Ok(())
    }
}
