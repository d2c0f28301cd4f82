//! Project chores: `cargo xtask setup | test | deny | demo | docs | package | bench | bench-agent | bench-live`.
//! xtask must build without the eBPF toolchain, because `setup` installs it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use xtask::{output, package, run};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): nightly rust-src,
    /// bpf-linker 0.13 built against nightly's LLVM, cargo-deny, Debian packages.
    Setup,
    /// Set up, then run every test (kernel tests need root).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the dependency tree against deny.toml with cargo-deny: licenses, banned and
    /// duplicate crates, sources, and RustSec advisories when their database can be fetched.
    Deny,
    /// Set up, build, and run the lab: namespaces customers/router/internet, the agent on
    /// the router, real TCP connections from every customer type, a live policy change.
    Demo,
    /// Set up, then measure ns per frame in the kernel against a pass-only baseline.
    Bench {
        #[arg(long)]
        json: bool,
        /// The 10,000-prefix policy only, three rounds: for trying out a change.
        #[arg(long)]
        quick: bool,
    },
    /// Write shell completions and man pages, generated from the CLI definitions, into
    /// target/docs.
    Docs,
    /// Set up, build the agent in release mode and the Debian package
    /// target/debian/filter-agent_VERSION_ARCH.deb from it.
    Package,
    /// Set up, then measure the agent: time from start to enforcement and peak memory at
    /// 1,000 / 100,000 / 1,000,000 prefixes, a one-prefix change in a 100,000-prefix
    /// policy, and replay throughput.
    BenchAgent {
        #[arg(long)]
        json: bool,
        /// Smaller sizes and captures: a smoke run, not for reporting.
        #[arg(long)]
        quick: bool,
    },
    /// Set up, then flood a router namespace with NIC-like frames (SYNs to tcp/25, and
    /// tcp/443) and measure the receive CPU per packet of our XDP filter, XDP baselines,
    /// nftables and plain forwarding, interleaved (about ten minutes; --quick about two).
    BenchLive {
        #[arg(long)]
        json: bool,
        /// Two policy sizes, three repetitions, fewer frames (about a minute): a smoke
        /// run, not for reporting.
        #[arg(long)]
        quick: bool,
        /// Also report each XDP program's own run time per packet (BPF_ENABLE_STATS; the
        /// kernel's timing then adds to every figure): where the time goes.
        #[arg(long)]
        prog_stats: bool,
    },
}

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Its rust-version is 1.88.
const CARGO_DENY_VERSION: &str = "0.20.2";
/// iproute2 for the labs; nftables and ethtool for `bench-live` (the nftables setups,
/// and offload settings and per-queue XDP counters of the veths); freeradius and
/// freeradius-utils (radclient) for the subscriber tests and the demo's RADIUS feed;
/// libxdp-dev (with pkg-config) to link the agent against libxdp, which shares the XDP
/// hook through its multi-program dispatcher; xdp-tools (`xdp-loader`, `xdp-filter`) for
/// the tests that run beside other XDP programs; prometheus (the server and promtool) for
/// the tests of the alerting rules and of a real scrape of the agents; dpkg-dev
/// (dpkg-shlibdeps, and strip through binutils) and systemd (systemd-sysusers,
/// systemd-analyze) to build the Debian package and test it in a scratch root; minisign,
/// whose signatures and keys the signed-policy tests exchange with filter-agent's own;
/// ca-certificates for the CA bundle an https --policy-url is checked against by default;
/// curl, the real client of the metrics endpoint's TLS and basic auth tests.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "ethtool",
    "freeradius",
    "freeradius-utils",
    "pkg-config",
    "libxdp-dev",
    "xdp-tools",
    "prometheus",
    "dpkg-dev",
    "systemd",
    "minisign",
    "ca-certificates",
    "curl",
];

fn main() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Test { args } => {
            setup()?;
            require_root("the kernel tests load XDP programs")?;
            let mut cmd = Command::new("cargo");
            cmd.args(["test", "--workspace"]).args(args);
            run(&mut cmd)
        }
        Task::Deny => {
            ensure_cargo_deny()?;
            deny()
        }
        Task::Demo => {
            setup()?;
            require_root("the demo creates network namespaces and loads the XDP program")?;
            run(Command::new("cargo").args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "filter-agent",
                "--bin",
                "filter-agent",
                "--example",
                "demo",
            ]))?;
            run(Command::new("target/release/examples/demo").arg("target/release/filter-agent"))
        }
        Task::Docs => {
            setup()?;
            run(Command::new("cargo").args([
                "run",
                "--quiet",
                "-p",
                "filter-agent",
                "--",
                "docs",
                "target/docs",
            ]))
        }
        Task::Package => {
            setup()?;
            let started = std::time::Instant::now();
            run(Command::new("cargo").args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "filter-agent",
                "--bin",
                "filter-agent",
            ]))?;
            let deb = package::build_deb(
                Path::new("target/release/filter-agent"),
                &root,
                Path::new("target/debian"),
            )?;
            eprintln!(
                "package: {} in {:.0} s",
                deb.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Task::Bench { json, quick } => bench("xdp", json, quick, &[]),
        Task::BenchAgent { json, quick } => bench("agent", json, quick, &[]),
        Task::BenchLive {
            json,
            quick,
            prog_stats,
        } => bench(
            "live",
            json,
            quick,
            if prog_stats { &["--prog-stats"] } else { &[] },
        ),
    }
}

fn bench(name: &str, json: bool, quick: bool, extra: &[&str]) -> Result<()> {
    setup()?;
    require_root("the benchmarks load XDP programs")?;
    let mut cmd = Command::new("cargo");
    cmd.args([
        "bench",
        "--quiet",
        "-p",
        "filter-agent",
        "--bench",
        name,
        "--",
    ]);
    if json {
        cmd.arg("--json");
    }
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(extra);
    run(&mut cmd)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn setup() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_cargo_deny()?;
    ensure_debian_packages()
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("rustup is needed (with a nightly toolchain) to build the eBPF crate")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker 0.13 writes BTF the kernel accepts (0.10 does not); it links against the
/// nightly toolchain's own libLLVM, found through a prefix folder holding a symlink.
fn ensure_bpf_linker() -> Result<()> {
    // It loads nightly's libLLVM at run time, which `rustup run nightly` puts on the
    // library path (as it does when rustc invokes the linker).
    if let Ok(version) =
        output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
        && version.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against {}",
        libllvm.display()
    );
    run(Command::new("cargo").env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
        "--locked",
        "--force",
    ]))
}

fn ensure_cargo_deny() -> Result<()> {
    if let Ok(version) = output(Command::new("cargo").args(["deny", "--version"]))
        && version.contains(CARGO_DENY_VERSION)
    {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deny {CARGO_DENY_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--locked",
        "--force",
    ]))
}

/// The advisory database is a git repository that cargo-deny clones from GitHub, which
/// some machines (ours, CI) cannot reach, and we know of no package registry shipping a
/// copy. Without it `cargo deny check` fails as a whole, so the other checks run on their
/// own first, and the advisories are checked only once the database is fetched;
/// otherwise one line says they were not, and why.
fn deny() -> Result<()> {
    run(Command::new("cargo").args(["deny", "check", "licenses", "bans", "sources"]))?;
    let fetch = Command::new("cargo")
        .args(["deny", "fetch", "db"])
        .output()
        .context("running cargo deny fetch db")?;
    if !fetch.status.success() {
        let stderr = String::from_utf8_lossy(&fetch.stderr);
        let reason = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim();
        eprintln!(
            "deny: advisories NOT checked, the advisory database could not be fetched: {reason}"
        );
        return Ok(());
    }
    run(Command::new("cargo").args(["deny", "check", "advisories"]))
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root("installing Debian packages")?;
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q"])
        .args(&missing))
}

fn require_root(why: &str) -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!("{why}: run as root (e.g. sudo -E cargo xtask ...)");
    }
    Ok(())
}
