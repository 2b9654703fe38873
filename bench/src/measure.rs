//! The measured phase of a scenario: what happens at its start (peak RSS reset, CPU snapshot,
//! `--measure-hook start`) and at its end (the hook's `stop`, peaks and CPU used).

use crate::cpu::{self, Snapshot, Usage};
use crate::report::{self, Sample, Target};
use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Started once the setup (registrations, chats) is done, before the first timed request.
pub struct Measure {
    pids: Vec<Target>,
    cpu_targets: Vec<Target>,
    hook: Option<PathBuf>,
    setup_peaks: HashMap<u32, f64>,
    start: Snapshot,
}

/// What the measured phase cost.
pub struct Measured {
    pub samples: Vec<Sample>,
    pub cpu: Usage,
}

/// Runs `hook phase` and waits for it: e.g. run.sh's hook that enables `perf record` only
/// for the measured phase. A failing hook fails the run: its figures would be wrong.
async fn run_hook(hook: &Path, phase: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(hook)
        .arg(phase)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run --measure-hook {}", hook.display()))?;
    anyhow::ensure!(
        status.success(),
        "--measure-hook {} {phase} failed ({status})",
        hook.display()
    );
    Ok(())
}

impl Measure {
    pub async fn start(common: &crate::Common) -> anyhow::Result<Self> {
        let setup_peaks = report::reset_peaks(&common.pids)?;
        if let Some(hook) = &common.measure_hook {
            run_hook(hook, "start").await?;
        }
        // The processes whose peak RSS is reported are measured for CPU too, and so are the
        // trees named by --cpu-trees (PostgreSQL's postmaster, RabbitMQ's beam.smp, …).
        let mut cpu_targets = common.pids.clone();
        cpu_targets.extend(common.cpu_trees.iter().cloned());
        Ok(Self {
            pids: common.pids.clone(),
            start: cpu::snapshot(&cpu_targets),
            cpu_targets,
            hook: common.measure_hook.clone(),
            setup_peaks,
        })
    }

    /// The CPU of the same processes now: `live-heavy` brackets each of its phases with two.
    pub fn snapshot(&self) -> Snapshot {
        cpu::snapshot(&self.cpu_targets)
    }

    /// Ends the phase; `messages` (completed replies) divides the CPU time.
    pub async fn finish(self, messages: u64) -> anyhow::Result<Measured> {
        let end = cpu::snapshot(&self.cpu_targets);
        if let Some(hook) = &self.hook {
            run_hook(hook, "stop").await?;
        }
        Ok(Measured {
            samples: report::sample_end(&self.pids, &self.setup_peaks)?,
            cpu: cpu::usage(&self.start, &end, messages),
        })
    }
}

impl Measured {
    /// The `processes` line of a summary: peak RSS, then CPU per message.
    pub fn describe(&self) -> String {
        let rss = if self.samples.is_empty() {
            "peak RSS: not sampled (no --pids)".to_owned()
        } else {
            format!("peak RSS (VmHWM){}", report::rss_lines(&self.samples))
        };
        format!("{rss}\n  CPU {}", self.cpu.lines())
    }
}
