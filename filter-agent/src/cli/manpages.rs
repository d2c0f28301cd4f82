//! Shell completions and man pages, generated from the clap definitions so they never
//! drift from the real command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap_complete::Shell;
use clap_mangen::Man;

/// Writes completions for bash, zsh and fish and the man pages (`filter-agent.1` and one
/// per subcommand, e.g. `filter-agent-run.1`) into `dir`, creating it if needed; returns
/// the files written. Hidden subcommands get no man page.
pub fn generate(command: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Building fills in what the generators read: subcommand display names
    // ("filter-agent-run"), the help subcommand (dropped: it has no page of its own).
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let bin_name = command.get_name().to_string();

    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut command, &bin_name, dir)
            .with_context(|| format!("writing {shell} completions into {}", dir.display()))?;
        if shell == Shell::Bash {
            fix_bash_hyphen(&path, &bin_name)?;
        }
        written.push(path);
    }
    man_pages(command, dir, &mut written)?;
    Ok(written)
}

/// clap_complete's bash script names a subcommand's state `filter__agent__subcmd__run`
/// where it is set but `filter__subcmd__agent__subcmd__run` where it is matched when the
/// binary name has a hyphen, so no subcommand option ever completes
/// (clap-rs/clap#6421, open in clap_complete 4.6.11). Spelling the matches the way the
/// state is set fixes it, and does nothing once clap_complete does.
fn fix_bash_hyphen(path: &Path, bin_name: &str) -> Result<()> {
    const SEP: &str = "__subcmd__";
    let wrong = format!("{}{SEP}", bin_name.replace('-', SEP));
    let right = format!("{}{SEP}", bin_name.replace('-', "__"));
    let script = std::fs::read_to_string(path)?;
    if wrong != right && script.contains(&wrong) {
        std::fs::write(path, script.replace(&wrong, &right))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn man_pages(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub.clone(), dir, written)?;
    }
    let man = Man::new(command);
    let path = man
        .generate_to(dir)
        .with_context(|| format!("writing {} into {}", man.get_filename(), dir.display()))?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command as Process;

    use clap::{Arg, Command};

    use super::*;

    fn command() -> Command {
        Command::new("filter-agent")
            .about("Keeps an XDP port-25 filter in step with a policy")
            .subcommand(
                Command::new("run")
                    .about("Load, attach and follow the policy")
                    .arg(Arg::new("policy").long("policy").help("The policy file")),
            )
            .subcommand(
                Command::new("exemptions")
                    .about("Manage exemptions")
                    .subcommand(
                        Command::new("add")
                            .about("Exempt a prefix")
                            .arg(Arg::new("expires").long("expires")),
                    ),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    /// What bash completes for `words`, the last one being the word under the cursor.
    fn complete(script: &Path, words: &[&str]) -> String {
        let cword = words.len() - 1;
        let shell = format!(
            "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _filter__agent filter-agent '{cur}' '{prev}'; echo \"${{COMPREPLY[*]}}\"",
            script = script.display(),
            words = words.join(" "),
            cur = words[cword],
            prev = words[cword - 1],
        );
        let out = Process::new("bash").args(["-c", &shell]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn writes_completions_and_man_pages() {
        let tmp = tempfile::tempdir().unwrap();
        // Not there yet: generate creates it.
        let dir = tmp.path().join("docs");
        let dir = dir.as_path();

        let written = generate(command(), dir).unwrap();
        let mut names: Vec<_> = written
            .iter()
            .map(|p| {
                assert_eq!(p.parent(), Some(dir));
                p.file_name().unwrap().to_str().unwrap().to_string()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "_filter-agent",
                "filter-agent-exemptions-add.1",
                "filter-agent-exemptions.1",
                "filter-agent-run.1",
                "filter-agent.1",
                "filter-agent.bash",
                "filter-agent.fish",
            ]
        );
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();

        let man = read("filter-agent.1");
        assert!(man.starts_with(".ie"), "{man}");
        assert!(man.contains("filter\\-agent\\-run(1)"), "{man}");
        assert!(man.contains("Load, attach and follow the policy"), "{man}");
        assert!(!man.contains("secret"), "{man}");
        assert!(read("filter-agent-run.1").contains("\\-\\-policy"));
        assert!(read("filter-agent-exemptions-add.1").contains("\\-\\-expires"));

        let bash = dir.join("filter-agent.bash");
        assert!(read("filter-agent.bash").contains("filter__agent,run)"));
        assert_eq!(complete(&bash, &["filter-agent", "r"]), "run");
        assert_eq!(complete(&bash, &["filter-agent", "run", "--p"]), "--policy");
        assert_eq!(
            complete(&bash, &["filter-agent", "exemptions", "add", "--e"]),
            "--expires"
        );
        assert!(read("_filter-agent").starts_with("#compdef filter-agent"));
        assert!(read("_filter-agent").contains("'--policy=[The policy file]"));
        assert!(read("filter-agent.fish").contains("-a \"run\""));
    }
}
