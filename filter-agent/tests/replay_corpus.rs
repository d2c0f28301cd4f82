//! The hand-judged corpora through the real XDP program (BPF_PROG_TEST_RUN, as root), and
//! the `replay` command's JSON and `--expect` contract. The reject corpus also holds the
//! kernel's reply frames to the ones built independently with etherparse.

use std::process::Command;

use filter_agent::{
    capture::{parse_expect, read_frames},
    dataplane::Dataplane,
    image::MapImage,
    model::{self, Model},
    policy,
    replay::{self, hex},
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
        if got.verdict != want.verdict || got.reason != want.reason || got.reply.is_some() {
            failures.push(format!(
                "frame {} (expect line {}): want {} {}, kernel {} {}",
                want.frame,
                want.line,
                want.verdict,
                want.reason,
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
        if got.verdict != want.verdict || got.reason != want.reason {
            failures.push(format!(
                "frame {} (expect line {}): want {} {}, kernel {} {}",
                want.frame,
                want.line,
                want.verdict,
                want.reason,
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
        let want_reply = (want.verdict == Verdict::Reject).then(|| replies.next().unwrap());
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
    let image = policy_image(files.policy);
    let verdicts = replay::replay(&image, &[corpus_dir().join(files.pcap)]).unwrap();
    let expected =
        parse_expect(&std::fs::read_to_string(corpus_dir().join(files.expect)).unwrap()).unwrap();
    assert!(replay::mismatches(&verdicts, &expected, &corpus_dir().join(files.expect)).is_empty());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replies.pcap");
    let written = replay::write_replies(&path, &verdicts).unwrap();
    let stored = std::fs::read(corpus_dir().join(files.replies.unwrap())).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), stored, "{}", path.display());
    assert_eq!(written, read_frames(&path).unwrap().len());
    drop(dir);

    let mut json = Vec::new();
    replay::print_json(&mut json, &verdicts).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (line, v) in lines.iter().zip(&verdicts) {
        match &v.reply {
            Some(reply) => {
                assert_eq!(line["verdict"], "reject");
                assert_eq!(line["reply"], hex(reply));
                let frame =
                    read_frames(corpus_dir().join(files.pcap)).unwrap()[v.frame - 1].clone();
                assert_eq!(Some(reply.clone()), model::reply_to(&frame));
            }
            None => assert!(line.get("reply").is_none(), "{line}"),
        }
    }
    let mut table = Vec::new();
    replay::print_table(&mut table, &verdicts).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("(answered: tcp rst+ack 203.0.113.9 -> 100.64.1.10 port 49152, 54 bytes)"),
        "{table}"
    );
    assert!(table.contains("rate-limited"), "{table}");
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
        assert_eq!(line["verdict"], want.verdict.name(), "frame {}", want.frame);
        assert_eq!(line["reason"], want.reason.name(), "frame {}", want.frame);
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
fn replay_refuses_an_invalid_policy_with_its_location() {
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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:5:"), "{stderr}");
    assert!(stderr.contains("10.0.0.0/8"), "{stderr}");
}
