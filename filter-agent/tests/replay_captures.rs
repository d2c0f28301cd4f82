//! `filter-agent replay` on every kind of capture a user hands it (classic pcap in both byte
//! orders and resolutions, snap-length truncations, pcapng with several interfaces,
//! options and blocks to skip, Linux cooked and raw-IP link types, unsupported link types,
//! a file cut short), each judged by the real kernel program (as root): the verdicts,
//! and the fields that say how the record was read.

use std::{net::IpAddr, path::PathBuf, process::Command};

use filter_agent::model;
use filter_testkit::{
    capture_files::{
        OPT_COMMENT, OPT_CUSTOM_UNKNOWN, Pcap, PcapNg, linktype, sll_header, sll2_header,
    },
    corpus::corpus_dir,
    frames::Frame,
};
use serde_json::Value;

const RESIDENTIAL_V4: &str = "100.64.1.10";
const RESIDENTIAL_V6: &str = "2001:db8:1000::10";
/// In the leased-line group, which may send.
const LEASED_LINE_V4: &str = "198.51.100.130";
const REMOTE_V4: &str = "203.0.113.9";
const REMOTE_V6: &str = "2001:db8:ffff::9";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn syn(src: &str, dst: &str) -> Vec<u8> {
    Frame::tcp(ip(src), ip(dst), 25).syn().build()
}

/// The packet behind the Ethernet header.
fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

struct Run {
    status: Option<i32>,
    lines: Vec<Value>,
    stderr: String,
}

/// Writes each capture to a scratch directory and replays them all against the corpus
/// policy with `--format json` and `extra` arguments.
fn replay(captures: &[Vec<u8>], extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = captures
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = dir.path().join(format!("capture-{i}"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_filter-agent"))
        .arg("replay")
        .arg("--policy")
        .arg(corpus_dir().join("policy.yaml"))
        .args(["--format", "json"])
        .args(extra)
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    Run {
        status: out.status.code(),
        lines,
        stderr,
    }
}

/// Replays, requires success, and returns "verdict reason" of every frame.
fn verdicts(captures: &[Vec<u8>]) -> (Vec<String>, Run) {
    let run = replay(captures, &[]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let verdicts = run
        .lines
        .iter()
        .map(|line| {
            assert_eq!(line["engine"], "kernel", "{line}");
            match &line["reason"] {
                Value::String(reason) => format!("{} {reason}", line["verdict"].as_str().unwrap()),
                _ => line["verdict"].as_str().unwrap().to_string(),
            }
        })
        .collect();
    (verdicts, run)
}

#[test]
fn a_capture_cut_by_a_snap_length_is_judged_on_the_bytes_present_and_marked_truncated() {
    let long_syn = Frame::tcp(ip(RESIDENTIAL_V4), ip(REMOTE_V4), 25)
        .syn()
        .tcp_payload(&[0xab; 100])
        .build();
    let leased = Frame::tcp(ip(LEASED_LINE_V4), ip(REMOTE_V4), 25)
        .syn()
        .tcp_payload(&[0xcd; 300])
        .build();
    let orig = long_syn.len() as u32;
    // tcpdump -s 64: the whole TCP header is there, the payload is not.
    let pcap = Pcap::new(linktype::ETHERNET)
        .snaplen(64)
        .record(&long_syn[..64], orig)
        .record(&leased[..64], leased.len() as u32)
        // -s 40: cut inside the TCP header, after the ports.
        .record(&long_syn[..40], orig)
        .frame(&syn(RESIDENTIAL_V4, REMOTE_V4));
    let (verdicts, run) = verdicts(&[pcap.bytes()]);
    let image = filter_agent::policy::load(&corpus_dir().join("policy.yaml"))
        .unwrap()
        .policy
        .compile();
    let cut = model::judge_frame(&image, &long_syn[..40]);
    let cut_verdict = format!("{} {}", cut.verdict, cut.reason);
    assert_eq!(
        verdicts,
        [
            "drop blocked",
            "pass exempt",
            cut_verdict.as_str(),
            "drop blocked"
        ],
        "{}",
        run.stderr
    );
    for (line, (len, orig_len)) in run.lines.iter().zip([
        (64, orig as usize),
        (64, leased.len()),
        (40, orig as usize),
        (54, 54),
    ]) {
        assert_eq!(line["len"], len, "{line}");
        assert_eq!(line["orig_len"], orig_len, "{line}");
        assert_eq!(line["truncated"], len != orig_len, "{line}");
        assert_eq!(line["linktype"], "ethernet", "{line}");
    }
    assert!(
        run.stderr
            .contains("3  truncated by the capture's snap length"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_record_longer_than_the_snap_length_is_read_as_libpcap_does() {
    let v6 = syn(RESIDENTIAL_V6, REMOTE_V6);
    let pcap = Pcap::new(linktype::ETHERNET)
        .snaplen(60)
        .frame(&v6)
        .frame(&syn(RESIDENTIAL_V4, REMOTE_V4));
    let (verdicts, run) = verdicts(&[pcap.bytes()]);
    assert_eq!(verdicts, ["drop blocked", "drop blocked"]);
    assert_eq!(run.lines[0]["len"], v6.len());
    assert_eq!(run.lines[0]["truncated"], false);
    let note = run.lines[0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("snap length"), "{}", run.lines[0]);
    assert!(run.lines[1].get("note").is_none(), "{}", run.lines[1]);
}

#[test]
fn big_endian_and_nanosecond_pcaps_are_read() {
    let frames = [
        syn(RESIDENTIAL_V4, REMOTE_V4),
        syn(LEASED_LINE_V4, REMOTE_V4),
        syn(RESIDENTIAL_V6, REMOTE_V6),
    ];
    let kinds = [
        Pcap::new(linktype::ETHERNET).big_endian(),
        Pcap::new(linktype::ETHERNET).nanoseconds(),
        Pcap::new(linktype::ETHERNET).big_endian().nanoseconds(),
    ];
    let files: Vec<Vec<u8>> = kinds
        .into_iter()
        .map(|pcap| {
            frames
                .iter()
                .fold(pcap, |pcap, frame| pcap.frame(frame))
                .bytes()
        })
        .collect();
    let (verdicts, run) = verdicts(&files);
    assert_eq!(
        verdicts,
        ["drop blocked", "pass exempt", "drop blocked"].repeat(3)
    );
    let indexes: Vec<_> = run.lines.iter().map(|l| l["index"].clone()).collect();
    assert_eq!(indexes, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
}

#[test]
fn pcapng_with_two_interfaces_options_unknown_blocks_and_two_sections_is_read() {
    let v4 = syn(RESIDENTIAL_V4, REMOTE_V4);
    let v6 = syn(RESIDENTIAL_V6, REMOTE_V6);
    let leased = syn(LEASED_LINE_V4, REMOTE_V4);
    let mut file = PcapNg::new(
        false,
        &[
            (OPT_COMMENT, b"written by a test"),
            (OPT_CUSTOM_UNKNOWN, b"\x01\x02\x03"),
            (4, b"some shb_userappl"),
        ],
    )
    .interface(
        linktype::ETHERNET as u16,
        262_144,
        &[(2, b"eth0"), (9, &[9]), (OPT_CUSTOM_UNKNOWN, b"x")],
    )
    .interface(linktype::RAW as u16, 65535, &[(2, b"tun0")])
    .packet(0, &v4, v4.len() as u32, &[(OPT_COMMENT, b"first")])
    // A block type no reader knows, and a custom block (with a private enterprise number).
    .block(0x0bad_0001, b"opaque to every reader")
    .block(0x0000_0bad, &[0, 0, 0x7e, 0x57, 1, 2, 3, 4])
    .packet(
        1,
        ip_packet(&v6),
        (v6.len() - 14) as u32,
        &[(OPT_CUSTOM_UNKNOWN, b"??")],
    )
    .simple_packet(&leased)
    // Interface statistics: skipped.
    .block(5, &[0; 20]);
    // A second section: interface 0 is a new interface.
    file.section(&[]);
    let file = file.interface(linktype::IPV4 as u16, 0, &[]).packet(
        0,
        ip_packet(&v4),
        (v4.len() - 14) as u32,
        &[],
    );
    let big = PcapNg::new(true, &[(OPT_COMMENT, b"big-endian")])
        .interface(linktype::ETHERNET as u16, 65535, &[])
        .packet(0, &v6, v6.len() as u32, &[]);
    let (verdicts, run) = verdicts(&[file.bytes(), big.bytes()]);
    assert_eq!(
        verdicts,
        [
            "drop blocked",
            "drop blocked",
            "pass exempt",
            "drop blocked",
            "drop blocked"
        ],
        "{}",
        run.stderr
    );
    let linktypes: Vec<_> = run.lines.iter().map(|l| l["linktype"].clone()).collect();
    assert_eq!(
        linktypes,
        ["ethernet", "raw", "ethernet", "ipv4", "ethernet"]
    );
    let families: Vec<_> = run.lines.iter().map(|l| l["family"].clone()).collect();
    assert_eq!(families, ["ipv4", "ipv6", "ipv4", "ipv4", "ipv6"]);
}

#[test]
fn linux_cooked_and_raw_ip_records_get_an_ethernet_header_and_are_judged() {
    let v4 = syn(RESIDENTIAL_V4, REMOTE_V4);
    let v6 = syn(RESIDENTIAL_V6, REMOTE_V6);
    let leased = syn(LEASED_LINE_V4, REMOTE_V4);
    let cooked = |header: Vec<u8>, frame: &[u8]| [header, ip_packet(frame).to_vec()].concat();
    let sll = Pcap::new(linktype::LINUX_SLL)
        .frame(&cooked(sll_header(0x0800), &v4))
        .frame(&cooked(sll_header(0x86dd), &v6))
        .frame(&cooked(sll_header(0x0800), &leased))
        // ARP: not IP.
        .frame(&[sll_header(0x0806), vec![0; 28]].concat());
    let sll2 = Pcap::new(linktype::LINUX_SLL2)
        .frame(&cooked(sll2_header(0x86dd), &v6))
        .frame(&cooked(sll2_header(0x0800), &leased));
    let raw = Pcap::new(linktype::RAW)
        .frame(ip_packet(&v4))
        .frame(ip_packet(&v6));
    let raw_v4 = Pcap::new(linktype::IPV4).frame(ip_packet(&v4));
    let raw_v6 = Pcap::new(linktype::IPV6).frame(ip_packet(&v6));
    let (verdicts, run) = verdicts(&[
        sll.bytes(),
        sll2.bytes(),
        raw.bytes(),
        raw_v4.bytes(),
        raw_v6.bytes(),
    ]);
    assert_eq!(
        verdicts,
        [
            "drop blocked",
            "drop blocked",
            "pass exempt",
            "pass not-ip",
            "drop blocked",
            "pass exempt",
            "drop blocked",
            "drop blocked",
            "drop blocked",
            "drop blocked",
        ],
        "{}",
        run.stderr
    );
    let linktypes: Vec<_> = run.lines.iter().map(|l| l["linktype"].clone()).collect();
    assert_eq!(
        linktypes,
        [
            "linux_sll",
            "linux_sll",
            "linux_sll",
            "linux_sll",
            "linux_sll2",
            "linux_sll2",
            "raw",
            "raw",
            "ipv4",
            "ipv6"
        ]
    );
    // The frame given to the program: the Ethernet header replaces the cooked one.
    assert_eq!(run.lines[0]["len"], v4.len());
    assert_eq!(run.lines[0]["orig_len"], v4.len());
    assert_eq!(run.lines[0]["group"], "residential");
}

#[test]
fn records_of_other_link_types_are_skipped_counted_and_only_fail_when_expected_otherwise() {
    let null = Pcap::new(linktype::NULL)
        .frame(&[2, 0, 0, 0, 0x45, 0, 0, 20])
        .frame(&[2, 0, 0, 0, 0x45, 0, 0, 20]);
    let ethernet = Pcap::new(linktype::ETHERNET).frame(&syn(RESIDENTIAL_V4, REMOTE_V4));
    let captures = [null.bytes(), ethernet.bytes()];
    let (verdicts, run) = verdicts(&captures);
    assert_eq!(verdicts, ["skipped", "skipped", "drop blocked"]);
    assert_eq!(run.lines[0]["linktype"], "null");
    assert_eq!(run.lines[0]["reason"], Value::Null);
    assert_eq!(run.lines[0]["len"], 8);
    assert_eq!(run.lines[0]["group"], Value::Null);
    assert!(
        run.stderr
            .contains("2  skipped: link type null (0) is not judged"),
        "{}",
        run.stderr
    );

    // An expect file that names them skipped passes; one that expects a verdict fails.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.expect");
    std::fs::write(&good, "1 skipped\n2 skipped\n3 drop blocked\n").unwrap();
    let run = replay(&captures, &["--expect", good.to_str().unwrap()]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let bad = dir.path().join("bad.expect");
    std::fs::write(&bad, "1 pass not-ip\n2 skipped\n3 drop blocked\n").unwrap();
    let run = replay(&captures, &["--expect", bad.to_str().unwrap()]);
    assert_eq!(run.status, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("frame 1 (capture-0:1): expected pass not-ip, it was skipped"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_record_running_past_the_end_of_the_file_ends_it_with_a_note() {
    let mut bytes = Pcap::new(linktype::ETHERNET)
        .frame(&syn(RESIDENTIAL_V4, REMOTE_V4))
        .frame(&syn(LEASED_LINE_V4, REMOTE_V4))
        .bytes();
    bytes.truncate(bytes.len() - 20);
    let (verdicts, run) = verdicts(&[bytes]);
    assert_eq!(verdicts, ["drop blocked"]);
    assert!(
        run.stderr
            .contains("ended after 1 records: the file ends inside record 2"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_file_that_is_no_capture_cannot_be_replayed_exit_2() {
    let run = replay(&[b"N VERDICT REASON\n".to_vec()], &[]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("not a pcap or pcapng"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_record_bigger_than_the_read_buffer_is_read_and_an_absurd_one_ends_the_file() {
    // 2 MiB (a SYN and a trailer): more than the reader's first buffer; judged on the
    // first 3520 bytes.
    let mut jumbo = syn(RESIDENTIAL_V4, REMOTE_V4);
    jumbo.resize(2 << 20, 0);
    let mut bytes = Pcap::new(linktype::ETHERNET)
        .frame(&jumbo)
        .frame(&syn(LEASED_LINE_V4, REMOTE_V4))
        .bytes();
    // A record header claiming 4 GiB, as damage leaves one.
    bytes.extend([0; 8]);
    bytes.extend(0xffff_fff0u32.to_le_bytes());
    bytes.extend(0xffff_fff0u32.to_le_bytes());
    bytes.extend([0; 64]);
    let (verdicts, run) = verdicts(&[bytes]);
    assert_eq!(verdicts, ["drop blocked", "pass exempt"]);
    assert_eq!(run.lines[0]["len"], jumbo.len());
    let note = run.lines[0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("judged on its first 3520 bytes"), "{note}");
    assert!(
        run.stderr
            .contains("ended after 2 records: record 3 claims more than 64 MiB"),
        "{}",
        run.stderr
    );
}
