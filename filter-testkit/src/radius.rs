//! RADIUS accounting for the lab tests and the demo, from real programs: FreeRADIUS
//! (Debian's `freeradius`) in the router namespace as the ISP's accounting server, its
//! `replicate` module copying every request to the agent, and `radclient` (Debian's
//! `freeradius-utils`) playing the BNG. Config generated into a temporary directory;
//! loopback addresses only.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::lab::{Lab, Ns};

/// The secret the BNG (radclient) and FreeRADIUS share in the lab.
pub const BNG_SECRET: &str = "bng-lab-secret";

/// A `freeradius -X` process in the router namespace; killed on drop.
pub struct FreeRadius {
    child: Child,
    /// Where the BNG sends accounting.
    pub addr: SocketAddr,
    log: std::path::PathBuf,
}

impl FreeRadius {
    /// Starts FreeRADIUS listening for accounting on `addr` (from `BNG_SECRET` clients on
    /// 127.0.0.1) and replicating every request to `agent` with `agent_secret`. Its config
    /// and log live in `dir`. Fails, saying why, if freeradius is not installed.
    pub fn start(
        lab: &Lab,
        dir: &Path,
        addr: SocketAddr,
        agent: SocketAddr,
        agent_secret: &str,
    ) -> anyhow::Result<FreeRadius> {
        which("freeradius", "freeradius")?;
        std::fs::create_dir_all(dir)?;
        let d = dir.display();
        let (agent_ip, agent_port) = (agent.ip(), agent.port());
        let (ip, port) = (addr.ip(), addr.port());
        let config = format!(
            r#"prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}/mods-config
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 5
cleanup_delay = 2
max_requests = 1024
hostname_lookups = no
log {{
    destination = stdout
}}
security {{
    allow_core_dumps = no
}}
proxy_requests = yes
# The agent, as an accounting home server that the replicate module copies to.
home_server agent {{
    type = acct
    ipaddr = {agent_ip}
    port = {agent_port}
    secret = {agent_secret}
}}
home_server_pool agent {{
    type = fail-over
    home_server = agent
}}
realm agent {{
    acct_pool = agent
}}
client bng {{
    ipaddr = 127.0.0.1
    secret = {BNG_SECRET}
}}
thread pool {{
    start_servers = 1
    max_servers = 2
    min_spare_servers = 1
    max_spare_servers = 2
}}
modules {{
    replicate {{
    }}
}}
server default {{
    listen {{
        type = acct
        ipaddr = {ip}
        port = {port}
    }}
    accounting {{
        update control {{
            &Replicate-To-Realm := agent
        }}
        replicate
    }}
}}
"#
        );
        std::fs::write(dir.join("radiusd.conf"), config)?;
        // FreeRADIUS reads DIR/dictionary on top of its own; none of ours.
        std::fs::write(dir.join("dictionary"), "")?;
        let log = dir.join("freeradius.log");
        let child = lab
            .command_in(Ns::Router, "freeradius")
            .arg("-X")
            .arg("-d")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::from(std::fs::File::create(
                dir.join("freeradius.err"),
            )?))
            .spawn()
            .context("starting freeradius")?;
        let mut server = FreeRadius { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.log().contains("Ready to process requests") {
            if let Some(status) = server.child.try_wait()? {
                bail!("freeradius exited ({status}):\n{}", server.log());
            }
            if Instant::now() > deadline {
                bail!("freeradius not ready within 20 s:\n{}", server.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Its debug output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str, package: &str) -> anyhow::Result<()> {
    match Command::new(program).arg("-v").output() {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "{program} is needed (Debian package {package}; `cargo xtask setup` installs it): {e}"
        ),
    }
}

/// Sends one accounting request with `radclient` from the router namespace to `server`,
/// as a BNG would: `attributes` in radclient's syntax (`Acct-Status-Type = Start, ...`).
/// One try, two seconds: the output says whether an Accounting-Response came back.
pub fn radclient(lab: &Lab, server: SocketAddr, secret: &str, attributes: &str) -> Output {
    which("radclient", "freeradius-utils").unwrap();
    let mut child = lab
        .command_in(Ns::Router, "radclient")
        .args(["-r", "1", "-t", "2", "-x"])
        .arg(server.to_string())
        .args(["acct", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start radclient");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(attributes.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Whether radclient got an Accounting-Response.
pub fn answered(output: &Output) -> bool {
    String::from_utf8_lossy(&output.stdout).contains("Received Accounting-Response")
}
