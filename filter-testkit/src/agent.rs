//! A `filter-agent run` process in a network namespace, with its log captured line by line,
//! for the end-to-end tests, the demo and the agent benchmark; and [`Scratch`], the files of
//! one lab test's agent.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::{
        prctl::set_pdeathsig,
        signal::{Signal, kill},
    },
    unistd::Pid,
};

use tempfile::TempDir;

use crate::{
    lab::{Lab, Ns},
    signals,
};

/// How to start `filter-agent run`.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The filter-agent binary (in filter-agent's tests `env!("CARGO_BIN_EXE_filter-agent")`).
    pub binary: PathBuf,
    /// The network namespace it runs in (`/run/netns/NAME`), entered with
    /// [`crate::netns::command`].
    pub netns: PathBuf,
    /// `--policy FILE`; `None` when `args` give `--policy-url`.
    pub policy: Option<PathBuf>,
    pub pin_path: PathBuf,
    pub socket: PathBuf,
    /// `--state-dir`: the exemptions file and everything else the agent persists.
    pub state_dir: PathBuf,
    /// Arguments after those.
    pub args: Vec<String>,
    /// `RUST_LOG` for the agent; `None` leaves the caller's.
    pub log_filter: Option<&'static str>,
    /// More environment for the agent (e.g. systemd's NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// A process group of its own, so that Ctrl-C at a terminal reaches only the caller
    /// (which then stops the agent); the agent also gets SIGTERM if the caller dies.
    pub own_process_group: bool,
}

/// A running agent. Dropping it kills the process if it still runs.
pub struct AgentProcess {
    /// Shared with the [`Scratch`] that started it, which stops it before detaching.
    child: Arc<Mutex<Child>>,
    started: Instant,
    /// Every line so far.
    log: Arc<Mutex<Vec<String>>>,
    /// The lines [`AgentProcess::read_until`] has not read yet.
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl AgentProcess {
    pub fn spawn(options: &AgentOptions) -> anyhow::Result<AgentProcess> {
        let mut cmd = crate::netns::command(&options.netns, &options.binary);
        cmd.arg("run");
        if let Some(policy) = &options.policy {
            cmd.arg("--policy").arg(policy);
        }
        cmd.arg("--pin-path")
            .arg(&options.pin_path)
            .arg("--socket")
            .arg(&options.socket)
            .arg("--state-dir")
            .arg(&options.state_dir)
            .args(&options.args)
            // Log lines as on a terminal, with timestamps, whoever runs this.
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = options.log_filter {
            cmd.env("RUST_LOG", filter);
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        if options.own_process_group {
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe and touches only the child's own state.
            unsafe {
                cmd.pre_exec(|| Ok(set_pdeathsig(Signal::SIGTERM)?));
            }
        }
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting filter-agent run (nsenter)")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            })
        };
        Ok(AgentProcess {
            child: Arc::new(Mutex::new(child)),
            started,
            log,
            lines,
            reader: Some(reader),
        })
    }

    /// The agent's pid: `nsenter` execs it, so it is the child itself.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Just before the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Lines of the log so far that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` has appeared `n` times in the log; panics with the log on
    /// timeout.
    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            if Instant::now() > deadline {
                panic!(
                    "the agent did not log {needle:?} {n} times in {timeout:?}; its log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        self.wait_for_nth(needle, 1, timeout);
    }

    /// Reads the lines after those read before until `matches` returns something for one,
    /// and returns that. Fails on timeout, when the agent exits, and on a signal
    /// [`signals::install`]ed by the caller. `what` completes "the agent did not ...".
    pub fn read_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut matches: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            signals::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the agent did not {what} within {timeout:?}");
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    if let Some(value) = matches(&line) {
                        return Ok(value);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child().wait()?;
                    bail!("the agent exited ({status}) before it would {what}");
                }
            }
        }
    }

    /// Once the agent has exited: the lines [`AgentProcess::read_until`] has not read.
    pub fn unread_lines(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines.try_iter().collect()
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child().try_wait()
    }

    /// Waits for the process to exit by itself; returns its exit code. Panics with the log
    /// on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        match self.exited_within(timeout).unwrap() {
            Some(status) => status.code(),
            None => panic!(
                "the agent did not exit; its log:\n{}",
                self.log().join("\n")
            ),
        }
    }

    fn signal(&self, signal: Signal) {
        // The pid is our unreaped child, so it cannot be reused.
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pids fit an i32"));
        let _ = kill(pid, signal);
    }

    /// SIGHUP: the agent re-reads its policy file.
    pub fn hangup(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(self) {
        kill_and_reap(&mut self.child()).unwrap();
    }

    /// SIGTERM, and SIGKILL (with an error) if it has not exited within `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.exited_within(timeout)? {
            return Ok(status);
        }
        kill_and_reap(&mut self.child())?;
        bail!("the agent ignored SIGTERM for {timeout:?}; killed it")
    }

    fn exited_within(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait()? {
                // The log reader ends at the end of stderr, which the exit closes; on a
                // loaded machine it may still be reading the last lines.
                let drained = Instant::now() + Duration::from_secs(5);
                while self.reader.as_ref().is_some_and(|r| !r.is_finished())
                    && Instant::now() < drained
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills `child` unless it has exited, and reaps it.
fn kill_and_reap(child: &mut Child) -> std::io::Result<()> {
    if child.try_wait()?.is_none() {
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = kill_and_reap(&mut self.child());
    }
}

/// A pin path, policy file, control socket and state file private to one lab test;
/// on drop it kills the agents it started that still run (`detach` refuses while an
/// agent holds the pins, so the order in which a test drops things does not matter),
/// then detaches and removes them all.
pub struct Scratch {
    binary: PathBuf,
    dir: TempDir,
    pub pin_path: PathBuf,
    /// Weak: an agent the test has dropped is already stopped, and its pid may be reused.
    agents: Mutex<Vec<Weak<Mutex<Child>>>>,
}

impl Scratch {
    /// `binary`: the filter-agent binary, for the agent and the CLI.
    pub fn new(lab: &Lab, binary: impl Into<PathBuf>) -> Scratch {
        Scratch {
            binary: binary.into(),
            dir: tempfile::Builder::new()
                .prefix(&format!("filter-agent-{}-", lab.prefix()))
                .tempdir()
                .unwrap(),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/filter-agent-{}", lab.prefix())),
            agents: Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn policy(&self) -> PathBuf {
        self.dir().join("policy.yaml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    /// The agent's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The exemptions file inside the state directory.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("exemptions.yaml")
    }

    /// Starts `filter-agent run` in the router namespace on these files (and `extra`
    /// arguments), and waits until it enforces.
    pub fn start_agent(&self, lab: &Lab, extra: &[&str]) -> AgentProcess {
        let agent = self.spawn_agent(lab, extra);
        agent.wait_for("enforcing after", Duration::from_secs(30));
        agent
    }

    /// Starts `filter-agent run` as [`Scratch::start_agent`] does, without waiting.
    pub fn spawn_agent(&self, lab: &Lab, extra: &[&str]) -> AgentProcess {
        self.spawn_agent_with_env(lab, extra, Vec::new())
    }

    /// [`Scratch::spawn_agent`] with more environment.
    pub fn spawn_agent_with_env(
        &self,
        lab: &Lab,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> AgentProcess {
        self.spawn(lab, Some(self.policy()), extra, env)
    }

    /// Starts `filter-agent run --policy-url URL --policy-key KEY` (and `extra`) in the
    /// router namespace on these files, without waiting.
    pub fn spawn_agent_from_url(
        &self,
        lab: &Lab,
        url: &str,
        key: &Path,
        extra: &[&str],
    ) -> AgentProcess {
        let mut args = vec![
            "--policy-url",
            url,
            "--policy-key",
            key.to_str().expect("a UTF-8 key path"),
        ];
        args.extend_from_slice(extra);
        self.spawn(lab, None, &args, Vec::new())
    }

    fn spawn(
        &self,
        lab: &Lab,
        policy: Option<PathBuf>,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> AgentProcess {
        let agent = AgentProcess::spawn(&AgentOptions {
            binary: self.binary.clone(),
            netns: lab.netns_path(Ns::Router),
            policy,
            pin_path: self.pin_path.clone(),
            socket: self.socket(),
            state_dir: self.state_dir(),
            args: extra.iter().map(|a| a.to_string()).collect(),
            log_filter: None,
            env,
            own_process_group: false,
        })
        .expect("start filter-agent");
        self.agents
            .lock()
            .unwrap()
            .push(Arc::downgrade(&agent.child));
        agent
    }

    /// Runs the CLI (on the host) against this test's agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.against_socket(Command::new(&self.binary), args)
    }

    /// Runs the CLI as user nobody (group nogroup) against this test's agent.
    pub fn cli_as_nobody(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&self.binary);
        self.against_socket(cmd, args)
    }

    fn against_socket(&self, mut cli: Command, args: &[&str]) -> Output {
        cli.args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    /// Packets the kernel counted for `group` with `reason`, from `stats --json`.
    pub fn group_packets(&self, group: &str, reason: &str) -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&ok(self.cli(&["stats", "--json"]))).unwrap();
        stats["by_group"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["group"] == group && r["reason"] == reason)
            .map(|r| r["packets"].as_u64().unwrap())
            .sum()
    }

    /// Replaces the policy file the way editors do: write a temporary file, rename it.
    pub fn write_policy(&self, text: &str) {
        let tmp = self.dir().join(".policy.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policy()).unwrap();
    }

    pub fn detach(&self) -> Output {
        Command::new(&self.binary)
            .arg("detach")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .output()
            .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let agents = std::mem::take(self.agents.get_mut().unwrap_or_else(|p| p.into_inner()));
        for child in agents.iter().filter_map(Weak::upgrade) {
            let _ = kill_and_reap(&mut child.lock().unwrap_or_else(|p| p.into_inner()));
        }
        if self.pin_path.exists() {
            let out = self.detach();
            // Not a panic (this may run while unwinding): say so, or the pins leak unseen.
            if !out.status.success() {
                eprintln!(
                    "could not detach {}: {}",
                    self.pin_path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}

/// The stdout of a CLI run that must have succeeded; panics with both streams otherwise.
pub fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
