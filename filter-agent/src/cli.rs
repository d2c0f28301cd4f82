//! Command-line definitions; `main.rs` only dispatches.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "filter-agent",
    version,
    about = "XDP filter that keeps restricted ISP customers from sending SMTP (TCP/25) anywhere but the relays",
    after_help = "Exit status: 0 success, 1 failure, 2 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: load and attach the filter to the policy's interfaces, then keep
    /// it in step with the policy file (reload on SIGHUP or when the file changes).
    /// Stopping the agent leaves the filter enforcing; `detach` removes it.
    #[command(after_help = "Examples:
  filter-agent run --policy /etc/filter-agent/policy.yaml
  filter-agent run --policy policies/lab.yaml --pin-path /sys/fs/bpf/filter-agent-lab
  kill -HUP $(pidof filter-agent)     # reload now

Logging: RUST_LOG=debug for more detail; one event per line.")]
    Run {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Where maps and links are pinned (bpffs is mounted there if needed).
        #[arg(long, value_name = "DIR", default_value = crate::agent::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Remove the filter from every interface and delete its pinned maps.
    #[command(after_help = "Example:\n  filter-agent detach --pin-path /sys/fs/bpf/filter-agent")]
    Detach {
        #[arg(long, value_name = "DIR", default_value = crate::agent::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Validate a policy file and print its warnings; no root needed.
    #[command(after_help = "Example:\n  filter-agent check --policy policies/example.yaml")]
    Check {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
    },
    /// Run captured frames through the real XDP program (not attached) and print the
    /// kernel's verdict for each. Needs root.
    #[command(after_help = "Examples:
  filter-agent replay --policy policies/example.yaml capture.pcapng
  filter-agent replay --policy tests/corpus/policy.yaml --expect tests/corpus/corpus.expect tests/corpus/corpus.pcap
  filter-agent replay --policy p.yaml --format json capture.pcap > verdicts.jsonl

The --expect file has one line per frame, `N VERDICT REASON  # comment` (N counts frames
across all captures from 1), or JSON lines as printed by --format json. Any mismatch
exits with status 1.")]
    Replay {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Expected verdicts; exit 1 listing every frame whose kernel verdict differs.
        #[arg(long, value_name = "FILE")]
        expect: Option<PathBuf>,
        /// pcap or pcapng files with Ethernet frames.
        #[arg(required = true, value_name = "CAPTURE")]
        captures: Vec<PathBuf>,
    },
    /// Show what the policy does with one TCP flow, and which group and prefix decide it
    /// (reference model; no root needed).
    #[command(after_help = "Examples:
  filter-agent explain --policy policies/example.yaml --src 100.64.1.2 --dst 203.0.113.9
  filter-agent explain --policy policies/example.yaml --src 2001:db8:1000::5 --dst 2001:db8:ffff::25 --json")]
    Explain {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_name = "ADDR")]
        src: IpAddr,
        #[arg(long, value_name = "ADDR")]
        dst: IpAddr,
        #[arg(long, value_name = "PORT", default_value_t = 25, value_parser = clap::value_parser!(u16).range(1..))]
        dport: u16,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}
