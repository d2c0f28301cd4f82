//! What each subcommand does: parse the command line, dispatch, map the outcome to the
//! exit status.

use std::{io, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;

use super::{
    args::{Cli, Command, ExemptionsCommand, PrefixesCommand, SessionsCommand},
    change, manpages, render,
};
use crate::{
    agent, capture,
    control::{Request, protocol::Explanation},
    drop_in, explain, policy, replay, source,
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

/// Loads a policy file with the prefixes drop-in beside it laid over it (as the agent
/// does), printing the warnings; a policy with errors is a failure that prints every
/// error. Returns the policy and the drop-in's path, if there is one.
fn load_layered(path: &std::path::Path) -> Result<(drop_in::Layered, Option<std::path::PathBuf>)> {
    match drop_in::load(path) {
        Ok((layered, beside)) => {
            for warning in &layered.warnings {
                eprintln!("{warning}");
            }
            Ok((layered, beside))
        }
        Err(errors) => bail!("{errors}\npolicy {} rejected", path.display()),
    }
}

fn load_policy(path: &std::path::Path) -> Result<policy::Policy> {
    Ok(load_layered(path)?.0.policy)
}

/// `plan` and `diff` keep exit status 1 for "it differs": errors are 2.
fn usage_failure(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn plan_outcome(outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => usage_failure(&format!("{err:#}")),
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(options) => {
            agent::init_logging(options.log_format);
            agent::run(options.into()).map_err(crate::dataplane::explain_permission)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let (public, path) = source::sign::keygen(&out)?;
            println!(
                "secret key {} (mode 0600: keep it on the signing host)\npublic key {} (key id {}: give it to the agents as --policy-key)",
                out.display(),
                path.display(),
                public.id()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign { key, policy } => {
            let sig = source::sign::sign(&key, &policy, &source::sign::ask_on_terminal)?;
            println!("{}", sig.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { key, policy } => Ok(match source::sign::verify_file(&key, &policy) {
            Ok(Ok(public)) => {
                println!(
                    "{}: signature ok (key id {})",
                    policy.display(),
                    public.id()
                );
                ExitCode::SUCCESS
            }
            Ok(Err(reason)) => {
                eprintln!("{}: INVALID: {reason}", policy.display());
                ExitCode::FAILURE
            }
            Err(err) => usage_failure(&format!("{err:#}")),
        }),
        Command::Status {
            json,
            socket,
            pinned,
        } => {
            render::status(&socket, &pinned.into(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            json,
            watch,
            socket,
            pinned,
        } => {
            render::stats(&socket, &pinned.into(), json, watch)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Offenders {
            top,
            json,
            socket,
            pinned,
        } => {
            render::offenders(&socket, &pinned.into(), top, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exemptions {
            command,
            socket,
            pinned,
        } => {
            match command {
                ExemptionsCommand::List { json } => {
                    render::exemptions_list(&socket, &pinned.into(), json)?
                }
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
        Command::Prefixes { command, socket } => {
            let (request, json) = match command {
                PrefixesCommand::Add {
                    group,
                    prefixes,
                    json,
                } => (Request::PrefixesAdd { group, prefixes }, json),
                PrefixesCommand::Remove { prefixes, json } => {
                    (Request::PrefixesRemove { prefixes }, json)
                }
            };
            change::prefixes(&socket, &request, json)?;
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
            let (ok, diagnostics) = match drop_in::load(&policy) {
                Ok((layered, _)) => (true, layered.warnings),
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
            let (layered, beside) = load_layered(&policy)?;
            let loaded = &layered.policy;
            let laid = match beside {
                Some(beside) => {
                    let (added, removed) = layered.drop_in.counts();
                    format!(
                        ", with {} laid over it ({added} added, {removed} removed)",
                        beside.display()
                    )
                }
                None => String::new(),
            };
            println!(
                "{}: ok ({} groups, {} prefixes, {} relays){laid}",
                policy.display(),
                loaded.groups.len(),
                loaded.prefix_count(),
                loaded.relays.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            policy,
            baseline,
            fail_on_change,
            format,
            engine,
            expect,
            replies,
            captures,
        } => Ok(
            match run_replay(ReplayArgs {
                policy,
                baseline,
                fail_on_change,
                format,
                engine,
                expect,
                replies,
                captures,
            }) {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(REPLAY_COULD_NOT_RUN)
                }
            },
        ),
        Command::Reload { socket } => {
            change::applied(&socket, &Request::Reload)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            policy,
            confirm_within,
            socket,
        } => {
            // Checked here first: the errors name the file as the operator wrote it.
            let text = policy::read(&policy)?;
            if let Err(errors) =
                policy::parse_reporting(&text, &policy.display().to_string(), |warning| {
                    eprintln!("{warning}")
                })
            {
                bail!(
                    "{errors}\npolicy {} rejected; nothing changed",
                    policy.display()
                );
            }
            change::applied(
                &socket,
                &change::apply_request(&policy, text, confirm_within),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            policy,
            window,
            json,
            socket,
        } => {
            let text = match policy::read(&policy) {
                Ok(text) => text,
                Err(errors) => return Ok(usage_failure(&format!("{errors}"))),
            };
            if let Err(errors) =
                policy::parse_reporting(&text, &policy.display().to_string(), |warning| {
                    eprintln!("{warning}")
                })
            {
                return Ok(usage_failure(&format!(
                    "{errors}\npolicy {} rejected",
                    policy.display()
                )));
            }
            let request = change::plan_request(&policy, text, Some(window));
            Ok(plan_outcome(change::plan(&socket, &request, json)))
        }
        Command::Diff {
            from,
            to,
            window,
            json,
            socket,
        } => {
            let request = Request::Diff {
                from,
                to,
                window_seconds: Some(window),
            };
            Ok(plan_outcome(change::plan(&socket, &request, json)))
        }
        Command::Confirm { socket } => {
            change::confirm(&socket)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback {
            to,
            confirm_within,
            socket,
        } => {
            change::applied(&socket, &Request::Rollback { to, confirm_within })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History { json, socket } => {
            change::history(&socket, json)?;
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

/// `replay`'s exit status when it could not run at all (as opposed to 1: it ran and found
/// a mismatch or a change).
const REPLAY_COULD_NOT_RUN: u8 = 2;

struct ReplayArgs {
    policy: std::path::PathBuf,
    baseline: Option<std::path::PathBuf>,
    fail_on_change: bool,
    format: replay::Format,
    engine: replay::Engine,
    expect: Option<std::path::PathBuf>,
    replies: Option<std::path::PathBuf>,
    captures: Vec<std::path::PathBuf>,
}

fn run_replay(args: ReplayArgs) -> Result<ExitCode> {
    let image = load_policy(&args.policy)?.compile();
    let baseline = match &args.baseline {
        Some(path) => Some(load_policy(path)?.compile()),
        None => None,
    };
    let expected = match &args.expect {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let expected =
                capture::parse_expect(&text).with_context(|| format!("in {}", path.display()))?;
            Some(replay::ExpectCheck::new(path.clone(), expected))
        }
        None => None,
    };
    let changes = baseline
        .as_ref()
        .map(|old| replay::Changes::new(image.clone(), old.clone(), args.fail_on_change));
    let mut replay = replay::Replay::new(image, baseline, args.engine)?;
    let stdout = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut output = replay::Output::new(stdout, args.format, args.engine, &args.captures);
    if let Some(check) = expected {
        output = output.expect(check);
    }
    if let Some(path) = &args.replies {
        output = output.replies(path)?;
    }
    if let Some(changes) = changes {
        output = output.changes(changes);
    }
    replay.run(&args.captures, &mut output)?;
    let ending = output.finish()?;
    let changed = args.fail_on_change && ending.changes > 0;
    Ok(if ending.mismatches > 0 || changed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
