//! The hand-judged corpus through the real XDP program (BPF_PROG_TEST_RUN, as root), and
//! the `replay` command's JSON and `--expect` contract.

use std::process::Command;

use filter_agent::{
    capture::{parse_expect, read_frames},
    dataplane::Dataplane,
    fixtures::corpus_dir,
    policy,
};

fn corpus_image() -> filter_agent::image::MapImage {
    policy::load(&corpus_dir().join("policy.yaml"))
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
        if verdict != want.verdict || got.reason.name() != want.reason {
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

fn replay_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_filter-agent"));
    cmd.arg("replay")
        .arg("--policy")
        .arg(corpus_dir().join("policy.yaml"));
    cmd
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
        assert_eq!(
            line["verdict"],
            want.verdict.as_str(),
            "frame {}",
            want.frame
        );
        assert_eq!(line["reason"], want.reason.as_str(), "frame {}", want.frame);
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
    let dir = std::env::temp_dir().join(format!("filter-agent-expect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_expect = dir.join("flipped.expect");
    std::fs::write(&bad_expect, flipped).unwrap();
    let bad = replay_command()
        .arg("--expect")
        .arg(&bad_expect)
        .arg(&pcap)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
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
    let dir = std::env::temp_dir().join(format!("filter-agent-badpolicy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("bad.yaml");
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
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:5:"), "{stderr}");
    assert!(stderr.contains("10.0.0.0/8"), "{stderr}");
}
