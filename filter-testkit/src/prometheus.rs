//! A real Prometheus server (Debian's `prometheus` package) for the fleet tests: it runs
//! in a monitoring namespace of its own, joined to each lab's router namespace by a veth
//! pair (a management network, as an ISP's monitoring reaches its routers), with its
//! tsdb in a temporary directory and its HTTP API on loopback inside that namespace.
//!
//! ```text
//!  {name} (Prometheus, 127.0.0.1:9090)
//!    {name}-m0 10.77.0.1/30  <--veth-->  {name}-r0 10.77.0.2/30  in lab 0's router
//!    {name}-m1 10.77.1.1/30  <--veth-->  {name}-r1 10.77.1.2/30  in lab 1's router
//! ```

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    ip,
    lab::{Lab, Ns},
    netns,
};

/// Where Prometheus listens inside the monitoring namespace.
const LISTEN_PORT: u16 = 9090;

/// The monitoring namespace and its links to the labs' routers; dropping it deletes the
/// namespace, and with it every veth pair.
pub struct MonitoringNet {
    name: String,
}

impl MonitoringNet {
    /// `name`: at most 12 characters of `[a-z0-9-]` (interface names add 3).
    pub fn create(name: &str, labs: &[&Lab]) -> anyhow::Result<MonitoringNet> {
        if name.len() > 12 || labs.len() > 250 {
            bail!("monitoring net {name:?}: name too long or too many labs");
        }
        netns::delete(name);
        ip::batch(None, &format!("netns add {name}"))?;
        let net = MonitoringNet { name: name.into() };
        ip::batch(Some(name), "link set lo up\n")?;
        for (i, lab) in labs.iter().enumerate() {
            let router = lab.netns_name(Ns::Router);
            let (m, r) = (format!("{name}-m{i}"), format!("{name}-r{i}"));
            ip::batch(
                None,
                &format!("link add {m} netns {name} type veth peer name {r} netns {router}\n"),
            )?;
            ip::batch(
                Some(name),
                &format!(
                    "addr add {}/30 dev {m}\nlink set {m} up\n",
                    net.own_address(i)
                ),
            )?;
            ip::batch(
                Some(&router),
                &format!(
                    "addr add {}/30 dev {r}\nlink set {r} up\n",
                    net.router_address(i)
                ),
            )?;
        }
        Ok(net)
    }

    fn own_address(&self, lab: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, lab as u8, 1))
    }

    /// The address of lab `lab`'s router on the management network.
    pub fn router_address(&self, lab: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, lab as u8, 2))
    }

    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.name)
    }
}

impl Drop for MonitoringNet {
    fn drop(&mut self) {
        netns::delete(&self.name);
    }
}

/// A `prometheus` process; killed on drop.
pub struct Prometheus {
    child: Child,
    netns: PathBuf,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `net`'s namespace with `config` (prometheus.yml's text) and
    /// its tsdb and log in `dir`; waits until it is ready. Fails, saying why, if the
    /// prometheus package is not installed.
    pub fn start(net: &MonitoringNet, dir: &Path, config: &str) -> anyhow::Result<Prometheus> {
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = dir.join("prometheus.log");
        let mut command = netns::command(&net.netns_path(), "prometheus");
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{LISTEN_PORT}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = command.spawn().context(
            "starting prometheus (Debian's prometheus package; `cargo xtask setup` installs it)",
        )?;
        let mut server = Prometheus {
            child,
            netns: net.netns_path(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", server.log());
            }
            if matches!(server.get("/-/ready"), Ok((200, _))) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 60 s:\n{}", server.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on its HTTP API: status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let netns = self.netns.clone();
        let path = path.to_string();
        std::thread::spawn(move || -> anyhow::Result<(u16, String)> {
            netns::enter(&netns)?;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", LISTEN_PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (head, body) = response
                .split_once("\r\n\r\n")
                .context("no response head")?;
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no status")?;
            // Chunked bodies: the API answers small JSON documents in one chunk or more.
            let body = if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(body)?
            } else {
                body.to_string()
            };
            Ok((status, body))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))?
    }

    /// `/api/v1/query?query=EXPR`: the result vector as (labels, value) pairs.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
        if status != 200 {
            bail!("query {expr:?}: HTTP {status}: {body}");
        }
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        let result = answer["data"]["result"]
            .as_array()
            .with_context(|| format!("query {expr:?}: no result vector in {body}"))?;
        result
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("query {expr:?}: no value in {r}"))?;
                Ok((r["metric"].clone(), value))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk")?;
    }
}

/// A query string value: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
