//! The agent end to end: real kernel, real TCP, in network namespaces each test creates
//! and removes (see filter_testkit::lab). Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use filter_agent::{
    dataplane::{Capacity, Dataplane},
    image::MapImage,
};

use filter_testkit::{
    agent::{AgentProcess, Scratch},
    lab::{
        self, BUSINESS_BROADBAND, BUSINESS_ETHERNET, LEASED_LINE, Lab, Ns, Outcome, RELAY_V4,
        RELAY_V6, REMOTE_V4, REMOTE_V6, RESIDENTIAL, UNMANAGED, at,
    },
};

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");

/// Long enough for a connection through the lab (milliseconds), short enough that a
/// dropped SYN does not slow the tests down.
const CONNECT: Duration = Duration::from_millis(700);
/// How long one reload may take to be logged: it detects a reload that never comes, it
/// does not time one (normally about the 300 ms settle; on a loaded 2-core machine one
/// has taken over 10 s).
const RELOAD: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);

/// Sets its flag when dropped, also while unwinding from a failed assertion.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Listeners on the remote MTA (25, 465, 587) and the relay (25), both families.
fn listeners(lab: &Lab) -> Vec<lab::Listener> {
    [
        (REMOTE_V4, 25),
        (REMOTE_V4, 465),
        (REMOTE_V4, 587),
        (RELAY_V4, 25),
        (REMOTE_V6, 25),
        (REMOTE_V6, 465),
        (REMOTE_V6, 587),
        (RELAY_V6, 25),
    ]
    .into_iter()
    .map(|(addr, port)| lab.listen(at(addr, port)).unwrap())
    .collect()
}

fn start(lab: &Lab) -> (Scratch, AgentProcess) {
    let scratch = Scratch::new(lab, BINARY);
    scratch.write_policy(&lab.policy_yaml());
    let agent = scratch.start_agent(lab, &[]);
    (scratch, agent)
}

fn expect(lab: &Lab, from: IpAddr, to: SocketAddr, want: Outcome) {
    let got = lab.connect(from, to, CONNECT);
    assert_eq!(got, want, "{from} -> {to}");
}

#[test]
fn blocked_customers_reach_only_the_relay_and_submission_ports() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    let (_scratch, agent) = start(&lab);
    for customer in [RESIDENTIAL, BUSINESS_BROADBAND] {
        for (src, remote, relay) in [
            (customer.v4, REMOTE_V4, RELAY_V4),
            (customer.v6, REMOTE_V6, RELAY_V6),
        ] {
            expect(&lab, src, at(remote, 25), Outcome::TimedOut);
            expect(&lab, src, at(relay, 25), Outcome::Connected);
            expect(&lab, src, at(remote, 465), Outcome::Connected);
            expect(&lab, src, at(remote, 587), Outcome::Connected);
        }
    }
    for customer in [LEASED_LINE, UNMANAGED, BUSINESS_ETHERNET] {
        expect(&lab, customer.v4, at(REMOTE_V4, 25), Outcome::Connected);
        expect(&lab, customer.v6, at(REMOTE_V6, 25), Outcome::Connected);
    }
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}

/// The lab policy plus two prefixes that no test source lies in, placed in `block` or
/// `allow` groups depending on `round`.
fn shuffled_policy(lab: &Lab, round: usize) -> String {
    let (a, b) = if round.is_multiple_of(2) {
        ("residential", "leased-line")
    } else {
        ("leased-line", "residential")
    };
    let mut text = lab.policy_yaml();
    for (group, prefix) in [(a, "100.100.0.0/16"), (b, "\"2001:db8:1fff::/48\"")] {
        let anchor = format!("  - name: {group}\n");
        let at = text.find(&anchor).expect("group in lab policy");
        let list = "    prefixes:\n";
        let prefixes = text[at..].find(list).expect("block-style prefix list") + at + list.len();
        text.insert_str(prefixes, &format!("      - {prefix}\n"));
    }
    text
}

#[test]
fn a_hundred_reloads_under_traffic_let_nothing_through_and_break_nothing() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    let (scratch, agent) = start(&lab);
    let stop = AtomicBool::new(false);
    let leaked = Arc::new(AtomicUsize::new(0));
    let blocked_attempts = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let allowed_attempts = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        // Stops the senders even when an assertion below panics, so the scope can end.
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let outcome = lab.connect(
                    RESIDENTIAL.v4,
                    at(REMOTE_V4, 25),
                    Duration::from_millis(150),
                );
                if outcome != Outcome::TimedOut {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
                blocked_attempts.fetch_add(1, Ordering::Relaxed);
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if lab.connect(LEASED_LINE.v4, at(REMOTE_V4, 25), Duration::from_secs(2))
                    != Outcome::Connected
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                allowed_attempts.fetch_add(1, Ordering::Relaxed);
            }
        });
        for round in 1..=100 {
            scratch.write_policy(&shuffled_policy(&lab, round));
            agent.wait_for_nth("generation=", round + 1, RELOAD);
        }
    });
    let (blocked, allowed) = (
        blocked_attempts.load(Ordering::Relaxed),
        allowed_attempts.load(Ordering::Relaxed),
    );
    println!(
        "reload under traffic: {blocked} blocked attempts, {allowed} allowed attempts, 100 reloads"
    );
    assert!(
        blocked > 20 && allowed > 100,
        "too little traffic: {blocked} blocked, {allowed} allowed"
    );
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "blocked connections got through"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "allowed connections failed"
    );
    assert_eq!(
        agent.count("reload refused"),
        0,
        "{}",
        agent.log().join("\n")
    );
    // Each reload moved two prefixes: one changed value in each family's trie.
    let last = agent
        .log()
        .into_iter()
        .rev()
        .find(|l| l.contains("generation=101"))
        .unwrap();
    assert!(last.contains("added=0 removed=0 changed=2"), "{last}");
}

#[test]
fn kill_9_keeps_enforcing_and_a_restarted_agent_adopts_without_a_gap() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    let (scratch, agent) = start(&lab);
    let interface = lab.router_customer_if().to_string();
    let first = lab.attached_program(&interface).expect("filter attached");
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
    let blocked_before = blocked_count(&scratch);

    agent.kill9();
    assert_eq!(
        lab.attached_program(&interface),
        Some(first),
        "the program must stay attached"
    );
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
    expect(&lab, LEASED_LINE.v4, at(REMOTE_V4, 25), Outcome::Connected);

    // Watch the interface while a new agent adopts the pins: a program must be attached at
    // every sample, and the id may change only by replacement.
    let restarted = AtomicBool::new(false);
    let gaps = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&restarted);
        let sampler = scope.spawn(|| {
            let mut gaps = 0;
            while !restarted.load(Ordering::Relaxed) {
                if lab.attached_program(&interface).is_none() {
                    gaps += 1;
                }
            }
            gaps
        });
        let second_agent = scratch.start_agent(&lab, &[]);
        restarted.store(true, Ordering::Relaxed);
        let gaps = sampler.join().unwrap();
        let second = lab.attached_program(&interface).expect("filter attached");
        assert_ne!(
            second, first,
            "the restarted agent swaps in its own program"
        );
        assert!(
            second_agent.count("program replaced on the pinned link") == 1,
            "{}",
            second_agent.log().join("\n")
        );
        expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
        expect(&lab, LEASED_LINE.v4, at(REMOTE_V4, 25), Outcome::Connected);
        let blocked_after = blocked_count(&scratch);
        assert!(
            blocked_after > blocked_before,
            "counters continue across the restart: {blocked_before} then {blocked_after}"
        );
        drop(second_agent);
        gaps
    });
    assert_eq!(
        gaps, 0,
        "the interface was seen without a program during the restart"
    );
}

/// An upgrade whose build changed the layout of a map of observations (here the offender
/// records, which were an LRU hash of 12-byte keys and 72-byte values) finds the old map
/// pinned: the new agent pins a fresh one in its place, adopts everything else, and the
/// filter enforces throughout.
#[test]
fn an_offender_map_of_another_layout_is_replaced_and_the_rest_adopted() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    let (scratch, agent) = start(&lab);
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
    let blocked_before = blocked_count(&scratch);
    agent.kill9();
    let offenders = scratch.pin_path.join("maps/OFFENDERS");
    std::fs::remove_file(&offenders).unwrap();
    pin_lru_hash(&offenders, 12, 72, 65_536);

    let upgraded = scratch.start_agent(&lab, &[]);
    let log = upgraded.log().join("\n");
    assert_eq!(
        upgraded.count("key/value sizes 12/72 from another version"),
        1,
        "{log}"
    );
    assert_eq!(
        upgraded.count("program replaced on the pinned link"),
        1,
        "{log}"
    );
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
    assert!(
        blocked_count(&scratch) > blocked_before,
        "the counters were adopted"
    );
    let records = Dataplane::read_pinned_offenders(&offenders).unwrap();
    let customer = filter_common::SourceKey::from_ip(RESIDENTIAL.v4);
    assert!(
        records.iter().any(|(key, _)| *key == customer),
        "the fresh table records {customer}: {records:?}"
    );
}

/// Creates an LRU hash map with the kernel's own system calls (no loader involved) and
/// pins it at `path`.
fn pin_lru_hash(path: &std::path::Path, key_size: u32, value_size: u32, entries: u32) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_LRU_HASH, key_size, value_size, entries]);
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_CREATE, of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, create.as_ptr(), 128) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = [0u64; 4];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: a bpf_attr for BPF_OBJ_PIN (pathname, then bpf_fd), zero-padded.
    let pinned = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), 32) };
    let error = std::io::Error::last_os_error();
    // SAFETY: the fd made above; the pin holds the map.
    unsafe { libc::close(fd as libc::c_int) };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN {}: {error}", path.display());
}

/// Blocked IPv4 packets so far on any interface, read from the pinned counters.
fn blocked_count(scratch: &Scratch) -> u64 {
    use aya::maps::{MapData, PerCpuArray};
    use filter_common::{Counter, Family, MAX_INTERFACES, Reason, reason_counter_index};
    let map = MapData::from_pin(scratch.pin_path.join("maps/REASON_STATS")).unwrap();
    let counters: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map)).unwrap();
    (0..=MAX_INTERFACES)
        .map(|slot| reason_counter_index(slot, Family::Ipv4, Reason::Blocked))
        .map(|index| {
            counters
                .get(&index, 0)
                .unwrap()
                .iter()
                .map(|c| c.packets)
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn an_invalid_policy_written_over_a_running_one_is_refused_and_the_old_one_enforced() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    let (scratch, agent) = start(&lab);
    let broken = lab.policy_yaml().replace("100.64.0.0/10", "100.64.0.1/10");
    scratch.write_policy(&broken);
    agent.wait_for("reload refused: the running policy stays in force", RELOAD);
    assert!(
        agent.count("host bits set") >= 1,
        "{}",
        agent.log().join("\n")
    );
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
    expect(&lab, RESIDENTIAL.v6, at(REMOTE_V6, 25), Outcome::TimedOut);
    expect(&lab, LEASED_LINE.v4, at(REMOTE_V4, 25), Outcome::Connected);
    // A later valid edit still applies.
    scratch.write_policy(&lab.policy_yaml().replace("smtp: block", "smtp: allow"));
    agent.wait_for_nth("generation=", 2, RELOAD);
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::Connected);
}

#[test]
fn an_invalid_policy_at_start_attaches_nothing_and_exits_1() {
    let lab = Lab::create().unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&lab.policy_yaml().replace("ports: [25]", "ports: [0]"));
    let mut agent = scratch.spawn_agent(&lab, &[]);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(1));
    let log = agent.log().join("\n");
    assert!(
        log.contains("nothing attached") && log.contains("port"),
        "{log}"
    );
    assert_eq!(lab.attached_program(lab.router_customer_if()), None);
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused_and_detach_removes_the_filter() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    let (scratch, mut agent) = start(&lab);
    let mut second = scratch.spawn_agent(&lab, &[]);
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        second.count("already running") == 1,
        "{}",
        second.log().join("\n")
    );

    // detach refuses while the agent runs, works once it is stopped.
    let refused = lab
        .command_in(Ns::Router, BINARY)
        .args(["detach", "--pin-path"])
        .arg(&scratch.pin_path)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(agent.stop(STOP).unwrap().code(), Some(0));
    assert!(
        lab.attached_program(lab.router_customer_if()).is_some(),
        "stopping keeps the filter"
    );
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::TimedOut);
    let detached = scratch.detach();
    assert!(
        detached.status.success(),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );
    assert_eq!(lab.attached_program(lab.router_customer_if()), None);
    assert!(!scratch.pin_path.exists());
    expect(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), Outcome::Connected);
}

#[test]
fn reject_refuses_blocked_connections_at_once_where_drop_lets_them_time_out() {
    let lab = Lab::create().unwrap();
    let _listeners = listeners(&lab);
    // veth hands an XDP_TX'd frame only to a peer that runs XDP itself (its NAPI ring);
    // a real NIC needs nothing of the kind.
    let _customer_xdp = lab
        .in_netns(Ns::Customers, || {
            let mut dataplane = Dataplane::load(Capacity::for_image(&MapImage::new(
                filter_common::Config::empty(),
            )))?;
            dataplane.attach_unpinned(
                filter_common::PROGRAM_PASS_BASELINE,
                lab.customer_if(),
                aya::programs::XdpMode::Driver,
            )?;
            anyhow::Ok(dataplane)
        })
        .unwrap()
        .expect("a pass-only XDP program on the customer veth");
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&lab.policy_yaml().replace("action: drop", "action: reject"));
    let mut agent = scratch.start_agent(&lab, &[]);
    let patience = Duration::from_secs(3);
    for (src, remote, relay) in [
        (RESIDENTIAL.v4, REMOTE_V4, RELAY_V4),
        (RESIDENTIAL.v6, REMOTE_V6, RELAY_V6),
    ] {
        let started = Instant::now();
        let got = lab.connect(src, at(remote, 25), patience);
        assert_eq!(got, Outcome::Refused);
        let waited = started.elapsed();
        eprintln!("{src} -> {remote}:25 refused after {waited:?}");
        assert!(
            waited < Duration::from_millis(500),
            "{src}: refused only after {waited:?}"
        );
        expect(&lab, src, at(relay, 25), Outcome::Connected);
        expect(&lab, src, at(remote, 587), Outcome::Connected);
    }
    assert_eq!(agent.stop(STOP).unwrap().code(), Some(0));

    // The same attempt under `action: drop` gets no answer at all.
    scratch.write_policy(&lab.policy_yaml());
    let _agent = scratch.start_agent(&lab, &[]);
    let started = Instant::now();
    let timeout = Duration::from_secs(2);
    assert_eq!(
        lab.connect(RESIDENTIAL.v4, at(REMOTE_V4, 25), timeout),
        Outcome::TimedOut
    );
    // TimedOut is the assertion; this only checks the attempt waited out its timeout.
    // socket2's connect_timeout polls with the time left cut to whole milliseconds, so it
    // may return up to a millisecond early.
    assert!(started.elapsed() >= timeout - Duration::from_millis(5));
}
