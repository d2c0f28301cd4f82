//! Running on Kubernetes (packaging/kubernetes/): the manifests parse and say what the
//! agent needs (kubectl is not on our machines, so they are read as YAML, field by
//! field); a ConfigMap update, done exactly as the kubelet does it (a new timestamped
//! directory, a new `..data_tmp` symlink renamed over `..data`, the old directory
//! removed), reloads the agent and changes the verdict for real TCP; and the agent runs
//! with the capabilities the DaemonSet grants, and fails without CAP_SYS_ADMIN.
//! The lab tests need root.

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use filter_testkit::{
    agent::{Scratch, ok},
    lab::{Lab, Outcome, REMOTE_V4, RESIDENTIAL, at},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
const CONNECT: Duration = Duration::from_millis(700);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifest(name: &str) -> Value {
    let path = workspace().join("packaging/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// The value after `flag` in the container's arguments.
fn arg<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[at + 1]
}

#[test]
fn the_manifests_hold_what_the_agent_needs() {
    let set = manifest("daemonset.yaml");
    assert_eq!(set["apiVersion"], "apps/v1");
    assert_eq!(set["kind"], "DaemonSet");
    let selector = &set["spec"]["selector"]["matchLabels"];
    let pod = &set["spec"]["template"];
    assert_eq!(&pod["metadata"]["labels"], selector);
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "run");

    // The capabilities the agent needs (the test below), nothing else, no privilege.
    let security = &container["securityContext"];
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strings(&security["capabilities"]["add"]),
        NEEDED.map(str::to_uppercase)
    );
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);

    // Volumes: each mount has its volume; the pins and the state on the host.
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mounted_at = |path: &str| {
        let mount = mounts
            .iter()
            .find(|m| {
                let at = m["mountPath"].as_str().unwrap();
                path == at || path.starts_with(&format!("{at}/"))
            })
            .unwrap_or_else(|| panic!("nothing mounted over {path}: {mounts:?}"));
        // A subPath mount of a ConfigMap is never updated.
        assert!(mount.get("subPath").is_none(), "{mount}");
        volume(mount["name"].as_str().unwrap())
    };
    assert_eq!(
        mounted_at(arg(&args, "--pin-path"))["hostPath"]["path"],
        "/sys/fs/bpf"
    );
    let state = arg(&args, "--state-dir");
    assert_eq!(mounted_at(state)["hostPath"]["path"], state);
    assert!(mounted_at(arg(&args, "--socket")).get("hostPath").is_some());

    // The policy: the ConfigMap below, mounted as a directory.
    let policy = arg(&args, "--policy");
    let config_map = manifest("configmap.yaml");
    assert_eq!(config_map["kind"], "ConfigMap");
    assert_eq!(
        config_map["metadata"]["namespace"],
        set["metadata"]["namespace"]
    );
    assert_eq!(
        mounted_at(policy)["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let file = Path::new(policy).file_name().unwrap().to_str().unwrap();
    let text = config_map["data"][file].as_str().unwrap();
    let example = std::fs::read_to_string(workspace().join("policies/example.yaml")).unwrap();
    assert_eq!(
        text,
        xtask::package::default_policy(&example).unwrap(),
        "configmap.yaml's policy is not the package's (policies/example.yaml in monitor mode)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), text).unwrap();
    ok(Command::new(BINARY)
        .arg("check")
        .arg("--policy")
        .arg(dir.path().join(file))
        .output()
        .unwrap());

    // Ready once the metrics endpoint answers, on the address the agent serves it.
    let metrics = arg(&args, "--metrics");
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/metrics");
    assert_eq!(
        format!("{}:{}", probe["host"].as_str().unwrap(), probe["port"]),
        metrics
    );

    // The image runs the packaged binary.
    let image =
        std::fs::read_to_string(workspace().join("packaging/kubernetes/Containerfile")).unwrap();
    assert!(
        image.contains("ENTRYPOINT [\"/usr/bin/filter-agent\"]"),
        "{image}"
    );
    assert!(
        image.contains("target/debian/filter-agent_${VERSION}_amd64.deb"),
        "{image}"
    );
}

/// A ConfigMap volume as the kubelet's atomic writer lays it out and updates it.
struct ConfigMapVolume {
    dir: PathBuf,
    file: &'static str,
    generation: u32,
}

impl ConfigMapVolume {
    /// `..2026_12_02_05_00_00.000000001/FILE`, `..data -> ..2026...`, `FILE -> ..data/FILE`.
    fn create(dir: &Path, file: &'static str, text: &str) -> ConfigMapVolume {
        let mut volume = ConfigMapVolume {
            dir: dir.to_path_buf(),
            file,
            generation: 0,
        };
        let data = volume.write_timestamped(text);
        symlink(&data, dir.join("..data")).unwrap();
        symlink(format!("..data/{file}"), dir.join(file)).unwrap();
        volume
    }

    fn write_timestamped(&mut self, text: &str) -> String {
        self.generation += 1;
        let name = format!(
            "..2026_12_02_05_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(data.join(self.file), text).unwrap();
        name
    }

    /// The kubelet's update: a new timestamped directory, `..data_tmp` pointing at it
    /// renamed over `..data`, the old directory removed.
    fn update(&mut self, text: &str) {
        let old = std::fs::read_link(self.dir.join("..data")).unwrap();
        let new = self.write_timestamped(text);
        symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(old)).unwrap();
    }
}

fn residential(lab: &Lab) -> Outcome {
    lab.connect(RESIDENTIAL.v4, at(REMOTE_V4, 25), CONNECT)
}

/// Connects until the outcome is `want`, for up to 15 s (a reload is debounced 300 ms).
fn residential_becomes(lab: &Lab, want: Outcome) -> Duration {
    let start = Instant::now();
    loop {
        let outcome = residential(lab);
        if outcome == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "residential still {outcome:?}, not {want:?}, 15 s after the update"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn generations(scratch: &Scratch) -> Vec<(u64, String)> {
    let history: Value = serde_json::from_str(&ok(scratch.cli(&["history", "--json"]))).unwrap();
    history["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["how"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_configmap_update_by_the_kubelet_reloads_the_agent() {
    let lab = Lab::create().unwrap();
    let _listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    let blocked = lab.policy_yaml();
    let allowed = blocked.replacen(
        "  - name: residential\n    smtp: block",
        "  - name: residential\n    smtp: allow",
        1,
    );
    assert_ne!(allowed, blocked);
    // The scratch directory is the mounted volume: policy.yaml is the kubelet's symlink.
    let mut volume = ConfigMapVolume::create(scratch.dir(), "policy.yaml", &blocked);
    assert!(
        std::fs::symlink_metadata(scratch.policy())
            .unwrap()
            .is_symlink()
    );
    let agent = scratch.start_agent(&lab, &[]);
    assert_eq!(residential(&lab), Outcome::TimedOut);

    volume.update(&allowed);
    let took = residential_becomes(&lab, Outcome::Connected);
    eprintln!(
        "the ConfigMap update was in force {} ms after the swap",
        took.as_millis()
    );
    agent.wait_for("reload done", Duration::from_secs(10));
    assert_eq!(
        generations(&scratch),
        [(1, "start".to_string()), (2, "file-change".to_string())]
    );

    // And back: every update is followed, not only the first.
    volume.update(&blocked);
    residential_becomes(&lab, Outcome::TimedOut);
    agent.wait_for_nth("reload done", 2, Duration::from_secs(10));

    // An update with the same content (a resync) is one reload and no new generation.
    volume.update(&blocked);
    agent.wait_for_nth("reload done", 3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        agent.count("reload requested"),
        3,
        "{}",
        agent.log().join("\n")
    );
    assert_eq!(generations(&scratch).len(), 3);
    assert_eq!(residential(&lab), Outcome::TimedOut);
}

/// What the DaemonSet grants, as setpriv names them. CAP_SYS_ADMIN: the kernel accepts it
/// for everything CAP_BPF and CAP_PERFMON allow (maps, programs, the verifier's pointer
/// arithmetic), and only it allows opening a program by its id, which libxdp does to read
/// what runs on an interface's hook (our own program included) and the agent to find the
/// program using its maps. CAP_NET_ADMIN: network configuration, XDP through netlink
/// (libxdp's dispatcher); the link-based attach this kernel gives the agent was seen to
/// work without it, so it is granted, not asserted needed.
const NEEDED: [&str; 2] = ["net_admin", "sys_admin"];
/// CAP_NET_ADMIN and CAP_SYS_ADMIN as /proc/PID/status shows them.
const NEEDED_MASK: u64 = 1 << 12 | 1 << 21;

fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn the_agent_runs_with_the_daemonsets_capabilities_and_not_without_cap_sys_admin() {
    // The systemd unit grants the same.
    let unit = std::fs::read_to_string(workspace().join("packaging/filter-agent.service")).unwrap();
    let granted = NEEDED
        .map(|c| format!("CAP_{}", c.to_uppercase()))
        .join(" ");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert!(
            unit.contains(&format!("\n{key}={granted}\n")),
            "{key} in {unit}"
        );
    }

    let lab = Lab::create().unwrap();
    let _listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let probe = Scratch::new(&lab, BINARY);
    // root, with a bounding set of CAPS only (as in the container), via a wrapper the
    // agent's process wrapper can start like the binary.
    let wrapper =
        |caps: &[&str]| {
            let path = probe.dir().join(format!("filter-agent-{}", caps.join("-")));
            std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec setpriv --bounding-set=-all,{} --inh-caps=-all {BINARY} \"$@\"\n",
                caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",")
            ),
        )
        .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
    let refused = |caps: &[&str], why: &[&str]| {
        let scratch = Scratch::new(&lab, wrapper(caps));
        std::fs::write(scratch.policy(), lab.policy_yaml()).unwrap();
        let mut agent = scratch.spawn_agent(&lab, &[]);
        let code = agent.wait_exit(Duration::from_secs(30));
        let log = agent.log().join("\n");
        assert_eq!(code, Some(1), "with {caps:?}: {log}");
        for why in why {
            assert!(log.contains(why), "with {caps:?}: {why:?} not in {log}");
        }
        assert_eq!(agent.count("enforcing after"), 0);
        // Whatever it attached before it failed, `detach` (on drop) removes.
        drop(scratch);
        assert_eq!(
            lab.attached_program(lab.router_customer_if()),
            None,
            "with {caps:?}"
        );
        eprintln!("with {caps:?}: exit 1: {}", agent.log().last().unwrap());
    };
    // Without CAP_SYS_ADMIN, whatever else it has; the agent says what it lacks.
    refused(
        &["net_admin"],
        &[
            "Operation not permitted",
            "permission denied: this process lacks CAP_SYS_ADMIN; filter-agent needs root",
        ],
    );
    // The least privilege BPF was meant to need is not enough for libxdp.
    refused(
        &["bpf", "net_admin", "perfmon"],
        &[
            "libxdp: couldn't get program fd: Operation not permitted",
            "this process lacks CAP_SYS_ADMIN;",
        ],
    );
    refused(
        &["bpf", "perfmon"],
        &["this process lacks CAP_SYS_ADMIN and CAP_NET_ADMIN;"],
    );

    let scratch = Scratch::new(&lab, wrapper(&NEEDED));
    std::fs::write(scratch.policy(), lab.policy_yaml()).unwrap();
    let mut agent = scratch.start_agent(&lab, &[]);
    assert_eq!(effective_capabilities(agent.pid()), NEEDED_MASK);
    assert!(lab.attached_program(lab.router_customer_if()).is_some());
    assert_eq!(residential(&lab), Outcome::TimedOut);
    let status = ok(Command::new(BINARY)
        .arg("status")
        .arg("--socket")
        .arg(scratch.socket())
        .output()
        .unwrap());
    assert!(status.contains("generation 1"), "{status}");
    agent.stop(Duration::from_secs(10)).unwrap();
}
