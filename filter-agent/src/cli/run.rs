//! What each subcommand does: parse the command line, dispatch, map the outcome to the
//! exit status.

use std::{io, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;

use super::{
    args::{Cli, Command, ExemptionsCommand, Format, SessionsCommand},
    manpages, render,
};
use crate::{
    agent, capture,
    control::{Request, protocol::Explanation},
    explain, policy, replay,
};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a policy, printing its warnings; a policy with errors is a failure that
/// prints every error.
fn load_policy(path: &std::path::Path) -> Result<policy::Policy> {
    match policy::load_reporting(path, |warning| eprintln!("{warning}")) {
        Ok((policy, _)) => Ok(policy),
        Err(errors) => bail!("{errors}\npolicy {} rejected", path.display()),
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(options) => {
            agent::init_logging();
            agent::run(options.into())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, socket } => {
            render::status(&socket, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            json,
            watch,
            socket,
        } => {
            render::stats(&socket, json, watch)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Offenders { top, json, socket } => {
            render::offenders(&socket, top, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exemptions { command, socket } => {
            match command {
                ExemptionsCommand::List { json } => render::exemptions_list(&socket, json)?,
                ExemptionsCommand::Add {
                    prefix,
                    subscriber,
                    reason,
                    expires,
                    until,
                } => render::exemptions_change(
                    &socket,
                    match (prefix, subscriber) {
                        (_, Some(subscriber)) => Request::SubscriberExemptionsAdd {
                            subscriber,
                            reason,
                            expires,
                            until,
                        },
                        (prefix, None) => Request::ExemptionsAdd {
                            prefix: prefix.unwrap_or_default(),
                            reason,
                            expires,
                            until,
                        },
                    },
                )?,
                ExemptionsCommand::Remove { prefix, subscriber } => render::exemptions_change(
                    &socket,
                    match (prefix, subscriber) {
                        (_, Some(subscriber)) => Request::SubscriberExemptionsRemove { subscriber },
                        (prefix, None) => Request::ExemptionsRemove {
                            prefix: prefix.unwrap_or_default(),
                        },
                    },
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions { command, socket } => {
            match command {
                SessionsCommand::List { json } => render::sessions_list(&socket, json)?,
                SessionsCommand::Up {
                    subscriber,
                    addresses,
                    session_id,
                } => render::session_change(
                    &socket,
                    Request::SessionsUp {
                        subscriber,
                        addresses,
                        session_id,
                    },
                )?,
                SessionsCommand::Down {
                    subscriber,
                    session_id,
                } => render::session_change(
                    &socket,
                    Request::SessionsDown {
                        subscriber,
                        session_id,
                    },
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Docs { dir } => {
            for file in manpages::generate(<Cli as clap::CommandFactory>::command(), &dir)? {
                println!("{}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { pin_path } => {
            agent::detach(&pin_path)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { policy, json: true } => {
            let (ok, diagnostics) = match policy::load(&policy) {
                Ok(loaded) => (true, loaded.warnings),
                Err(errors) => (false, errors.0),
            };
            let (errors, warnings): (Vec<_>, Vec<_>) = diagnostics
                .into_iter()
                .partition(|d| d.severity == policy::Severity::Error);
            println!(
                "{}",
                serde_json::json!({ "ok": ok, "errors": errors, "warnings": warnings })
            );
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check {
            policy,
            json: false,
        } => {
            let loaded = load_policy(&policy)?;
            println!(
                "{}: ok ({} groups, {} prefixes, {} relays)",
                policy.display(),
                loaded.groups.len(),
                loaded.prefix_count(),
                loaded.relays.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            policy,
            format,
            expect,
            replies,
            captures,
        } => {
            let image = load_policy(&policy)?.compile();
            let expected = match &expect {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(
                        capture::parse_expect(&text)
                            .with_context(|| format!("in {}", path.display()))?,
                    )
                }
                None => None,
            };
            let verdicts = replay::replay(&image, &captures)?;
            if let Some(path) = &replies {
                let written = replay::write_replies(path, &verdicts)?;
                eprintln!("{written} replies written to {}", path.display());
            }
            let mut stdout = io::stdout().lock();
            match format {
                Format::Table => replay::print_table(&mut stdout, &verdicts)?,
                Format::Json => {
                    replay::print_json(&mut stdout, &verdicts)?;
                    eprint!("{}", replay::summary(&verdicts));
                }
            }
            if let (Some(expected), Some(path)) = (expected, expect) {
                let problems = replay::mismatches(&verdicts, &expected, &path);
                if !problems.is_empty() {
                    for problem in &problems {
                        eprintln!("mismatch: {problem}");
                    }
                    eprintln!("{} mismatches against {}", problems.len(), path.display());
                    return Ok(ExitCode::FAILURE);
                }
                eprintln!("all {} frames match {}", verdicts.len(), path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            policy,
            socket,
            src,
            dst,
            dport,
            json,
        } => {
            if src.is_ipv4() != dst.is_ipv4() {
                bail!("--src {src} and --dst {dst} are of different address families");
            }
            let explanation: Explanation = match policy {
                Some(policy) => {
                    let image = load_policy(&policy)?.compile();
                    explain::explain(&image, src, dst, dport)
                }
                None => render::call(&socket, &Request::Explain { src, dst, dport })?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explanation.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
