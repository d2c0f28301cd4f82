//! The signed policy source without an agent (no root): keys and signatures exchanged
//! with the real `minisign` tool both ways, and one fetch at a time against the testkit's
//! HTTP(S) server on the loopback: 200 then 304 to If-None-Match, a signature that does
//! not match or is missing, error statuses, an unreachable server, a body over the limit,
//! and https with a self-signed certificate given as the CA (and refused without it).

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use filter_agent::{
    control::protocol::MAX_POLICY_BYTES,
    source::{
        Outcome, UrlSource,
        fetch::{Fetched, Fetcher},
    },
};
use filter_testkit::policy_server::{PolicyServer, SelfSigned, etag_of};

const BIN: &str = env!("CARGO_BIN_EXE_filter-agent");
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const POLICY: &[u8] = b"version: 1\nmode: monitor\n";

fn agent_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `minisign` (Debian's package, installed by `cargo xtask setup`), failing clearly.
fn minisign(args: &[&str]) -> std::process::Output {
    Command::new("minisign")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("minisign is needed (apt-get install minisign): {e}"))
}

/// A key pair made by `filter-agent keygen` and a policy signed with it.
struct Signed {
    dir: tempfile::TempDir,
}

impl Signed {
    fn new() -> Signed {
        let dir = tempfile::tempdir().unwrap();
        let signed = Signed { dir };
        let out = agent_cli(&["keygen", "--out", path_str(&signed.key())]);
        assert!(out.status.success(), "{out:?}");
        signed
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("fleet.key")
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("fleet.key.pub")
    }

    /// Signs `body` as `name` with `filter-agent sign`; returns the `.sig` text.
    fn sign(&self, name: &str, body: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = agent_cli(&["sign", "--key", path_str(&self.key()), path_str(&path)]);
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(self.dir.path().join(format!("{name}.sig"))).unwrap()
    }

    fn source(&self, url: String) -> UrlSource {
        UrlSource {
            url,
            key: self.public(),
            poll: Duration::from_secs(30),
            ca: PathBuf::from(filter_agent::defaults::POLICY_CA),
        }
    }
}

fn server() -> PolicyServer {
    PolicyServer::start(TcpListener::bind((LOOPBACK, 0)).unwrap(), None).unwrap()
}

#[test]
fn keys_and_signatures_go_both_ways_between_filter_agent_and_minisign() {
    let signed = Signed::new();
    let dir = signed.dir.path();
    let policy = dir.join("edge.yaml");
    std::fs::write(&policy, POLICY).unwrap();

    // Our key, minisign's signature, our verify.
    // minisign names signatures FILE.minisig unless told (-x): ours are FILE.sig.
    let sig = dir.join("edge.yaml.sig");
    let out = minisign(&[
        "-S",
        "-s",
        path_str(&signed.key()),
        "-m",
        path_str(&policy),
        "-x",
        path_str(&sig),
    ]);
    assert!(out.status.success(), "minisign -S: {out:?}");
    let out = agent_cli(&[
        "verify",
        "--key",
        path_str(&signed.public()),
        path_str(&policy),
    ]);
    assert!(
        out.status.success(),
        "our verify of minisign's signature: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature ok"));

    // Our signature, minisign's verify.
    let out = agent_cli(&["sign", "--key", path_str(&signed.key()), path_str(&policy)]);
    assert!(out.status.success(), "{out:?}");
    let out = minisign(&[
        "-V",
        "-p",
        path_str(&signed.public()),
        "-m",
        path_str(&policy),
        "-x",
        path_str(&sig),
    ]);
    assert!(
        out.status.success(),
        "minisign -V of our signature: {out:?}"
    );

    // minisign's key pair (no password) and signature, our verify. (Its unencrypted
    // keys carry no checksum, which `sign` refuses saying how to sign instead.)
    let (pk, sk) = (dir.join("m.pub"), dir.join("m.key"));
    let out = minisign(&["-G", "-W", "-p", path_str(&pk), "-s", path_str(&sk)]);
    assert!(out.status.success(), "minisign -G: {out:?}");
    let out = minisign(&[
        "-S",
        "-s",
        path_str(&sk),
        "-m",
        path_str(&policy),
        "-x",
        path_str(&sig),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = agent_cli(&["verify", "--key", path_str(&pk), path_str(&policy)]);
    assert!(out.status.success(), "{out:?}");
    let out = agent_cli(&["sign", "--key", path_str(&sk), path_str(&policy)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("minisign -S -s"),
        "{out:?}"
    );

    // A changed byte: exit 1 from both tools; a missing file: exit 2 with the reason.
    std::fs::write(&policy, b"version: 1\nmode: enforce\n").unwrap();
    let out = agent_cli(&["verify", "--key", path_str(&pk), path_str(&policy)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("INVALID"),
        "{out:?}"
    );
    assert!(
        !minisign(&[
            "-V",
            "-p",
            path_str(&pk),
            "-m",
            path_str(&policy),
            "-x",
            path_str(&sig)
        ])
        .status
        .success()
    );
    let missing = dir.join("missing.yaml");
    let out = agent_cli(&["verify", "--key", path_str(&pk), path_str(&missing)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read"),
        "{out:?}"
    );
    // Our key file is the secret's owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(signed.key())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_second_fetch_asks_if_none_match_and_takes_the_304() {
    let signed = Signed::new();
    let sig = signed.sign("edge.yaml", POLICY);
    let server = server();
    server.put(&[("/edge.yaml", POLICY), ("/edge.yaml.sig", sig.as_bytes())]);
    let fetcher = Fetcher::new(&signed.source(server.url(LOOPBACK, "/edge.yaml"))).unwrap();

    let Ok(Fetched::Signed { text, etag, .. }) = fetcher.fetch(None) else {
        panic!("the first fetch: {:?}", fetcher.fetch(None));
    };
    assert_eq!(text.as_bytes(), POLICY);
    assert_eq!(etag.as_deref(), Some(etag_of(POLICY).as_str()));
    assert_eq!(fetcher.fetch(etag.as_deref()), Ok(Fetched::NotModified));
    let seen = server.seen();
    let asked: Vec<(&str, Option<&str>, u16)> = seen
        .iter()
        .map(|s| (s.path.as_str(), s.if_none_match.as_deref(), s.status))
        .collect();
    // The 304 costs one request: the signature is not fetched again.
    assert_eq!(
        asked,
        [
            ("/edge.yaml", None, 200),
            ("/edge.yaml.sig", None, 200),
            ("/edge.yaml", etag.as_deref(), 304),
        ]
    );

    // A new version with its signature: 200 again, with the new ETag.
    let new = b"version: 1\nmode: enforce\n";
    let new_sig = signed.sign("edge.yaml", new);
    server.put(&[("/edge.yaml", new), ("/edge.yaml.sig", new_sig.as_bytes())]);
    match fetcher.fetch(etag.as_deref()) {
        Ok(Fetched::Signed { text, etag, .. }) => {
            assert_eq!(text.as_bytes(), new);
            assert_eq!(etag, Some(etag_of(new)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_is_refused_is_counted_by_its_outcome() {
    let signed = Signed::new();
    let sig = signed.sign("edge.yaml", POLICY);
    let server = server();
    let fetcher = Fetcher::new(&signed.source(server.url(LOOPBACK, "/edge.yaml"))).unwrap();
    let outcome = |fetcher: &Fetcher| fetcher.fetch(None).unwrap_err();

    // The body changed, the signature is the old one (an upload half done).
    server.put(&[
        ("/edge.yaml", b"version: 1\n"),
        ("/edge.yaml.sig", sig.as_bytes()),
    ]);
    let refused = outcome(&fetcher);
    assert_eq!(refused.outcome, Outcome::BadSignature, "{refused:?}");
    assert!(refused.reason.contains("does not verify"), "{refused:?}");

    // Signed with another key.
    let other = Signed::new();
    let other_sig = other.sign("edge.yaml", POLICY);
    server.put(&[
        ("/edge.yaml", POLICY),
        ("/edge.yaml.sig", other_sig.as_bytes()),
    ]);
    let refused = outcome(&fetcher);
    assert_eq!(refused.outcome, Outcome::BadSignature);
    assert!(
        refused.reason.contains("not with the trusted key"),
        "{refused:?}"
    );

    // No signature at all.
    server.remove("/edge.yaml.sig");
    let refused = outcome(&fetcher);
    assert_eq!(refused.outcome, Outcome::BadSignature);
    assert!(refused.reason.contains("404"), "{refused:?}");

    // No policy: an HTTP error.
    server.remove("/edge.yaml");
    let refused = outcome(&fetcher);
    assert_eq!(refused.outcome, Outcome::HttpError);
    assert!(refused.reason.contains("HTTP 404"), "{refused:?}");

    // A body over the limit is cut off, never read whole.
    let huge = vec![b'#'; MAX_POLICY_BYTES + 1];
    server.put(&[("/edge.yaml", &huge), ("/edge.yaml.sig", sig.as_bytes())]);
    let refused = outcome(&fetcher);
    assert_eq!(refused.outcome, Outcome::HttpError);
    assert!(refused.reason.contains("larger than"), "{refused:?}");

    // Nobody listening.
    let url = server.url(LOOPBACK, "/edge.yaml");
    drop(server);
    let refused = Fetcher::new(&signed.source(url))
        .unwrap()
        .fetch(None)
        .unwrap_err();
    assert_eq!(refused.outcome, Outcome::Unreachable, "{refused:?}");
}

#[test]
fn https_with_a_self_signed_certificate_given_as_the_ca() {
    let signed = Signed::new();
    let sig = signed.sign("edge.yaml", POLICY);
    let cert = SelfSigned::for_ip(LOOPBACK).unwrap();
    let ca = signed.dir.path().join("ca.pem");
    std::fs::write(&ca, &cert.cert_pem).unwrap();
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let server = PolicyServer::start(listener, Some(cert.config.clone())).unwrap();
    server.put(&[("/edge.yaml", POLICY), ("/edge.yaml.sig", sig.as_bytes())]);
    let url = server.url(LOOPBACK, "/edge.yaml");
    assert!(url.starts_with("https://"));

    let source = UrlSource {
        ca: ca.clone(),
        ..signed.source(url.clone())
    };
    match Fetcher::new(&source).unwrap().fetch(None) {
        Ok(Fetched::Signed { text, .. }) => assert_eq!(text.as_bytes(), POLICY),
        other => panic!("{other:?}"),
    }

    // Another CA (a second self-signed certificate): the server is not trusted.
    let stranger = SelfSigned::for_ip(LOOPBACK).unwrap();
    std::fs::write(&ca, &stranger.cert_pem).unwrap();
    let refused = Fetcher::new(&source).unwrap().fetch(None).unwrap_err();
    assert_eq!(refused.outcome, Outcome::Unreachable, "{refused:?}");
    assert!(
        refused.reason.to_lowercase().contains("certificate"),
        "{refused:?}"
    );
    // No CA file: a clear error before any request.
    let source = UrlSource {
        ca: signed.dir.path().join("none.pem"),
        ..signed.source(url)
    };
    let error = format!("{:#}", Fetcher::new(&source).err().unwrap());
    assert!(error.contains("--policy-ca"), "{error}");
}
