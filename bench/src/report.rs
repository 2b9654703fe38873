//! Latency histograms (microseconds in, milliseconds out) and the peak-RSS probe of the
//! processes under test (`/proc/PID/status` `VmHWM`).

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Latencies in microseconds, from 1 µs to 1 h, three significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

fn ms(us: u64) -> f64 {
    // Two decimals, so the JSON carries what the summary prints.
    (us as f64 / 10.0).round() / 100.0
}

pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p95_ms": ms(h.value_at_quantile(0.95)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "mean_ms": (h.mean() / 10.0).round() / 100.0,
    })
}

pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples)",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    )
}

/// A process to report on: `LABEL=PID` or a bare `PID` (labelled by its command name).
#[derive(Debug, Clone)]
pub struct Target {
    pub label: Option<String>,
    pub pid: u32,
}

pub fn parse_target(raw: &str) -> Result<Target, String> {
    let (label, pid) = match raw.split_once('=') {
        Some((label, pid)) => (Some(label.trim().to_owned()), pid),
        None => (None, raw),
    };
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not PID or LABEL=PID"))?;
    Ok(Target { label, pid })
}

/// What `/proc` says about one process at the end of a run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub label: String,
    pub pid: u32,
    /// `VmHWM`: since the last reset (see [`reset_peaks`]), else since the process started.
    pub peak_rss_mib: f64,
    /// `VmHWM` just before the reset, i.e. the peak of start-up and the bench's setup.
    pub setup_peak_mib: Option<f64>,
    pub rss_mib: f64,
    /// User + system CPU time since the process started.
    pub cpu_secs: Option<f64>,
}

fn kib_field(status: &str, name: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no {name} line (a kernel thread?)"))?;
    let kib = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unreadable {name} line: {line}"))?;
    Ok(kib)
}

/// utime + stime from `/proc/PID/stat`, assuming the usual 100 clock ticks per second.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

pub fn sample(target: &Target) -> anyhow::Result<Sample> {
    let pid = target.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is not running (or /proc is unreadable)"))?;
    let name = status
        .lines()
        .find_map(|l| l.strip_prefix("Name:"))
        .map(|n| n.trim().to_owned())
        .unwrap_or_else(|| pid.to_string());
    let hwm = kib_field(&status, "VmHWM:")?;
    let rss = kib_field(&status, "VmRSS:")?;
    Ok(Sample {
        label: target.label.clone().unwrap_or(name),
        pid,
        peak_rss_mib: hwm as f64 / 1024.0,
        setup_peak_mib: None,
        rss_mib: rss as f64 / 1024.0,
        cpu_secs: cpu_secs(pid),
    })
}

/// Samples every target; a process that is gone is an error (it probably crashed).
pub fn sample_all(targets: &[Target]) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::with_capacity(targets.len());
    let mut missing = Vec::new();
    for t in targets {
        match sample(t) {
            Ok(s) => out.push(s),
            Err(e) => missing.push(format!("{}: {e:#}", t.pid)),
        }
    }
    if !missing.is_empty() {
        bail!("cannot sample {}", missing.join("; "));
    }
    Ok(out)
}

/// Reads every target's peak so far, then resets it (`echo 5 > /proc/PID/clear_refs`), so
/// the peak at the end covers the measured phase only and is not, say, the argon2 hashing
/// of the setup's registrations. Answers the peaks before the reset, by PID; a process
/// whose peak could not be reset is left out (its final peak then covers its whole life).
pub fn reset_peaks(targets: &[Target]) -> anyhow::Result<HashMap<u32, f64>> {
    let mut before = HashMap::new();
    for s in sample_all(targets)? {
        match std::fs::write(format!("/proc/{}/clear_refs", s.pid), "5") {
            Ok(()) => {
                before.insert(s.pid, s.peak_rss_mib);
            }
            Err(e) => eprintln!(
                "warning: cannot reset the peak RSS of {} (pid {}): {e}; its peak includes the setup",
                s.label, s.pid
            ),
        }
    }
    Ok(before)
}

/// Samples every target at the end, with the setup peaks from [`reset_peaks`].
pub fn sample_end(targets: &[Target], setup: &HashMap<u32, f64>) -> anyhow::Result<Vec<Sample>> {
    let mut samples = sample_all(targets)?;
    for s in &mut samples {
        s.setup_peak_mib = setup.get(&s.pid).copied();
    }
    Ok(samples)
}

pub fn rss_json(samples: &[Sample]) -> Value {
    samples
        .iter()
        .map(|s| {
            json!({
                "label": s.label,
                "pid": s.pid,
                "peak_rss_mib": (s.peak_rss_mib * 10.0).round() / 10.0,
                "setup_peak_rss_mib": s.setup_peak_mib.map(|m| (m * 10.0).round() / 10.0),
                "rss_mib": (s.rss_mib * 10.0).round() / 10.0,
                "cpu_secs": s.cpu_secs,
            })
        })
        .collect::<Vec<_>>()
        .into()
}

pub fn rss_lines(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| {
            let cpu = s
                .cpu_secs
                .map(|c| format!(", CPU {c:.1} s"))
                .unwrap_or_default();
            let setup = s
                .setup_peak_mib
                .map(|m| format!(", before the run {m:.1} MiB"))
                .unwrap_or_default();
            format!(
                "\n  {:<12} pid {:<7} peak RSS {:>6.1} MiB (now {:.1} MiB{setup}{cpu})",
                s.label, s.pid, s.peak_rss_mib, s.rss_mib
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_labels() {
        let t = parse_target("api=42").ok();
        assert_eq!(t.as_ref().map(|t| t.pid), Some(42));
        assert_eq!(t.and_then(|t| t.label).as_deref(), Some("api"));
        assert_eq!(parse_target("7").ok().map(|t| t.pid), Some(7));
        assert!(parse_target("api=x").is_err());
    }

    #[test]
    fn samples_this_process() -> anyhow::Result<()> {
        let s = sample(&Target {
            label: None,
            pid: std::process::id(),
        })?;
        assert!(s.peak_rss_mib > 0.0 && s.peak_rss_mib >= s.rss_mib);
        assert!(s.cpu_secs.is_some());
        Ok(())
    }

    #[test]
    fn peaks_reset_to_the_current_rss() -> anyhow::Result<()> {
        let me = Target {
            label: Some("me".into()),
            pid: std::process::id(),
        };
        // Touch 32 MiB, free it, then reset: the peak falls back below it.
        let big = vec![1u8; 32 << 20];
        assert!(big.iter().map(|b| u64::from(*b)).sum::<u64>() > 0);
        drop(big);
        let before = reset_peaks(std::slice::from_ref(&me))?;
        let after = sample_end(std::slice::from_ref(&me), &before)?;
        let setup = after[0].setup_peak_mib.unwrap_or_default();
        assert!(setup >= 32.0, "peak before the reset: {setup}");
        assert!(after[0].peak_rss_mib < setup, "{after:?}");
        Ok(())
    }

    #[test]
    fn latencies_print_in_milliseconds() -> anyhow::Result<()> {
        let mut h = histogram()?;
        for ms in 1..=100 {
            record(&mut h, Duration::from_millis(ms));
        }
        let j = latency_json(&h);
        // Three significant digits: a value comes back within 0.1 %.
        let near = |v: &Value, want: f64| {
            v.as_f64()
                .is_some_and(|v| (v - want).abs() <= want / 1000.0)
        };
        assert!(near(&j["p50_ms"], 50.0), "{j}");
        assert!(near(&j["p99_ms"], 99.0), "{j}");
        Ok(())
    }
}
