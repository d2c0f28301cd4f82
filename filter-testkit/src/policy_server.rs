//! A small HTTP(S) server of policy files for the fleet tests: files put in memory are
//! served with a strong ETag (`If-None-Match` answered 304), others 404; every request is
//! recorded. Plain HTTP/1.1, one request per connection (`Connection: close`), served one
//! connection at a time on a thread; TLS with rustls for a [`SelfSigned`] certificate.
//! [`ServerNs`] is a network namespace for it, linked by a veth pair to each lab's router.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

use crate::{
    ip,
    lab::{Lab, Ns},
    netns,
};

/// The signing side of a fleet: two key pairs (`fleet.key`, `other.key`) made with
/// `filter-agent keygen`, and `filter-agent sign`.
pub struct Publisher {
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Publisher {
    /// `binary`: the filter-agent binary.
    pub fn new(binary: impl Into<PathBuf>) -> Publisher {
        let publisher = Publisher {
            dir: tempfile::tempdir().unwrap(),
            binary: binary.into(),
        };
        for name in ["fleet.key", "other.key"] {
            let key = publisher.dir().join(name);
            crate::agent::ok(
                std::process::Command::new(&publisher.binary)
                    .arg("keygen")
                    .arg("--out")
                    .arg(&key)
                    .output()
                    .unwrap(),
            );
        }
        publisher
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The public key of `fleet.key`, for the agents' --policy-key.
    pub fn public(&self) -> PathBuf {
        self.dir().join("fleet.key.pub")
    }

    /// `text` and its signature with key `key` (`fleet.key` or `other.key`).
    pub fn sign(&self, text: &str, key: &str) -> (String, String) {
        let policy = self.dir().join("edge.yaml");
        std::fs::write(&policy, text).unwrap();
        crate::agent::ok(
            std::process::Command::new(&self.binary)
                .arg("sign")
                .arg("--key")
                .arg(self.dir().join(key))
                .arg(&policy)
                .output()
                .unwrap(),
        );
        let sig = std::fs::read_to_string(self.dir().join("edge.yaml.sig")).unwrap();
        (text.to_string(), sig)
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub if_none_match: Option<String>,
    pub status: u16,
}

type Files = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// A running server; dropping it stops it and closes its port.
pub struct PolicyServer {
    addr: SocketAddr,
    tls: bool,
    files: Files,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The strong ETag of a body: its SHA-256, quoted.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", &filter_agent::policy::sha256_hex(body)[..32])
}

impl PolicyServer {
    /// Serves on `listener` (made in whichever namespace it must live in), with TLS when
    /// `tls` is given.
    pub fn start(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<PolicyServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let files: Files = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let is_tls = tls.is_some();
        let thread = {
            let (files, seen, stop) = (files.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
                            let result = match &tls {
                                Some(config) => rustls::ServerConnection::new(config.clone())
                                    .map_err(std::io::Error::other)
                                    .and_then(|tls| {
                                        serve(rustls::StreamOwned::new(tls, conn), &files, &seen)
                                    }),
                                None => serve(conn, &files, &seen),
                            };
                            // A client that gave up (or refused our certificate) is fine.
                            let _ = result;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Ok(PolicyServer {
            addr,
            tls: is_tls,
            files,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` or `https://` `host:port` `path`.
    pub fn url(&self, host: IpAddr, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!(
            "{scheme}://{}{path}",
            SocketAddr::new(host, self.addr.port())
        )
    }

    /// Serves these files from now on, all at once (no request sees some of them
    /// changed and not the others).
    pub fn put(&self, files: &[(&str, &[u8])]) {
        let mut served = self.files.lock().unwrap();
        for (path, body) in files {
            served.insert(path.to_string(), body.to_vec());
        }
    }

    pub fn remove(&self, path: &str) {
        self.files.lock().unwrap().remove(path);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests for `path` answered with `status`.
    pub fn count(&self, path: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path == path && s.status == status)
            .count()
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request: GET (or HEAD) of a file, 304 when If-None-Match has its ETag.
fn serve<S: Read + Write>(
    stream: S,
    files: &Files,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let mut if_none_match = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(value.trim().to_string());
        }
    }
    let body = files.lock().unwrap().get(&path).cloned();
    let (status, reason, etag, body) = match body {
        _ if method != "GET" => (405, "Method Not Allowed", None, Vec::new()),
        Some(body) => {
            let etag = etag_of(&body);
            if if_none_match.as_deref() == Some(etag.as_str()) {
                (304, "Not Modified", Some(etag), Vec::new())
            } else {
                (200, "OK", Some(etag), body)
            }
        }
        None => (404, "Not Found", None, b"not found\n".to_vec()),
    };
    seen.lock().unwrap().push(Seen {
        path,
        if_none_match,
        status,
    });
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if let Some(etag) = etag {
        head += &format!("ETag: {etag}\r\n");
    }
    if status != 304 {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    let stream = reader.get_mut();
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()
}

/// A self-signed certificate for one IP address, and a rustls server configuration
/// presenting it.
pub struct SelfSigned {
    /// The certificate in PEM, what a client is given as its CA.
    pub cert_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

impl SelfSigned {
    pub fn for_ip(ip: IpAddr) -> anyhow::Result<SelfSigned> {
        let certified = rcgen::generate_simple_self_signed(vec![ip.to_string()])?;
        let cert_der = certified.cert.der().clone();
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("the key: {e}"))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)?;
        Ok(SelfSigned {
            cert_pem: certified.cert.pem(),
            config: Arc::new(config),
        })
    }
}

/// A namespace for the policy server, linked to the router of each lab by a veth pair:
/// on link `i` the router is 169.254.100.(4i+1)/30 and the server 169.254.100.(4i+2)/30
/// (link-local: no lab route covers them). Dropping it deletes the namespace.
pub struct ServerNs {
    name: String,
}

impl ServerNs {
    /// `NAME` must be unique (e.g. a lab's prefix and a word).
    pub fn create(name: &str, labs: &[&Lab]) -> anyhow::Result<ServerNs> {
        netns::delete(name);
        ip::batch(None, &format!("netns add {name}"))?;
        let server = ServerNs {
            name: name.to_string(),
        };
        for (i, lab) in labs.iter().enumerate() {
            let router_ns = lab.netns_name(Ns::Router);
            let (rif, sif) = (
                format!("{}-rsrv", lab.prefix()),
                format!("{}-srv", lab.prefix()),
            );
            ip::batch(
                None,
                &format!(
                    "link add {rif} netns {router_ns} type veth peer name {sif} netns {name}\n"
                ),
            )?;
            let (router, srv) = (Self::router_addr(i), Self::server_addr(i));
            ip::batch(
                Some(&router_ns),
                &format!("addr add {router}/30 dev {rif}\nlink set {rif} up\n"),
            )?;
            ip::batch(
                Some(name),
                &format!("link set lo up\naddr add {srv}/30 dev {sif}\nlink set {sif} up\n"),
            )?;
        }
        Ok(server)
    }

    fn router_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(169, 254, 100, (4 * i + 1) as u8)
    }

    /// The server's address on the link to lab `i` (in the order given to `create`).
    pub fn server_addr(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(169, 254, 100, (4 * i + 2) as u8))
    }

    pub fn path(&self) -> PathBuf {
        netns::path(&self.name)
    }

    /// A TCP listener on every address of the namespace (port 0: a free one).
    pub fn listen(&self) -> anyhow::Result<TcpListener> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                netns::enter(&path)?;
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding the policy server")
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for ServerNs {
    fn drop(&mut self) {
        netns::delete(&self.name);
    }
}
