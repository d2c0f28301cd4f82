//! The Debian package, built with dpkg-deb (on every Debian machine; cargo-deb would
//! cost a long `cargo install` in CI and does nothing here that a few lines cannot).
//!
//! Layout, per Debian practice: the binary in /usr/bin (the CLI is for the socket
//! group's unprivileged members too, not for root only), the unit and the sysusers file
//! under /usr/lib (systemd's own directories), gzipped man pages, completions in the
//! directories bash-completion, zsh and fish read from packages, and
//! /etc/filter-agent/policy.yaml as a conffile, derived from policies/example.yaml by
//! [`default_policy`].

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{output, run};

pub const PACKAGE: &str = "filter-agent";
/// Where the package installs the policy (a conffile), and the unit reads it.
pub const POLICY: &str = "etc/filter-agent/policy.yaml";

/// The package's policy: `example` (policies/example.yaml, the one source) in monitor
/// mode and attached nowhere, its `interfaces` block commented out, so that installing
/// the package (or starting the service by mistake) changes no traffic.
pub fn default_policy(example: &str) -> Result<String> {
    let mut out = String::from(
        "# filter-agent's starting policy: the project's example (policies/example.yaml)\n\
         # in monitor mode, attached to no interface. Put in your prefixes, relays and\n\
         # interfaces, check it with `filter-agent check --policy FILE`, start the agent\n\
         # and watch `filter-agent stats` before you set `mode: enforce`.\n\n",
    );
    let (mut modes, mut interfaces) = (0, 0);
    let mut in_interfaces = false;
    for line in example.lines() {
        let top_level = !line.starts_with([' ', '\t']) && !line.is_empty();
        if in_interfaces && top_level {
            in_interfaces = false;
        }
        if line == "mode: enforce" {
            modes += 1;
            out.push_str("mode: monitor\n");
        } else if line == "interfaces:" {
            interfaces += 1;
            in_interfaces = true;
            out.push_str("# interfaces:\n");
        } else if in_interfaces && !line.is_empty() {
            out.push_str(&format!("# {line}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(
        modes == 1 && interfaces == 1,
        "policies/example.yaml must have one `mode: enforce` line and one top-level \
         `interfaces:` block for the package's policy to be derived from it (found {modes} \
         and {interfaces})"
    );
    Ok(out)
}

/// The package file's name for `version` on this machine's architecture.
pub fn deb_name(version: &str) -> Result<String> {
    Ok(format!("{PACKAGE}_{version}_{}.deb", architecture()?))
}

fn architecture() -> Result<String> {
    Ok(output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string())
}

/// Builds the package from `binary` (stripped on the way) and the workspace's files
/// under `root`, into `out_dir`; returns the .deb's path. The version is the binary's own
/// (`--version`), and must head packaging/debian/changelog.
pub fn build_deb(binary: &Path, root: &Path, out_dir: &Path) -> Result<PathBuf> {
    // Some of the tools run in directories of their own.
    let (binary, root, out_dir) = (
        &std::path::absolute(binary)?,
        &std::path::absolute(root)?,
        &std::path::absolute(out_dir)?,
    );
    let version = output(Command::new(binary).arg("--version"))?
        .trim()
        .strip_prefix("filter-agent ")
        .context("`filter-agent --version` says `filter-agent VERSION`")?
        .to_string();
    let packaging = root.join("packaging");
    let changelog = read(&packaging.join("debian/changelog"))?;
    ensure!(
        changelog.starts_with(&format!("{PACKAGE} ({version}) ")),
        "packaging/debian/changelog does not start with an entry for {version}: add one"
    );
    fs::create_dir_all(out_dir)?;
    let staging = tempdir(out_dir)?;
    let tree = staging.join("tree");
    let stage = |path: &str, mode: u32, bytes: &[u8]| -> Result<()> {
        let to = tree.join(path);
        fs::create_dir_all(to.parent().expect("staged paths have a directory"))?;
        fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    };

    let bin = tree.join("usr/bin/filter-agent");
    fs::create_dir_all(bin.parent().unwrap())?;
    // Debian ships binaries without debug information (the dev build has 140 MB of it).
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment", "-o"])
        .arg(&bin)
        .arg(binary))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    stage(
        "usr/lib/systemd/system/filter-agent.service",
        0o644,
        read(&packaging.join("filter-agent.service"))?.as_bytes(),
    )?;
    stage(
        "usr/lib/sysusers.d/filter-agent.conf",
        0o644,
        read(&packaging.join("debian/filter-agent.sysusers"))?.as_bytes(),
    )?;
    let policy = default_policy(&read(&root.join("policies/example.yaml"))?)?;
    stage(POLICY, 0o644, policy.as_bytes())?;
    let checked = Command::new(&bin)
        .arg("check")
        .arg("--policy")
        .arg(tree.join(POLICY))
        .output()?;
    ensure!(
        checked.status.success(),
        "the package's policy is invalid:\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let doc = "usr/share/doc/filter-agent";
    stage(
        &format!("{doc}/copyright"),
        0o644,
        read(&packaging.join("debian/copyright"))?.as_bytes(),
    )?;
    stage(
        &format!("{doc}/changelog.Debian.gz"),
        0o644,
        &gzip(changelog.as_bytes())?,
    )?;
    for (from, to, mode) in [
        ("policies/example.yaml", "examples/example.yaml", 0o644),
        ("packaging/ppp/ip-up", "examples/ppp/ip-up", 0o755),
        ("packaging/ppp/ip-down", "examples/ppp/ip-down", 0o755),
        (
            "packaging/prometheus/filter-agent.rules.yml",
            "examples/prometheus/filter-agent.rules.yml",
            0o644,
        ),
        (
            "packaging/grafana/filter-agent.json",
            "examples/grafana/filter-agent.json",
            0o644,
        ),
    ] {
        stage(
            &format!("{doc}/{to}"),
            mode,
            read(&root.join(from))?.as_bytes(),
        )?;
    }

    // Man pages and completions, from the binary being packaged.
    let docs = staging.join("docs");
    output(Command::new(&bin).arg("docs").arg(&docs))?;
    for entry in fs::read_dir(&docs)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path)?;
        match name.as_str() {
            "filter-agent.bash" => stage(
                "usr/share/bash-completion/completions/filter-agent",
                0o644,
                &bytes,
            )?,
            "_filter-agent" => stage(
                "usr/share/zsh/vendor-completions/_filter-agent",
                0o644,
                &bytes,
            )?,
            "filter-agent.fish" => stage(
                "usr/share/fish/vendor_completions.d/filter-agent.fish",
                0o644,
                &bytes,
            )?,
            man if man.ends_with(".1") => stage(
                &format!("usr/share/man/man1/{man}.gz"),
                0o644,
                &gzip(&bytes)?,
            )?,
            other => bail!("`filter-agent docs` wrote {other}, which the package does not place"),
        }
    }

    // The control area.
    let control = tree.join("DEBIAN");
    fs::create_dir_all(&control)?;
    for script in ["postinst", "prerm", "postrm"] {
        let to = control.join(script);
        fs::copy(packaging.join("debian").join(script), &to)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(control.join("conffiles"), format!("/{POLICY}\n"))?;
    let md5sums = output(
        Command::new("sh")
            .current_dir(&tree)
            .args(["-c", "find . \\( -path ./DEBIAN -o -path ./etc \\) -prune -o -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 md5sum"]),
    )?;
    fs::write(control.join("md5sums"), md5sums)?;
    let depends = shlib_depends(&staging, &bin)?;
    let installed_kb = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(&tree),
    )?
    .split_whitespace()
    .next()
    .context("du prints a size")?
    .to_string();
    fs::write(
        control.join("control"),
        format!(
            "Package: {PACKAGE}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: filter-agent maintainers <filter-agent@example.invalid>\n\
             Installed-Size: {installed_kb}\n\
             Depends: {depends}, systemd | systemd-sysusers\n\
             Section: net\n\
             Priority: optional\n\
             Homepage: https://example.invalid/filter-agent\n\
             Description: XDP filter keeping ISP customers off SMTP (TCP/25)\n \
             An eBPF/XDP program and the agent that keeps it in step with a YAML policy:\n \
             residential and business broadband customers may send mail on port 25 only\n \
             to the ISP's relays, exempt prefixes and subscribers may send anywhere.\n \
             Policy changes apply live without a gap in enforcement; the agent exports\n \
             Prometheus metrics and replays packet captures through the real program.\n",
            arch = architecture()?,
        ),
    )?;
    fs::set_permissions(&control, fs::Permissions::from_mode(0o755))?;

    let deb = out_dir.join(deb_name(&version)?);
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb))?;
    fs::remove_dir_all(&staging)?;
    Ok(deb)
}

/// The binary's Depends from the shlibs of the libraries it links, as dpkg-shlibdeps
/// computes them (libxdp1, libbpf1, libc6, libgcc-s1 with their minimum versions).
fn shlib_depends(staging: &Path, bin: &Path) -> Result<String> {
    let source = staging.join("source");
    fs::create_dir_all(source.join("debian"))?;
    fs::write(
        source.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let line = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(&source)
            .args(["-O", "--warnings=0"])
            .arg(bin),
    )?;
    let depends = line
        .trim()
        .strip_prefix("shlibs:Depends=")
        .with_context(|| format!("dpkg-shlibdeps printed {line:?}"))?;
    ensure!(
        depends.contains("libxdp1") && depends.contains("libbpf1"),
        "dpkg-shlibdeps found no libxdp1/libbpf1 dependency: {depends}"
    );
    Ok(depends.to_string())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child.stdin.take().unwrap().write_all(bytes)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

fn tempdir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".staging-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_is_the_example_in_monitor_mode_attached_nowhere() {
        let example = "version: 1\nmode: enforce\nports: [25]\n# where\ninterfaces:\n  - name: eth1\n    xdp_mode: auto\n\n# after\nrelays: []\n";
        let policy = default_policy(example).unwrap();
        let body = policy.split_once("\n\n").unwrap().1;
        assert_eq!(
            body,
            "version: 1\nmode: monitor\nports: [25]\n# where\n# interfaces:\n#   - name: eth1\n#     xdp_mode: auto\n\n# after\nrelays: []\n"
        );
        let error = default_policy("version: 1\nmode: monitor\n").unwrap_err();
        assert!(error.to_string().contains("found 0 and 0"), "{error}");
    }
}
