//! The RADIUS accounting listener: each datagram judged (client, packet, authenticator,
//! duplicate, attributes) before its session change is handed to the agent, answered with
//! an Accounting-Response only once applied, and counted by outcome
//! (`filter_agent_radius_requests_total{outcome}`).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use log::{debug, info, warn};
use tokio::net::UdpSocket;

use super::{
    radius::{self, ACCOUNTING_REQUEST, DecodeError, Status},
    sessions::{Feed, SessionKey, check_address},
};

/// A BNG (or the RADIUS server replicating for it) allowed to send accounting, and the
/// secret it signs with.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    pub address: IpNet,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug log.
        write!(f, "Client({})", self.address)
    }
}

/// The clients of the policy in force; the most specific prefix holding a sender decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clients(pub Vec<Client>);

impl Clients {
    pub fn secret_for(&self, sender: IpAddr) -> Option<&[u8]> {
        let sender = match sender {
            // A v4 sender on a dual-stack socket.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(sender, IpAddr::V4),
            v4 => v4,
        };
        self.0
            .iter()
            .filter(|c| c.address.contains(&sender))
            .max_by_key(|c| c.address.prefix_len())
            .map(|c| c.secret.as_slice())
    }
}

/// What became of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Applied and answered.
    Applied,
    /// A retransmission of one applied already: answered again, not applied again.
    Duplicate,
    /// From an address that is no client.
    UnknownClient,
    /// Shorter than its header or its Length.
    Truncated,
    /// Not a RADIUS packet (lengths that do not add up).
    Malformed,
    /// Not an Accounting-Request.
    Unsupported,
    /// The Request Authenticator does not match the client's secret.
    BadAuthenticator,
    /// Authentic, but an attribute is out of range or one the request needs is missing.
    Invalid,
    /// Valid, but the agent could not apply it (not answered: the BNG will retry).
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::UnknownClient,
        Outcome::Truncated,
        Outcome::Malformed,
        Outcome::Unsupported,
        Outcome::BadAuthenticator,
        Outcome::Invalid,
        Outcome::Failed,
    ];

    /// The `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::UnknownClient => "unknown-client",
            Outcome::Truncated => "truncated",
            Outcome::Malformed => "malformed",
            Outcome::Unsupported => "unsupported",
            Outcome::BadAuthenticator => "bad-authenticator",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

/// Requests by outcome since the agent started.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; Outcome::ALL.len()]);

impl Counters {
    pub fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .map(|&o| (o, self.0[o as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A session change an accounting request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Start or Interim-Update: the session holds `addresses` now (none given: an
    /// Interim-Update only says it is still there).
    Up {
        key: SessionKey,
        subscriber: String,
        addresses: Vec<IpNet>,
        status: Status,
    },
    Stop {
        key: SessionKey,
    },
    /// Accounting-On or -Off: the BNG (re)started, every session it had is over.
    NasRestart {
        nas: String,
        status: Status,
    },
}

/// A datagram judged: how it is counted, the change it asks for, the answer once applied.
#[derive(Debug, PartialEq, Eq)]
pub struct Judged {
    pub outcome: Outcome,
    /// For the log: what was wrong, or what it is.
    pub detail: String,
    pub change: Option<Change>,
    pub response: Option<[u8; 20]>,
    /// The retransmission key, to remember the answer under once applied.
    duplicate_key: Option<DuplicateKey>,
}

type DuplicateKey = (SocketAddr, u8, [u8; 16]);

/// How long an answer is kept for retransmissions (RFC 5080 suggests a few seconds; BNGs
/// retry for up to about half a minute).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(30);

/// The listener's memory between datagrams: answers for retransmissions.
#[derive(Debug, Default)]
pub struct Receiver {
    answered: HashMap<DuplicateKey, (Instant, [u8; 20])>,
}

impl Receiver {
    /// Judges one datagram from `from`; applies nothing.
    pub fn judge(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        clients: &Clients,
        now: Instant,
    ) -> Judged {
        let judged = |outcome, detail: String| Judged {
            outcome,
            detail,
            change: None,
            response: None,
            duplicate_key: None,
        };
        let Some(secret) = clients.secret_for(from.ip()) else {
            return judged(
                Outcome::UnknownClient,
                format!("{} is not a client", from.ip()),
            );
        };
        let packet = match radius::decode(datagram) {
            Ok(packet) => packet,
            Err(DecodeError::Truncated) => {
                return judged(
                    Outcome::Truncated,
                    format!("{} octets, truncated", datagram.len()),
                );
            }
            Err(DecodeError::Malformed(why)) => return judged(Outcome::Malformed, why),
        };
        if packet.code != ACCOUNTING_REQUEST {
            return judged(
                Outcome::Unsupported,
                format!("code {} is not an Accounting-Request", packet.code),
            );
        }
        if !radius::request_is_authentic(&packet, secret) {
            return judged(
                Outcome::BadAuthenticator,
                "the Request Authenticator does not match the client's secret".into(),
            );
        }
        self.answered
            .retain(|_, (at, _)| now.duration_since(*at) < DUPLICATE_WINDOW);
        let key = (from, packet.identifier, packet.authenticator);
        if let Some((_, answer)) = self.answered.get(&key) {
            return Judged {
                response: Some(*answer),
                ..judged(
                    Outcome::Duplicate,
                    format!("identifier {} again", packet.identifier),
                )
            };
        }
        let change = radius::accounting(&packet).and_then(|acct| change_of(acct, from.ip()));
        match change {
            Ok(change) => Judged {
                outcome: Outcome::Applied,
                detail: describe(&change),
                change: Some(change),
                response: Some(radius::response(&packet, secret)),
                duplicate_key: Some(key),
            },
            Err(why) => judged(Outcome::Invalid, why),
        }
    }

    /// The request was applied: its answer goes out now and to any retransmission.
    pub fn answered(&mut self, judged: &Judged, now: Instant) {
        if let (Some(key), Some(response)) = (judged.duplicate_key, judged.response) {
            self.answered.insert(key, (now, response));
        }
    }
}

/// The session change an authentic request's attributes describe.
fn change_of(acct: radius::Accounting, sender: IpAddr) -> Result<Change, String> {
    let nas = acct.nas.unwrap_or_else(|| sender.to_string());
    let status = acct.status;
    let need = |value: Option<String>, name: &str| {
        value.ok_or_else(|| format!("{} without {name}", status.name()))
    };
    let key = |session_id| SessionKey {
        feed: Feed::Radius,
        nas: Some(nas.clone()),
        session_id,
    };
    match status {
        Status::Start | Status::InterimUpdate => {
            let subscriber = need(acct.user_name, "User-Name")?;
            let session_id = need(acct.session_id, "Acct-Session-Id")?;
            if acct.addresses.len() > super::sessions::MAX_ADDRESSES {
                return Err(format!(
                    "{} addresses; at most {}",
                    acct.addresses.len(),
                    super::sessions::MAX_ADDRESSES
                ));
            }
            let addresses = acct
                .addresses
                .into_iter()
                .map(|a| check_address(a).map_err(|e| e.0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Change::Up {
                key: key(session_id),
                subscriber,
                addresses,
                status,
            })
        }
        Status::Stop => Ok(Change::Stop {
            key: key(need(acct.session_id, "Acct-Session-Id")?),
        }),
        Status::AccountingOn | Status::AccountingOff => Ok(Change::NasRestart { nas, status }),
    }
}

fn describe(change: &Change) -> String {
    match change {
        Change::Up {
            key,
            subscriber,
            addresses,
            status,
        } => {
            let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            format!(
                "{} session={key} subscriber={subscriber:?} addresses=[{}]",
                status.name(),
                addresses.join(",")
            )
        }
        Change::Stop { key } => format!("Stop session={key}"),
        Change::NasRestart { nas, status } => format!("{} nas={nas}", status.name()),
    }
}

/// Applies a change to the agent's sessions: `Ok` once persisted and in the kernel.
pub type Apply = dyn Fn(Change, SystemTime) -> anyhow::Result<()> + Send + Sync;

/// Serves accounting on `socket` until the task is aborted.
pub async fn serve(
    socket: UdpSocket,
    clients: Arc<RwLock<Clients>>,
    counters: Arc<Counters>,
    apply: Arc<Apply>,
) {
    let mut receiver = Receiver::default();
    // One more than a packet may be, to tell an oversized datagram from a full one.
    let mut buffer = vec![0u8; radius::MAX_PACKET + 1];
    let mut last_warning: HashMap<Outcome, Instant> = HashMap::new();
    loop {
        let (len, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                warn!("radius: receiving failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let mut judged = {
            let clients = clients
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            receiver.judge(&buffer[..len], from, &clients, now)
        };
        if let Some(change) = judged.change.take()
            && let Err(err) = apply(change, SystemTime::now())
        {
            judged.outcome = Outcome::Failed;
            judged.detail = format!("{} not applied: {err:#}", judged.detail);
            judged.response = None;
        }
        counters.count(judged.outcome);
        match judged.outcome {
            Outcome::Applied => {
                receiver.answered(&judged, now);
                info!("radius: from={from} {}", judged.detail);
            }
            Outcome::Duplicate => debug!("radius: from={from} duplicate: {}", judged.detail),
            outcome => {
                // Bad input is counted always, logged at most every 10 s per kind.
                let due = last_warning
                    .get(&outcome)
                    .is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(10));
                if due {
                    last_warning.insert(outcome, now);
                    warn!(
                        "radius: request dropped outcome={} from={from}: {} (counted in filter_agent_radius_requests_total)",
                        outcome.name(),
                        judged.detail
                    );
                }
            }
        }
        if let Some(response) = judged.response
            && let Err(err) = socket.send_to(&response, from).await
        {
            warn!("radius: cannot answer {from}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::subscribers::radius::{build::*, build_request};

    const SECRET: &[u8] = b"testing123";

    fn clients() -> Clients {
        Clients(vec![
            Client {
                address: "127.0.0.0/8".parse().unwrap(),
                secret: b"wide".to_vec(),
            },
            Client {
                address: "127.0.0.1/32".parse().unwrap(),
                secret: SECRET.to_vec(),
            },
        ])
    }

    fn from() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn start(id: u8, user: &str, session: &str, address: [u8; 4]) -> Vec<u8> {
        build_request(
            id,
            &[
                status(1),
                user_name(user),
                session_id(session),
                nas_ip(Ipv4Addr::new(192, 0, 2, 1)),
                framed_ip(address.into()),
            ],
            SECRET,
        )
    }

    #[test]
    fn a_start_is_applied_once_and_its_retransmission_answered_again() {
        let mut r = Receiver::default();
        let now = Instant::now();
        let bytes = start(1, "alice", "s1", [100, 64, 0, 20]);
        let judged = r.judge(&bytes, from(), &clients(), now);
        assert_eq!(judged.outcome, Outcome::Applied);
        assert_eq!(
            judged.change,
            Some(Change::Up {
                key: SessionKey {
                    feed: Feed::Radius,
                    nas: Some("192.0.2.1".into()),
                    session_id: "s1".into()
                },
                subscriber: "alice".into(),
                addresses: vec!["100.64.0.20/32".parse().unwrap()],
                status: Status::Start,
            })
        );
        let response = judged.response.unwrap();
        r.answered(&judged, now);
        let again = r.judge(&bytes, from(), &clients(), now + Duration::from_secs(1));
        assert_eq!(
            (again.outcome, again.change, again.response),
            (Outcome::Duplicate, None, Some(response))
        );
        // Another port is another client socket: not a retransmission.
        let other = r.judge(&bytes, "127.0.0.1:40001".parse().unwrap(), &clients(), now);
        assert_eq!(other.outcome, Outcome::Applied);
        // Long after, the same bytes are a new request.
        let late = r.judge(&bytes, from(), &clients(), now + DUPLICATE_WINDOW);
        assert_eq!(late.outcome, Outcome::Applied);
    }

    #[test]
    fn bad_input_is_judged_and_never_changes_anything() {
        let mut r = Receiver::default();
        let now = Instant::now();
        let good = start(1, "alice", "s1", [100, 64, 0, 20]);
        let judge = |r: &mut Receiver, bytes: &[u8], from: SocketAddr| {
            let j = r.judge(bytes, from, &clients(), now);
            assert!(j.change.is_none() && j.response.is_none(), "{j:?}");
            j.outcome
        };
        assert_eq!(
            judge(&mut r, &good, "192.0.2.99:1813".parse().unwrap()),
            Outcome::UnknownClient
        );
        // Signed with the /8's secret, sent from the /32: the more specific client decides.
        let wide = build_request(1, &[status(1)], b"wide");
        assert_eq!(judge(&mut r, &wide, from()), Outcome::BadAuthenticator);
        assert_eq!(
            judge(&mut r, &good[..good.len() - 1], from()),
            Outcome::Truncated
        );
        let mut bad = good.clone();
        bad[2..4].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(judge(&mut r, &bad, from()), Outcome::Malformed);
        let mut bad = good.clone();
        bad[0] = 1;
        assert_eq!(judge(&mut r, &bad, from()), Outcome::Unsupported);
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(judge(&mut r, &bad, from()), Outcome::BadAuthenticator);
        let missing = build_request(
            2,
            &[
                status(1),
                user_name("alice"),
                framed_ip([100, 64, 0, 20].into()),
            ],
            SECRET,
        );
        assert_eq!(judge(&mut r, &missing, from()), Outcome::Invalid);
        let loopback = start(3, "alice", "s1", [127, 0, 0, 1]);
        assert_eq!(judge(&mut r, &loopback, from()), Outcome::Invalid);
        let stop = build_request(4, &[status(2), user_name("alice")], SECRET);
        assert_eq!(judge(&mut r, &stop, from()), Outcome::Invalid);
    }

    #[test]
    fn accounting_off_names_the_bng_and_stop_the_session() {
        let mut r = Receiver::default();
        let now = Instant::now();
        let off = build_request(9, &[status(8)], SECRET);
        assert_eq!(
            r.judge(&off, from(), &clients(), now).change,
            Some(Change::NasRestart {
                nas: "127.0.0.1".into(),
                status: Status::AccountingOff
            })
        );
        let stop = build_request(
            10,
            &[
                status(2),
                session_id("s1"),
                nas_ip(Ipv4Addr::new(192, 0, 2, 1)),
            ],
            SECRET,
        );
        assert_eq!(
            r.judge(&stop, from(), &clients(), now).change,
            Some(Change::Stop {
                key: SessionKey {
                    feed: Feed::Radius,
                    nas: Some("192.0.2.1".into()),
                    session_id: "s1".into()
                }
            })
        );
    }

    /// Seeded random datagrams, truncations and bit flips of valid requests: the receiver
    /// never panics, and nothing that is not exactly a signed request is ever applied.
    #[test]
    fn fuzzed_datagrams_never_panic_and_are_never_applied() {
        let seed = std::env::var("RADIUS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_2866);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut r = Receiver::default();
        let now = Instant::now();
        let valid: Vec<Vec<u8>> = (0..16)
            .map(|i| {
                let mut attrs = vec![
                    status([1, 2, 3, 7, 8][i % 5]),
                    user_name("alice"),
                    session_id(&format!("s{i}")),
                ];
                attrs.push(framed_ip(Ipv4Addr::new(100, 64, 0, i as u8 + 1)));
                attrs.push(ipv6_prefix(
                    DELEGATED_IPV6_PREFIX,
                    "2001:db8:1100::/48".parse().unwrap(),
                ));
                build_request(i as u8, &attrs, SECRET)
            })
            .collect();
        let (mut applied, mut rejected) = (0, 0);
        for round in 0..20_000 {
            let base = &valid[round % valid.len()];
            let mutated: Vec<u8> = match rng.u8(0..5) {
                // Now and then the request itself (then its retransmission).
                4 if rng.u8(0..8) == 0 => base.clone(),
                0 => (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect(),
                1 => base[..rng.usize(0..base.len())].to_vec(),
                2 => {
                    let mut b = base.clone();
                    for _ in 0..rng.usize(1..4) {
                        let i = rng.usize(0..b.len());
                        b[i] ^= 1 << rng.u8(0..8);
                    }
                    b
                }
                _ => {
                    // Valid framing, random attributes, signed: authentic but arbitrary.
                    // Mostly with a status, so some get past that check.
                    let mut attrs: Vec<(u8, Vec<u8>)> = (0..rng.usize(0..8))
                        .map(|_| {
                            (
                                rng.u8(..),
                                (0..rng.usize(0..20)).map(|_| rng.u8(..)).collect(),
                            )
                        })
                        .collect();
                    if rng.bool() {
                        attrs.push(status(rng.u32(0..10)));
                    }
                    build_request(rng.u8(..), &attrs, SECRET)
                }
            };
            let judged = r.judge(&mutated, from(), &clients(), now);
            let exact = valid.iter().any(|v| v == &mutated);
            match judged.change {
                Some(_) => {
                    applied += 1;
                    // Applied only what decodes, is authentic and accounts correctly.
                    let packet = radius::decode(&mutated).expect("applied bytes decode");
                    assert!(
                        radius::request_is_authentic(&packet, SECRET),
                        "seed {seed} round {round}"
                    );
                    radius::accounting(&packet).expect("applied bytes account");
                    assert!(judged.response.is_some());
                }
                None => {
                    rejected += 1;
                    assert!(
                        !exact || judged.outcome == Outcome::Duplicate,
                        "seed {seed} round {round}"
                    );
                    assert!(judged.response.is_none() || judged.outcome == Outcome::Duplicate);
                }
            }
        }
        assert!(
            applied > 0 && rejected > 10_000,
            "applied {applied}, rejected {rejected}"
        );
    }
}
