//! A network-namespace test bed: customers -> router -> internet, joined by veth pairs.
//!
//! ```text
//!  {p}-customers              {p}-router                         {p}-internet
//!  {p}-cust  <--veth-->  {p}-rcust  [XDP here]  {p}-rnet  <--veth-->  {p}-net
//!  one address per             169.254.0.1, fe80::1             203.0.113.9/.25
//!  customer type               203.0.113.1, 2001:db8:ffff::1    2001:db8:ffff::9/::25
//! ```
//!
//! Used by the end-to-end tests and the demo. Needs root and iproute2's `ip`; `command_in`
//! also needs `nsenter` (util-linux).
//!
//! Socket work happens in-process: a short-lived thread joins the namespace with
//! `setns(2)` and creates the socket there; a socket stays in the namespace it was
//! created in, whichever thread uses it later.

use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{ip, netns};

/// The remote MTA (any host on the internet that is not a relay).
pub const REMOTE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
pub const REMOTE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x9));
/// The ISP's relay (smarthost), listed under `relays:` in `policies/lab.yaml`.
pub const RELAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 25));
pub const RELAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x25));

/// The router's next-hop addresses on the customer link. Link-local, so that one
/// on-link default route serves every customer source address whatever its prefix.
pub const ROUTER_CUSTOMER_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
pub const ROUTER_CUSTOMER_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The router's addresses on the internet link (the internet's default gateway).
pub const ROUTER_INTERNET_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ROUTER_INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// The interface name `policies/lab.yaml` carries; [`Lab::policy_yaml`] replaces it.
pub const POLICY_PLACEHOLDER_IF: &str = "lab-rcust";
/// `policies/lab.yaml`, embedded so tests and the demo need no path at run time.
const POLICY_TEMPLATE: &str = include_str!("../../policies/lab.yaml");

/// One customer type: one IPv4 and one IPv6 source address in the customers namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Customer {
    pub name: &'static str,
    pub v4: IpAddr,
    pub v6: IpAddr,
    /// Whether `policies/lab.yaml` blocks its TCP/25 to non-relays.
    pub smtp_blocked: bool,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(a: u16, b: u16, c: u16, d: u16, h: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, h))
}

pub const RESIDENTIAL: Customer = Customer {
    name: "residential",
    v4: v4(100, 64, 0, 10),
    v6: v6(0x2001, 0xdb8, 0x1000, 0, 0x10),
    smtp_blocked: true,
};
pub const BUSINESS_BROADBAND: Customer = Customer {
    name: "business-broadband",
    v4: v4(192, 0, 2, 10),
    v6: v6(0x2001, 0xdb8, 0x2000, 0, 0x10),
    smtp_blocked: true,
};
/// Inside business-broadband's prefixes; a more specific `allow` exempts it.
pub const BUSINESS_ETHERNET: Customer = Customer {
    name: "business-ethernet",
    v4: v4(192, 0, 2, 130),
    v6: v6(0x2001, 0xdb8, 0x2000, 0x100, 0x10),
    smtp_blocked: false,
};
pub const LEASED_LINE: Customer = Customer {
    name: "leased-line",
    v4: v4(198, 51, 100, 130),
    v6: v6(0x2001, 0xdb8, 0x3000, 0, 0x10),
    smtp_blocked: false,
};
/// In no group of the policy at all.
pub const UNMANAGED: Customer = Customer {
    name: "unmanaged",
    v4: v4(198, 18, 0, 10),
    v6: v6(0x2001, 0xdb8, 0x4000, 0, 0x10),
    smtp_blocked: false,
};

pub const CUSTOMERS: [Customer; 5] = [
    RESIDENTIAL,
    BUSINESS_BROADBAND,
    BUSINESS_ETHERNET,
    LEASED_LINE,
    UNMANAGED,
];

/// `addr:port`, for the many connection targets of the lab tests.
pub fn at(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

/// What the router routes back into the customer link (covers every customer address).
const CUSTOMER_ROUTES: [&str; 8] = [
    "100.64.0.0/10",
    "192.0.2.0/24",
    "198.51.100.128/25",
    "198.18.0.0/15",
    "2001:db8:1000::/36",
    "2001:db8:2000::/36",
    "2001:db8:3000::/48",
    "2001:db8:4000::/48",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Customers,
    Router,
    Internet,
}

impl Ns {
    pub const ALL: [Ns; 3] = [Ns::Customers, Ns::Router, Ns::Internet];

    fn suffix(self) -> &'static str {
        match self {
            Ns::Customers => "customers",
            Ns::Router => "router",
            Ns::Internet => "internet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handshake completed (and the listener's banner, or EOF, was read).
    Connected,
    /// An RST came back: nothing listens there.
    Refused,
    /// No answer within the timeout: the SYN (or the SYN-ACK) was dropped.
    TimedOut,
    Error(String),
}

/// A running lab. Dropping it deletes its namespaces, which removes the veths too.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    customer_if: String,
    router_customer_if: String,
    router_internet_if: String,
    internet_if: String,
}

/// Labs created by this process; with the pid this makes names unique across
/// parallel tests and test binaries.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Creates a lab named after this process id and a counter, e.g. `l0012ab03`.
    pub fn create() -> anyhow::Result<Lab> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed) % 256;
        // pid_max is at most 2^22, so 6 hex digits; "l" + 6 + 2 = 9 characters leaves
        // "-rcust" within the kernel's 15-character interface names.
        Lab::with_prefix(&format!("l{:06x}{n:02x}", std::process::id()))
    }

    /// [`Lab::create`], with the router's customer-facing veth named `router_if` (at most
    /// 15 characters): labs whose routers share one policy text, as a fleet's do, need
    /// the same interface name in each router namespace.
    pub fn create_with_router_if(router_if: &str) -> anyhow::Result<Lab> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed) % 256;
        Lab::build_named(
            &format!("l{:06x}{n:02x}", std::process::id()),
            Some(router_if),
        )
    }

    /// Creates a lab with a chosen prefix (1 to 9 of `[a-z0-9-]`), e.g. for the demo.
    /// Namespaces left over with these names (a killed earlier run) are deleted first.
    pub fn with_prefix(prefix: &str) -> anyhow::Result<Lab> {
        Lab::build_named(prefix, None)
    }

    fn build_named(prefix: &str, router_if: Option<&str>) -> anyhow::Result<Lab> {
        if prefix.is_empty()
            || prefix.len() > 9
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("lab prefix {prefix:?}: want 1 to 9 characters of [a-z0-9-]");
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces, veth, sysctls)");
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => bail!("`ip -V` failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => bail!("the lab needs iproute2's `ip` (apt-get install iproute2): {e}"),
        }
        let lab = Lab {
            prefix: prefix.to_owned(),
            customer_if: format!("{prefix}-cust"),
            router_customer_if: router_if.map_or_else(|| format!("{prefix}-rcust"), str::to_string),
            router_internet_if: format!("{prefix}-rnet"),
            internet_if: format!("{prefix}-net"),
        };
        lab.delete_namespaces();
        // From here on, a failure drops `lab`, which removes whatever was made.
        lab.build()
            .with_context(|| format!("setting up lab {prefix}"))?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where the agent attaches: the router's customer-facing veth.
    pub fn router_customer_if(&self) -> &str {
        &self.router_customer_if
    }

    /// The customers' end of the customer link.
    pub fn customer_if(&self) -> &str {
        &self.customer_if
    }

    pub fn netns_name(&self, ns: Ns) -> String {
        format!("{}-{}", self.prefix, ns.suffix())
    }

    /// `/run/netns/NAME`, as `ip netns add` creates it.
    pub fn netns_path(&self, ns: Ns) -> PathBuf {
        netns::path(&self.netns_name(ns))
    }

    /// `PROGRAM` in namespace `ns`, with the host's mounts (see [`netns::command`]).
    pub fn command_in(&self, ns: Ns, program: impl AsRef<OsStr>) -> Command {
        netns::command(&self.netns_path(ns), program)
    }

    /// Runs `f` on a thread that has joined namespace `ns`; sockets it creates live there.
    pub fn in_netns<T: Send>(&self, ns: Ns, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = self.netns_path(ns);
        std::thread::scope(|s| {
            s.spawn(move || {
                // The thread ends with `f`, and its namespace with it.
                netns::enter(&path)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The id of the XDP program attached to `interface` in the router namespace, if any.
    pub fn attached_program(&self, interface: &str) -> Option<u32> {
        let out = self
            .command_in(Ns::Router, "ip")
            .args(["-d", "link", "show", "dev", interface])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find("prog/xdp id ")? + "prog/xdp id ".len();
        text[at..].split_whitespace().next()?.parse().ok()
    }

    /// A TCP listener in the internet namespace (port 0 picks a free port). Each accepted
    /// connection is counted, gets a one-line banner and is closed.
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<Listener> {
        let listener = self
            .in_netns(Ns::Internet, || TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr} in {}", self.netns_name(Ns::Internet)))?;
        let addr = listener.local_addr()?;
        // Non-blocking accept polled with a short sleep: Drop can then stop the thread
        // by a flag, without having to connect to it from inside the namespace.
        listener.set_nonblocking(true)?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            // Counted before the banner goes out, so a client that has
                            // read the banner sees the count include it.
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.write_all(b"220 lab ESMTP\r\n");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Ok(Listener {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    /// Opens a TCP connection from the customers namespace with source address `from`
    /// (one of [`CUSTOMERS`]) to `to`. On a handshake, reads until EOF (within what is
    /// left of `timeout`) so a lab [`Listener`] has counted the connection on return.
    pub fn connect(&self, from: IpAddr, to: SocketAddr, timeout: Duration) -> Outcome {
        match self.in_netns(Ns::Customers, || connect_from(from, to, timeout)) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }

    /// Gives the customers namespace one more source address (a subscriber's new session
    /// address, say) on its veth; the router routes every customer prefix back already.
    pub fn add_customer_address(&self, addr: IpAddr) -> anyhow::Result<()> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let nodad = if addr.is_ipv4() { "" } else { " nodad" };
        ip::batch(
            Some(&self.netns_name(Ns::Customers)),
            &format!("addr add {addr}/{len} dev {}{nodad}\n", self.customer_if),
        )
    }

    /// Sets the MTU of every veth of the lab (both links, both ends), e.g. 9000 for
    /// jumbo frames.
    pub fn set_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        let [cust_ns, router_ns, inet_ns] = Ns::ALL.map(|ns| self.netns_name(ns));
        ip::batch(
            Some(&cust_ns),
            &format!("link set {} mtu {mtu}\n", self.customer_if),
        )?;
        ip::batch(
            Some(&router_ns),
            &format!(
                "link set {} mtu {mtu}\nlink set {} mtu {mtu}\n",
                self.router_customer_if, self.router_internet_if
            ),
        )?;
        ip::batch(
            Some(&inet_ns),
            &format!("link set {} mtu {mtu}\n", self.internet_if),
        )
    }

    /// Sends `bytes` bytes over one TCP connection from the customers namespace (source
    /// `from`) to a receiver on `to` in the internet namespace; returns how many arrived
    /// before the sender closed (all of them when nothing in the way dropped segments).
    pub fn send_bulk(&self, from: IpAddr, to: SocketAddr, bytes: usize) -> anyhow::Result<usize> {
        let listener = self
            .in_netns(Ns::Internet, || TcpListener::bind(to))?
            .with_context(|| format!("listening on {to}"))?;
        let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut received = Vec::new();
            conn.read_to_end(&mut received)?;
            Ok(received.len())
        });
        self.in_netns(Ns::Customers, || -> anyhow::Result<()> {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(from, 0).into())?;
            socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
            let mut stream = std::net::TcpStream::from(socket);
            stream.write_all(&vec![0x5a; bytes])?;
            stream.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        })??;
        receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver panicked"))?
            .context("receiving")
    }

    /// `policies/lab.yaml` with its placeholder interface replaced by
    /// [`Lab::router_customer_if`].
    pub fn policy_yaml(&self) -> String {
        POLICY_TEMPLATE.replace(
            &format!("name: {POLICY_PLACEHOLDER_IF}"),
            &format!("name: {}", self.router_customer_if),
        )
    }

    fn build(&self) -> anyhow::Result<()> {
        let [cust_ns, router_ns, inet_ns] = Ns::ALL.map(|ns| self.netns_name(ns));
        for ns in [&cust_ns, &router_ns, &inet_ns] {
            ip::batch(None, &format!("netns add {ns}"))?;
        }
        let (cust, rcust, rnet, net) = (
            &self.customer_if,
            &self.router_customer_if,
            &self.router_internet_if,
            &self.internet_if,
        );
        ip::batch(
            None,
            &format!(
                "link add {cust} netns {cust_ns} type veth peer name {rcust} netns {router_ns}\n\
                 link add {rnet} netns {router_ns} type veth peer name {net} netns {inet_ns}\n"
            ),
        )?;

        // DAD would keep the automatic link-local addresses tentative for a second or
        // more after link-up; nothing else can claim an address on a veth.
        self.sysctls(
            Ns::Customers,
            &[(format!("ipv6/conf/{cust}/accept_dad"), "0")],
        )?;
        self.sysctls(
            Ns::Router,
            &[
                (format!("ipv6/conf/{rcust}/accept_dad"), "0"),
                (format!("ipv6/conf/{rnet}/accept_dad"), "0"),
                ("ipv4/ip_forward".into(), "1"),
                ("ipv6/conf/all/forwarding".into(), "1"),
            ],
        )?;
        self.sysctls(
            Ns::Internet,
            &[(format!("ipv6/conf/{net}/accept_dad"), "0")],
        )?;

        // Customers: every source address as a host address on the one veth, and default
        // routes to the router's link-local next hops (`onlink` for IPv4 since no
        // customer address shares a subnet with 169.254.0.1).
        let mut batch = format!("link set lo up\nlink set {cust} up\n");
        for c in CUSTOMERS {
            batch += &format!("addr add {}/32 dev {cust}\n", c.v4);
            batch += &format!("addr add {}/128 dev {cust} nodad\n", c.v6);
        }
        batch += &format!("route add default via {ROUTER_CUSTOMER_V4} dev {cust} onlink\n");
        batch += &format!("route add default via {ROUTER_CUSTOMER_V6} dev {cust}\n");
        ip::batch(Some(&cust_ns), &batch)?;

        let mut batch = format!(
            "link set lo up\nlink set {rcust} up\nlink set {rnet} up\n\
             addr add {ROUTER_CUSTOMER_V4}/32 dev {rcust}\n\
             addr add {ROUTER_CUSTOMER_V6}/64 dev {rcust} nodad\n\
             addr add {ROUTER_INTERNET_V4}/24 dev {rnet}\n\
             addr add {ROUTER_INTERNET_V6}/64 dev {rnet} nodad\n"
        );
        for prefix in CUSTOMER_ROUTES {
            batch += &format!("route add {prefix} dev {rcust}\n");
        }
        ip::batch(Some(&router_ns), &batch)?;

        let mut batch = format!("link set lo up\nlink set {net} up\n");
        for a in [REMOTE_V4, RELAY_V4] {
            batch += &format!("addr add {a}/24 dev {net}\n");
        }
        for a in [REMOTE_V6, RELAY_V6] {
            batch += &format!("addr add {a}/64 dev {net} nodad\n");
        }
        batch += &format!("route add default via {ROUTER_INTERNET_V4}\n");
        batch += &format!("route add default via {ROUTER_INTERNET_V6}\n");
        ip::batch(Some(&inet_ns), &batch)?;
        Ok(())
    }

    /// Writes `/proc/sys/net/KEY` inside `ns` (that tree shows the caller's namespace).
    fn sysctls(&self, ns: Ns, settings: &[(String, &str)]) -> anyhow::Result<()> {
        self.in_netns(ns, || {
            for (key, value) in settings {
                let path = format!("/proc/sys/net/{key}");
                std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
            }
            Ok(())
        })?
    }

    fn delete_namespaces(&self) {
        for ns in Ns::ALL {
            netns::delete(&self.netns_name(ns));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.delete_namespaces();
    }
}

/// A listener made by [`Lab::listen`]; dropping it stops its thread and closes the port.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> Outcome {
    use socket2::{Domain, Socket, Type};
    let start = Instant::now();
    let result = (|| {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect_timeout(&to.into(), timeout)?;
        Ok::<_, std::io::Error>(socket)
    })();
    match result {
        Ok(socket) => {
            let mut stream = std::net::TcpStream::from(socket);
            let left = timeout.saturating_sub(start.elapsed());
            if stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_ok()
            {
                // The banner and EOF; a silent peer just costs the rest of the timeout.
                let _ = stream.read_to_end(&mut Vec::new());
            }
            Outcome::Connected
        }
        Err(e) => match e.kind() {
            ErrorKind::ConnectionRefused => Outcome::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
            _ => Outcome::Error(format!("{from} -> {to}: {e}")),
        },
    }
}
