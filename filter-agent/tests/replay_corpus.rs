//! The hand-judged corpora through the real XDP program (BPF_PROG_TEST_RUN, as root), and
//! the `replay` command's JSON and `--expect` contract. The reject corpus also holds the
//! kernel's reply frames to the ones built independently with etherparse.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use filter_agent::{
    capture::{Outcome, parse_expect, read_frames},
    dataplane::Dataplane,
    image::MapImage,
    model::{self, Model},
    policy,
    replay::hex,
};
use filter_common::Verdict;
use filter_testkit::corpus::{
    CorpusFiles, REJECT_CORPUS, corpus_dir, expected_replies, reject_corpus,
};

fn corpus_image() -> MapImage {
    policy_image("policy.yaml")
}

fn policy_image(name: &str) -> MapImage {
    policy::load(&corpus_dir().join(name))
        .expect("the corpus policy is valid")
        .policy
        .compile()
}

#[test]
fn every_corpus_frame_gets_its_hand_judged_verdict_from_the_kernel() {
    let frames = read_frames(corpus_dir().join("corpus.pcap")).unwrap();
    let expect = std::fs::read_to_string(corpus_dir().join("corpus.expect")).unwrap();
    let expected = parse_expect(&expect).unwrap();
    assert!(frames.len() >= 60, "the corpus has {} frames", frames.len());
    assert_eq!(frames.len(), expected.len());

    let dataplane = Dataplane::load_with(&corpus_image()).expect("load the XDP program (root?)");
    let mut failures = Vec::new();
    for (frame, want) in frames.iter().zip(&expected) {
        let got = dataplane.judge(frame).unwrap();
        let verdict = got.verdict.name();
        if Outcome::Judged(got.verdict, got.reason) != want.verdict || got.reply.is_some() {
            failures.push(format!(
                "frame {} (expect line {}): want {}, kernel {} {}",
                want.frame,
                want.line,
                want.verdict,
                verdict,
                got.reason.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The reject corpus, in order, through one freshly loaded program (its relay buckets
/// carry from frame to frame): every verdict and reason as hand-judged, and every reply
/// byte for byte the one etherparse builds; the model, fed the same frames, agrees too.
#[test]
fn every_reject_corpus_frame_gets_its_verdict_and_its_reply_from_the_kernel() {
    let files = REJECT_CORPUS;
    let frames = read_frames(corpus_dir().join(files.pcap)).unwrap();
    let expected =
        parse_expect(&std::fs::read_to_string(corpus_dir().join(files.expect)).unwrap()).unwrap();
    let corpus = reject_corpus();
    assert_eq!(frames.len(), expected.len());
    assert_eq!(frames.len(), corpus.len(), "regenerate the stored corpus");
    // The stored replies are the builder's (a lib test checks the file against it).
    let stored_replies = read_frames(corpus_dir().join(files.replies.unwrap())).unwrap();
    assert_eq!(stored_replies, expected_replies(&corpus));

    let image = policy_image(files.policy);
    let dataplane = Dataplane::load_with(&image).expect("load the XDP program (root?)");
    let mut model = Model::new();
    let mut failures = Vec::new();
    let mut replies = stored_replies.iter();
    let mut rejects = 0;
    for (frame, want) in frames.iter().zip(&expected) {
        let got = dataplane.judge(frame).unwrap();
        let by_model = model.judge_frame(&image, frame, 0);
        let verdict = got.verdict.name();
        if Outcome::Judged(got.verdict, got.reason) != want.verdict {
            failures.push(format!(
                "frame {} (expect line {}): want {}, kernel {} {}",
                want.frame,
                want.line,
                want.verdict,
                verdict,
                got.reason.name()
            ));
        }
        if (by_model.verdict, by_model.reason) != (got.verdict, got.reason) {
            failures.push(format!(
                "frame {}: kernel {verdict} {}, model {} {}",
                want.frame,
                got.reason.name(),
                by_model.verdict.name(),
                by_model.reason.name()
            ));
        }
        let want_reply = matches!(want.verdict, Outcome::Judged(Verdict::Reject, _))
            .then(|| replies.next().unwrap());
        if got.reply.as_ref() != want_reply || by_model.reply.as_ref() != want_reply {
            failures.push(format!(
                "frame {}: reply differs\n  frame   {}\n  kernel  {}\n  builder {}\n  model   {}",
                want.frame,
                hex(frame),
                got.reply.as_deref().map_or("none".into(), hex),
                want_reply.map_or("none".into(), |r| hex(r)),
                by_model.reply.as_deref().map_or("none".into(), hex),
            ));
        }
        rejects += usize::from(got.verdict == Verdict::Reject);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(rejects, stored_replies.len());
    assert!(rejects >= 25, "{rejects} rejects");
}

/// `replay` carries the kernel's replies: in JSON as hex, in the table as a note, and
/// written to a pcap that is byte for byte the stored reject-replies.pcap.
#[test]
fn replay_reports_the_replies_and_writes_them_to_a_pcap() {
    let files: CorpusFiles = REJECT_CORPUS;
    let frames = read_frames(corpus_dir().join(files.pcap)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replies.pcap");
    let out = replay_command_for(files.policy)
        .args(["--format", "json", "--replies"])
        .arg(&path)
        .arg(corpus_dir().join(files.pcap))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stored = std::fs::read(corpus_dir().join(files.replies.unwrap())).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), stored, "{}", path.display());
    let written = read_frames(&path).unwrap().len();
    assert!(
        stderr.contains(&format!("{written} replies written to")),
        "{stderr}"
    );

    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), frames.len());
    let mut replies = 0;
    for (line, frame) in lines.iter().zip(&frames) {
        match line.get("reply") {
            Some(reply) => {
                assert_eq!(line["verdict"], "reject");
                assert_eq!(
                    reply.as_str(),
                    model::reply_to(frame).map(|r| hex(&r)).as_deref()
                );
                replies += 1;
            }
            None => assert_ne!(line["verdict"], "reject", "{line}"),
        }
    }
    assert_eq!(replies, written);

    let table = replay_command_for(files.policy)
        .arg(corpus_dir().join(files.pcap))
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("(answered: tcp rst+ack 203.0.113.9 -> 100.64.1.10 port 49152, 54 bytes)"),
        "{table}"
    );
    assert!(table.contains("rate-limited"), "{table}");
}

/// The replay entry point reports what the production entry decides, frame for frame, on
/// the differential test's random mix, and moves the same counters and offender records.
#[test]
fn the_replay_entry_reports_what_the_production_entry_decides() {
    let image = policy_image(REJECT_CORPUS.policy);
    let production = Dataplane::load_with(&image).expect("load the XDP program (root?)");
    let replay = Dataplane::load_with(&image).unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut output = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..5000 {
        let frame = filter_testkit::random::random_frame(&mut rng);
        let want = production.judge(&frame).unwrap();
        let got = replay.judge_replay(&frame, &mut output).unwrap();
        assert_eq!(
            (got.verdict, got.reason, got.family, got.reply),
            (
                want.verdict,
                want.reason,
                want.family,
                want.reply.as_deref()
            ),
            "frame {i}: {}",
            hex(&frame)
        );
        let by_model = Model::new().judge_frame(&image, &frame, 0);
        if got.reason != filter_common::Reason::RateLimited {
            assert_eq!(got.group, by_model.group, "frame {i}: {}", hex(&frame));
        }
        seen.insert((got.verdict, got.reason));
    }
    assert!(seen.len() >= 8, "too few kinds of verdict: {seen:?}");
    assert_eq!(
        production.reason_counters(0).unwrap(),
        replay.reason_counters(0).unwrap()
    );
    let offenders = |dataplane: &Dataplane| {
        let mut records: Vec<_> = dataplane
            .offenders()
            .unwrap()
            .into_iter()
            .map(|(key, record)| (key.address, record.attempts, record.group))
            .collect();
        records.sort();
        records
    };
    assert_eq!(offenders(&production), offenders(&replay));
    assert!(!offenders(&replay).is_empty());
}

fn replay_command() -> Command {
    replay_command_for("policy.yaml")
}

fn replay_command_for(policy: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_filter-agent"));
    cmd.arg("replay")
        .arg("--policy")
        .arg(corpus_dir().join(policy));
    cmd
}

#[test]
fn replay_expect_passes_on_the_reject_corpus() {
    let out = replay_command_for(REJECT_CORPUS.policy)
        .arg("--expect")
        .arg(corpus_dir().join(REJECT_CORPUS.expect))
        .arg(corpus_dir().join(REJECT_CORPUS.pcap))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let all = format!("all {} frames match", reject_corpus().len());
    assert!(stderr.contains(&all), "{stderr}");
}

#[test]
fn replay_prints_one_json_object_per_frame_in_capture_order() {
    let out = replay_command()
        .args(["--format", "json"])
        .arg(corpus_dir().join("corpus.pcap"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected =
        parse_expect(&std::fs::read_to_string(corpus_dir().join("corpus.expect")).unwrap())
            .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), expected.len());
    for (line, want) in lines.iter().zip(&expected) {
        assert_eq!(line["frame"], want.frame);
        let got = format!(
            "{} {}",
            line["verdict"].as_str().unwrap(),
            line["reason"].as_str().unwrap()
        );
        assert_eq!(got, want.verdict.to_string(), "frame {}", want.frame);
        assert_eq!(line["engine"], "kernel");
    }
}

#[test]
fn replay_expect_passes_on_the_corpus_and_lists_each_mismatch() {
    let pcap = corpus_dir().join("corpus.pcap");
    let good = replay_command()
        .arg("--expect")
        .arg(corpus_dir().join("corpus.expect"))
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    // Flip two expectations: both must be reported, and the exit status must be 1.
    let text = std::fs::read_to_string(corpus_dir().join("corpus.expect")).unwrap();
    let flipped = text.replacen("1 drop blocked", "1 pass relay", 1).replacen(
        "\n2 drop blocked",
        "\n2 pass exempt",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let bad_expect = dir.path().join("flipped.expect");
    std::fs::write(&bad_expect, flipped).unwrap();
    let bad = replay_command()
        .arg("--expect")
        .arg(&bad_expect)
        .arg(&pcap)
        .output()
        .unwrap();
    drop(dir);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("frame 1 ") && stderr.contains("expected pass relay"),
        "{stderr}"
    );
    assert!(
        stderr.contains("frame 2 ") && stderr.contains("expected pass exempt"),
        "{stderr}"
    );
    assert!(stderr.contains("2 mismatches"), "{stderr}");
}

#[test]
fn replay_refuses_an_invalid_policy_with_its_location_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.yaml");
    std::fs::write(
        &policy,
        "version: 1\ngroups:\n  - name: r\n    smtp: block\n    prefixes: [10.0.0.1/8]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_filter-agent"))
        .arg("replay")
        .arg("--policy")
        .arg(&policy)
        .arg(corpus_dir().join("corpus.pcap"))
        .output()
        .unwrap();
    drop(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:5:"), "{stderr}");
    assert!(stderr.contains("10.0.0.0/8"), "{stderr}");
}

/// The corpus policy with one prefix moved: residential's IPv6 /36 now belongs to the
/// leased-line group, which may send.
fn moved_policy(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(corpus_dir().join("policy.yaml")).unwrap();
    let moved = text
        .replace(
            "prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]",
            "prefixes: [100.64.0.0/10]",
        )
        .replace(
            "prefixes: [198.51.100.128/25, \"2001:db8:3000::/48\"]",
            "prefixes: [198.51.100.128/25, \"2001:db8:3000::/48\", \"2001:db8:1000::/36\"]",
        );
    assert_ne!(
        moved, text,
        "the corpus policy's prefixes changed: update this test"
    );
    let path = dir.join("moved.yaml");
    std::fs::write(&path, moved).unwrap();
    path
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

/// `--baseline`: exactly the frames from the moved prefix change, each reported with
/// both decisions, grouped under that prefix; `--fail-on-change` turns that into exit 1.
#[test]
fn replay_baseline_reports_exactly_the_frames_of_the_moved_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let moved = moved_policy(dir.path());
    let pcap = corpus_dir().join("corpus.pcap");
    // Under the baseline alone: the frames the residential IPv6 prefix decides.
    let before = replay_command()
        .args(["--format", "json"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(before.status.success());
    let expected: Vec<u64> = json_lines(&before.stdout)
        .iter()
        .filter(|l| l["group"] == "residential" && l["family"] == "ipv6")
        .map(|l| l["frame"].as_u64().unwrap())
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");

    let compare = |policy: &std::path::Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_filter-agent"))
            .arg("replay")
            .arg("--policy")
            .arg(policy)
            .arg("--baseline")
            .arg(corpus_dir().join("policy.yaml"))
            .args(extra)
            .arg(&pcap)
            .output()
            .unwrap()
    };
    let out = compare(&moved, &["--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut lines = json_lines(&out.stdout);
    let summary = lines.pop().unwrap();
    let changed: Vec<u64> = lines.iter().map(|l| l["frame"].as_u64().unwrap()).collect();
    assert_eq!(changed, expected);
    for line in &lines {
        assert_eq!(line["baseline"]["group"], "residential", "{line}");
        assert_eq!(line["policy"]["group"], "leased-line", "{line}");
        assert_ne!(
            (&line["baseline"]["verdict"], &line["baseline"]["reason"]),
            (&line["policy"]["verdict"], &line["policy"]["reason"]),
            "{line}"
        );
        assert!(line["index"].is_u64(), "{line}");
        assert_eq!(line["engine"], "kernel");
    }
    let summary = &summary["summary"];
    assert_eq!(summary["changed"], expected.len(), "{summary}");
    assert_eq!(summary["frames"], 169, "{summary}");
    let groups = summary["groups"].as_array().unwrap();
    assert!(!groups.is_empty());
    assert!(
        groups.iter().all(|g| g["prefix"] == "2001:db8:1000::/36"),
        "{summary}"
    );
    let total: u64 = groups.iter().map(|g| g["frames"].as_u64().unwrap()).sum();
    assert_eq!(total, expected.len() as u64);

    let table = compare(&moved, &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with(&format!("{} of 169 frames change", expected.len())),
        "{text}"
    );
    assert!(text.contains("2001:db8:1000::/36"), "{text}");
    assert!(
        text.contains("baseline: drop blocked (group residential)"),
        "{text}"
    );
    assert!(
        text.contains("policy:   pass exempt (group leased-line)"),
        "{text}"
    );

    let failing = compare(&moved, &["--fail-on-change"]);
    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert_eq!(failing.status.code(), Some(1), "{stderr}");
    let listed = stderr
        .lines()
        .filter(|l| l.starts_with("change: frame "))
        .count();
    assert_eq!(listed, expected.len(), "{stderr}");
    let unchanged = compare(
        &corpus_dir().join("policy.yaml"),
        &["--fail-on-change", "--format", "json"],
    );
    assert_eq!(unchanged.status.code(), Some(0));
    let lines = json_lines(&unchanged.stdout);
    assert_eq!(lines.len(), 1, "only the summary: {lines:?}");
    assert_eq!(lines[0]["summary"]["changed"], 0);
}

/// `--format junit`: one test case per capture, a failure per mismatch, valid XML.
#[test]
fn replay_junit_has_a_case_per_capture_and_a_failure_per_mismatch() {
    let text = std::fs::read_to_string(corpus_dir().join("corpus.expect")).unwrap();
    let flipped = text.replacen("1 drop blocked", "1 pass relay", 1).replacen(
        "\n2 drop blocked",
        "\n2 pass exempt",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let bad_expect = dir.path().join("flipped.expect");
    std::fs::write(&bad_expect, flipped).unwrap();
    let junit = |expect: &std::path::Path| {
        let out = replay_command()
            .args(["--format", "junit", "--expect"])
            .arg(expect)
            .arg(corpus_dir().join("corpus.pcap"))
            .output()
            .unwrap();
        let xml = String::from_utf8(out.stdout).unwrap();
        // Well-formed, and what it holds.
        let mut reader = quick_xml::Reader::from_str(&xml);
        let (mut cases, mut failures) = (Vec::new(), Vec::new());
        loop {
            match reader.read_event().expect("well-formed XML") {
                quick_xml::events::Event::Eof => break,
                quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                    let attribute = |name: &[u8]| {
                        e.try_get_attribute(name)
                            .unwrap()
                            .map(|a| a.unescape_value().unwrap().into_owned())
                    };
                    match e.name().as_ref() {
                        b"testcase" => cases.push(attribute(b"name").unwrap()),
                        b"failure" => failures.push(attribute(b"message").unwrap()),
                        b"property" => assert_eq!(attribute(b"value").unwrap(), "kernel"),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        (out.status.code(), cases, failures)
    };
    let (status, cases, failures) = junit(&bad_expect);
    assert_eq!(status, Some(1));
    assert_eq!(cases.len(), 1);
    assert!(cases[0].ends_with("corpus.pcap"), "{cases:?}");
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures[0].contains("frame 1 ") && failures[0].contains("expected pass relay"));
    assert!(failures[1].contains("frame 2 ") && failures[1].contains("expected pass exempt"));

    let (status, cases, failures) = junit(&corpus_dir().join("corpus.expect"));
    assert_eq!(status, Some(0));
    assert_eq!(cases.len(), 1);
    assert!(failures.is_empty(), "{failures:?}");
}

/// `--engine model` judges without BPF (here: as an unprivileged user, for whom the
/// kernel engine cannot run, exit 2) and says so on every output.
#[test]
fn replay_engine_model_runs_without_privileges_and_says_so() {
    // A checkout may sit below a directory nobody cannot search (a CI clone in a
    // mktemp dir): give nobody its own readable copies.
    let readable = tempfile::tempdir().unwrap();
    std::fs::set_permissions(readable.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["policy.yaml", "corpus.expect", "corpus.pcap"] {
        std::fs::copy(corpus_dir().join(name), readable.path().join(name)).unwrap();
    }
    let corpus = readable.path();
    let as_nobody = |extra: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_filter-agent"))
            .arg("replay")
            .arg("--policy")
            .arg(corpus.join("policy.yaml"))
            .args(extra)
            .arg("--expect")
            .arg(corpus.join("corpus.expect"))
            .arg(corpus.join("corpus.pcap"))
            .output()
            .expect("setpriv (util-linux) runs the agent as nobody")
    };
    let kernel = as_nobody(&[]);
    let stderr = String::from_utf8_lossy(&kernel.stderr);
    assert_eq!(kernel.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");

    let json = as_nobody(&["--engine", "model", "--format", "json"]);
    let stderr = String::from_utf8_lossy(&json.stderr);
    assert_eq!(json.status.code(), Some(0), "{stderr}");
    let lines = json_lines(&json.stdout);
    assert_eq!(lines.len(), 169);
    assert!(lines.iter().all(|l| l["engine"] == "model"), "{lines:?}");
    assert!(stderr.contains("judged by the reference model"), "{stderr}");
    assert!(stderr.contains("all 169 frames match"), "{stderr}");

    let table = as_nobody(&["--engine", "model"]);
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("169 frames, judged by the reference model (--engine model)"),
        "{text}"
    );
    let junit = as_nobody(&["--engine", "model", "--format", "junit"]);
    let xml = String::from_utf8_lossy(&junit.stdout);
    assert!(
        xml.contains(r#"<property name="engine" value="model"/>"#),
        "{xml}"
    );
}
