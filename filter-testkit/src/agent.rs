//! A `filter-agent run` process inside a lab's router namespace, with its log captured
//! line by line so tests can wait for events.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::lab::{Lab, Ns};

pub const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");

pub struct AgentProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// Starts `filter-agent run` in the router namespace with the scratch's policy, pins,
    /// control socket and state file, and waits until it enforces.
    pub fn start(lab: &Lab, scratch: &Scratch, extra: &[&str]) -> AgentProcess {
        let agent = Self::spawn(lab, scratch, extra);
        agent.wait_for("enforcing after", Duration::from_secs(30));
        agent
    }

    pub fn spawn(lab: &Lab, scratch: &Scratch, extra: &[&str]) -> AgentProcess {
        let mut child = lab
            .command_in(Ns::Router, BINARY)
            .arg("run")
            .arg("--policy")
            .arg(scratch.policy())
            .arg("--pin-path")
            .arg(&scratch.pin_path)
            .arg("--socket")
            .arg(scratch.socket())
            .arg("--state-file")
            .arg(scratch.state_file())
            .args(extra)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start filter-agent");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        AgentProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` has appeared `n` times; panics with the log on timeout.
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

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the log reader drain.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "the agent did not exit; its log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pin path and policy file private to one test; detaches and removes both on drop.
pub struct Scratch {
    pub dir: PathBuf,
    pub pin_path: PathBuf,
}

impl Scratch {
    pub fn new(lab: &Lab) -> Scratch {
        let dir = std::env::temp_dir().join(format!("filter-agent-{}", lab.prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch {
            dir,
            pin_path: PathBuf::from(format!("/sys/fs/bpf/filter-agent-{}", lab.prefix())),
        }
    }

    pub fn policy(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state/exemptions.yaml")
    }

    /// Runs the CLI (on the host) against this test's agent.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BINARY)
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    /// Replaces the policy file the way editors do: write a temporary file, rename it.
    pub fn write_policy(&self, text: &str) {
        let tmp = self.dir.join(".policy.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policy()).unwrap();
    }

    pub fn detach(&self) -> std::process::Output {
        Command::new(BINARY)
            .arg("detach")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .output()
            .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.pin_path.exists() {
            let _ = self.detach();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The XDP program id attached to `interface` in the router namespace, if any.
pub fn attached_program(lab: &Lab, interface: &str) -> Option<u32> {
    let out = lab
        .command_in(Ns::Router, "ip")
        .args(["-d", "link", "show", "dev", interface])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("prog/xdp id ")? + "prog/xdp id ".len();
    text[at..].split_whitespace().next()?.parse().ok()
}
