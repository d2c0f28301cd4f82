//! The Debian package (`cargo xtask package`), built from the binary under test (the
//! same code as a release build; packaging it saves CI a release build), installed with
//! dpkg into a scratch root (its own admin directory, maintainer scripts run without a
//! chroot with DPKG_ROOT set, as dpkg --root --force-script-chrootless does): the files
//! and their modes, the conffile, the socket's groups from sysusers, `systemd-analyze
//! verify` of the installed unit, the installed binary checking the installed policy;
//! then remove (a changed conffile stays) and purge (nothing left). Needs root.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use filter_testkit::agent::ok;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The alerting rules and the dashboard, as shipped: (in the repository, in the package).
const MONITORING: [(&str, &str); 2] = [
    (
        "packaging/prometheus/filter-agent.rules.yml",
        "usr/share/doc/filter-agent/examples/prometheus/filter-agent.rules.yml",
    ),
    (
        "packaging/grafana/filter-agent.json",
        "usr/share/doc/filter-agent/examples/grafana/filter-agent.json",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // The scratch root has no shell to chroot into; the scripts honour DPKG_ROOT.
        // libxdp1 and libbpf1 are the host's (checked below), not the scratch root's.
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args)
        .output()
        .unwrap()
}

fn query(root: &Path, format: &str) -> String {
    ok(Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["-W", "-f", format, "filter-agent"])
        .output()
        .unwrap())
}

/// Every file and symlink under `root` (relative path -> mode), directories left out.
fn files(root: &Path) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                found.insert(relative, meta.permissions().mode() & 0o7777);
            }
        }
    }
    found
}

#[test]
fn the_package_installs_verifies_runs_and_purges_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let deb = xtask::package::build_deb(Path::new(BINARY), &workspace(), out.path()).unwrap();
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("filter-agent_{VERSION}_amd64.deb")
    );

    // The control fields: the libraries the binary links, found by dpkg-shlibdeps.
    let field = |name: &str| {
        ok(Command::new("dpkg-deb")
            .args(["--field"])
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap())
        .trim()
        .to_string()
    };
    assert_eq!(field("Package"), "filter-agent");
    assert_eq!(field("Version"), VERSION);
    let depends = field("Depends");
    for library in ["libxdp1 (>= ", "libbpf1 (>= ", "libc6 (>= "] {
        assert!(depends.contains(library), "{depends}");
    }
    // They are on this machine, which is what --force-depends stands in for.
    for library in ["libxdp1", "libbpf1"] {
        ok(Command::new("dpkg").args(["-s", library]).output().unwrap());
    }

    let root = tempfile::Builder::new()
        .prefix("filter-agent-package-root-")
        .tempdir()
        .unwrap();
    let root = root.path();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let before = files(root);
    ok(dpkg(root, &["-i", deb.to_str().unwrap()]));

    let installed = files(root);
    let expect = [
        ("usr/bin/filter-agent", 0o755),
        ("usr/lib/systemd/system/filter-agent.service", 0o644),
        ("usr/lib/sysusers.d/filter-agent.conf", 0o644),
        ("etc/filter-agent/policy.yaml", 0o644),
        ("usr/share/man/man1/filter-agent.1.gz", 0o644),
        ("usr/share/man/man1/filter-agent-run.1.gz", 0o644),
        ("usr/share/man/man1/filter-agent-exemptions-add.1.gz", 0o644),
        ("usr/share/bash-completion/completions/filter-agent", 0o644),
        ("usr/share/zsh/vendor-completions/_filter-agent", 0o644),
        (
            "usr/share/fish/vendor_completions.d/filter-agent.fish",
            0o644,
        ),
        ("usr/share/doc/filter-agent/copyright", 0o644),
        ("usr/share/doc/filter-agent/changelog.Debian.gz", 0o644),
        ("usr/share/doc/filter-agent/examples/ppp/ip-up", 0o755),
        (MONITORING[0].1, 0o644),
        (MONITORING[1].1, 0o644),
    ];
    for (path, mode) in expect {
        assert_eq!(installed.get(path), Some(&mode), "{path}: {installed:#?}");
    }
    for (source, path) in MONITORING {
        assert!(
            std::fs::read(workspace().join(source)).unwrap()
                == std::fs::read(root.join(path)).unwrap(),
            "{path} is not {source}"
        );
    }
    let listing = ok(Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .unwrap());
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "{listing}"
    );
    // The hidden `docs` subcommand gets no man page.
    assert!(!installed.contains_key("usr/share/man/man1/filter-agent-docs.1.gz"));

    // The conffile, with the md5 of what is on disk.
    let conffiles = query(root, "${Conffiles}");
    let policy = root.join("etc/filter-agent/policy.yaml");
    let md5 = ok(Command::new("md5sum").arg(&policy).output().unwrap());
    let md5 = md5.split_whitespace().next().unwrap();
    assert_eq!(
        conffiles.trim(),
        format!("/etc/filter-agent/policy.yaml {md5}"),
        "{conffiles}"
    );
    assert_eq!(query(root, "${Status}"), "install ok installed");

    // postinst created the socket's groups in the scratch root's /etc/group.
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    for group in ["filter-agent:", "filter-agent-admin:"] {
        assert!(groups.lines().any(|l| l.starts_with(group)), "{groups}");
    }

    // The installed unit: systemd-analyze resolves ExecStart and the groups in the root.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/filter-agent.service")).unwrap();
    assert!(
        unit.contains(
            "\nExecStart=/usr/bin/filter-agent run --policy /etc/filter-agent/policy.yaml "
        ),
        "{unit}"
    );
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/usr/lib/systemd/system/filter-agent.service")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("filter-agent"),
        "systemd-analyze verify: {said}"
    );
    eprintln!("systemd-analyze verify: exit 0, said {said:?}");

    // The installed binary and policy: monitor mode, attached nowhere, valid.
    let bin = root.join("usr/bin/filter-agent");
    assert_eq!(
        ok(Command::new(&bin).arg("--version").output().unwrap()).trim(),
        format!("filter-agent {VERSION}")
    );
    let check: Value = serde_json::from_str(&ok(Command::new(&bin)
        .args(["check", "--json", "--policy"])
        .arg(&policy)
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(check["ok"], true, "{check}");
    let text = std::fs::read_to_string(&policy).unwrap();
    let parsed: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(parsed["mode"], "monitor", "{text}");
    assert!(parsed.get("interfaces").is_none(), "{text}");
    assert_eq!(
        text,
        xtask::package::default_policy(
            &std::fs::read_to_string(workspace().join("policies/example.yaml")).unwrap()
        )
        .unwrap()
    );

    // Remove: a conffile the operator changed stays, the rest goes.
    let edited = text.replace("mode: monitor", "mode: enforce");
    std::fs::write(&policy, &edited).unwrap();
    std::fs::create_dir_all(root.join("var/lib/filter-agent/history")).unwrap();
    std::fs::write(root.join("var/lib/filter-agent/exemptions.yaml"), "[]\n").unwrap();
    ok(dpkg(root, &["--remove", "filter-agent"]));
    assert_eq!(query(root, "${Status}"), "deinstall ok config-files");
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), edited);
    assert!(!bin.exists());
    assert!(root.join("var/lib/filter-agent/exemptions.yaml").exists());

    // Purge: the conffile and the agent's state go too; what is left is what was there
    // before, dpkg's own files and the groups.
    ok(dpkg(root, &["--purge", "filter-agent"]));
    let left: Vec<String> = files(root)
        .into_keys()
        .filter(|p| {
            !before.contains_key(p)
                && !p.starts_with("var/lib/dpkg/")
                && !["etc/group", "etc/gshadow", "etc/.pwd.lock"].contains(&p.as_str())
        })
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert!(!root.join("etc/filter-agent").exists());
    assert!(!root.join("var/lib/filter-agent").exists());
}
