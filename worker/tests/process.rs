//! The `sluice-worker` binary as an orchestrator sees it: a background task that stops takes
//! the process down with exit code 1, naming the task (so compose or Kubernetes restart it),
//! and SIGTERM still drains and exits 0. Uses the machine's RabbitMQ and Redis on 127.0.0.1
//! under a prefix of its own; the worker declares nothing, so nothing is left behind.
#![allow(clippy::disallowed_methods)]

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Generous: start-up plus the supervisor's drain, on a loaded machine.
const EXITS_WITHIN: Duration = Duration::from_secs(30);

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn worker(port: u16, end_task: Option<&str>) -> std::io::Result<Child> {
    let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
    command
        .env("GEMINI_API_KEYS", "only=not-a-real-key")
        .env("SLUICE__PROVIDER__BASE_URL", "http://127.0.0.1:9")
        .env("SLUICE__WORKER__HEALTH_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE__QUEUES__PREFIX", &prefix)
        .env("SLUICE__REDIS__PREFIX", &prefix)
        .env("SLUICE__KEYS__PROBE_INTERVAL_MS", "3600000")
        .env_remove("SLUICE_TEST_END_TASK")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(task) = end_task {
        command.env("SLUICE_TEST_END_TASK", task);
    }
    command.spawn()
}

/// Waits for the process to exit, killing it past the bound; returns its status and stderr.
fn exit_of(mut child: Child) -> Result<(ExitStatus, String), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > EXITS_WITHIN {
            child.kill()?;
            return Err("the worker did not exit".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    Ok((status, stderr))
}

#[test]
fn a_task_that_stops_exits_1_naming_it() -> TestResult {
    let child = worker(free_port()?, Some("key prober"))?;
    let (status, stderr) = exit_of(child)?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("key prober"), "{stderr}");
    Ok(())
}

#[test]
fn sigterm_drains_and_exits_0() -> TestResult {
    let port = free_port()?;
    let child = worker(port, None)?;
    let started = Instant::now();
    // Ready to be stopped once /health answers: every task has started.
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > EXITS_WITHIN {
            return Err("the worker never listened".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success());
    let (status, stderr) = exit_of(child)?;
    assert_eq!(status.code(), Some(0), "{stderr}");
    Ok(())
}
