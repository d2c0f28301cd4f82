//! The pin directory: bpffs mount, the one-agent lock, and the XDP links pinned per
//! interface, so the filter outlives the agent that attached it.
//!
//! Layout: `DIR/maps/NAME` (every map), `DIR/links/IFNAME@MODE` (one XDP link per
//! interface; MODE is `native` or `generic`).

use std::{
    fs::{File, TryLockError},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    maps::MapInfo,
    programs::{
        Xdp,
        links::{FdLink, Link, PinnedLink},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use log::{info, warn};
use nix::{
    mount::MsFlags,
    sys::statfs::{BPF_FS_MAGIC, FsType},
};

use super::libxdp;
use crate::policy::XdpMode;

pub struct PinDir {
    root: PathBuf,
    /// Held for the agent's lifetime: an exclusive flock on the directory.
    _lock: Option<File>,
}

/// An interface the filter is attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedInterface {
    pub interface: String,
    /// `native` or `generic`.
    pub mode: String,
    /// `exclusive` (alone, through our pinned link) or `multiprog` (a component of a
    /// libxdp dispatcher).
    pub attach: String,
    pub program_id: u32,
    /// Our pinned link; 0 for a dispatcher component (libxdp pins its links).
    pub link_id: u32,
    /// Why the interface runs in generic mode when native was wanted, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// What the operator should know about this attachment (the fallback among them).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The programs on the interface's XDP hook in run order, ours among them.
    #[serde(default)]
    pub chain: Vec<ChainProgram>,
}

/// A program on an interface's XDP hook.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainProgram {
    pub id: u32,
    pub name: String,
    /// The run priority inside a dispatcher (none for a program alone on the hook).
    pub priority: Option<u32>,
    /// Inside a dispatcher: whether XDP_PASS goes on to the next program.
    pub chain_on_pass: bool,
    pub ours: bool,
}

impl PinDir {
    /// Opens (creating and mounting bpffs if needed) the pin directory without locking it:
    /// for `detach` and read-only inspection.
    pub fn open(root: &Path) -> Result<PinDir> {
        ensure_bpffs(root)?;
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(PinDir {
            root: root.to_path_buf(),
            _lock: None,
        })
    }

    /// Opens the pin directory and takes the one-agent lock; fails when another agent
    /// holds it.
    pub fn open_locked(root: &Path) -> Result<PinDir> {
        let mut dir = Self::open(root)?;
        let file = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "another filter-agent is already running with pin path {}; stop it first \
                 (two agents would fight over the same maps)",
                root.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", root.display()));
            }
        }
        dir._lock = Some(file);
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// The id of the pinned map `name`.
    pub fn map_id(&self, name: &str) -> Result<u32> {
        let path = self.map_path(name);
        Ok(MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?
            .id())
    }

    /// Whether `interface` has a pinned link of ours.
    pub fn has_link(&self, interface: &str) -> Result<bool> {
        Ok(self.pinned_links()?.iter().any(|(i, _)| i == interface))
    }

    fn link_path(&self, interface: &str, mode: &str) -> PathBuf {
        self.root.join("links").join(format!("{interface}@{mode}"))
    }

    /// Interfaces with a pinned link, and the mode each was attached in.
    pub fn pinned_links(&self) -> Result<Vec<(String, String)>> {
        let mut links = Vec::new();
        let dir = self.root.join("links");
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some((interface, mode)) = name.rsplit_once('@') {
                links.push((interface.to_string(), mode.to_string()));
            }
        }
        links.sort();
        Ok(links)
    }

    /// The interfaces the filter is attached to now, with program and link ids.
    pub fn attached(&self) -> Result<Vec<AttachedInterface>> {
        self.pinned_links()?
            .into_iter()
            .map(|(interface, mode)| {
                let link = FdLink::from(PinnedLink::from_pin(self.link_path(&interface, &mode))?);
                let info = link.info()?;
                Ok(exclusive(interface, mode, info.program_id(), info.id()))
            })
            .collect()
    }

    /// Attaches `program` to `interface`. An interface that already has a pinned link
    /// gets the program swapped in atomically (no moment without a filter); otherwise a
    /// new link is created in the wanted mode and pinned.
    pub fn attach(
        &self,
        program: &mut Xdp,
        interface: &str,
        wanted: XdpMode,
    ) -> Result<AttachedInterface> {
        if let Some((_, mode)) = self
            .pinned_links()?
            .into_iter()
            .find(|(i, _)| i == interface)
        {
            let wanted_name = match wanted {
                XdpMode::Native => Some("native"),
                XdpMode::Generic => Some("generic"),
                XdpMode::Auto => None,
            };
            // An earlier agent fell back; the reason it was given is gone with it.
            let fallback = (wanted == XdpMode::Auto && mode == "generic").then(|| {
                format!(
                    "{interface} runs in generic mode as an earlier agent attached it (native XDP \
                     was refused then); `filter-agent detach` and a restart try native again"
                )
            });
            if wanted_name.is_some_and(|w| w != mode) {
                warn!(
                    "interface {interface} stays in {mode} mode: changing the XDP mode needs a \
                     detach and re-attach, which would leave the interface unfiltered for a moment; \
                     run `filter-agent detach` and restart to change it"
                );
            }
            let mut current = self.describe(interface, &mode)?;
            current.fallback = fallback.clone();
            if current.program_id == program.info()?.id() {
                return Ok(current);
            }
            let path = self.link_path(interface, &mode);
            let pinned = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening the pinned link {}", path.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("replacing the program on {interface}"))?;
            drop(program.take_link(id)?);
            info!("interface={interface} mode={mode} program replaced on the pinned link");
            let mut attached = self.describe(interface, &mode)?;
            attached.fallback = fallback;
            return Ok(attached);
        }
        let mut fallback = None;
        let mode = match wanted {
            XdpMode::Native => attach_new(program, interface, AyaXdpMode::Driver)?,
            XdpMode::Generic => attach_new(program, interface, AyaXdpMode::Skb)?,
            XdpMode::Auto => match attach_new(program, interface, AyaXdpMode::Driver) {
                Ok(link) => link,
                Err(err) => {
                    // The BPF link attach reports only an errno; the driver's own words
                    // come with a netlink attempt.
                    let ifindex = nix::net::if_::if_nametoindex(interface)?;
                    let reason = libxdp::native_refusal(ifindex, program.fd()?.as_fd())
                        .unwrap_or_else(|| format!("{err:#}"));
                    let text = format!(
                        "native XDP refused on {interface}: {reason}; fell back to generic mode, \
                         which filters later in the stack and costs about three times the CPU"
                    );
                    warn!("interface={interface} {text}");
                    fallback = Some(text);
                    attach_new(program, interface, AyaXdpMode::Skb)?
                }
            },
        };
        let (link, mode) = mode;
        let path = self.link_path(interface, mode);
        link.pin(&path)
            .with_context(|| format!("pinning the link at {}", path.display()))?;
        info!("interface={interface} mode={mode} attached");
        let mut attached = self.describe(interface, mode)?;
        attached.fallback = fallback;
        Ok(attached)
    }

    fn describe(&self, interface: &str, mode: &str) -> Result<AttachedInterface> {
        let info = FdLink::from(PinnedLink::from_pin(self.link_path(interface, mode))?).info()?;
        Ok(exclusive(
            interface.to_string(),
            mode.to_string(),
            info.program_id(),
            info.id(),
        ))
    }

    /// Removes the filter from `interface` (unpinning its link releases it).
    pub fn detach_interface(&self, interface: &str) -> Result<()> {
        for (name, mode) in self.pinned_links()? {
            if name == interface {
                let path = self.link_path(&name, &mode);
                let link = PinnedLink::from_pin(&path)?.unpin()?;
                link.detach()?;
                info!("interface={interface} mode={mode} detached");
            }
        }
        Ok(())
    }

    /// Detaches every interface and removes every pinned map and the directory.
    pub fn remove_all(&self) -> Result<()> {
        for (interface, _) in self.pinned_links()? {
            self.detach_interface(&interface)?;
        }
        for sub in ["maps", "links"] {
            let dir = self.root.join(sub);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries {
                    let path = entry?.path();
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
        // The directory itself may be a bpffs mount point; then it stays.
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }
}

/// The filter alone on `interface`'s hook through our pinned link.
fn exclusive(interface: String, mode: String, program_id: u32, link_id: u32) -> AttachedInterface {
    AttachedInterface {
        interface,
        mode,
        attach: crate::policy::AttachMode::Exclusive.name().to_string(),
        program_id,
        link_id,
        fallback: None,
        warnings: Vec::new(),
        chain: Vec::new(),
    }
}

fn attach_new(
    program: &mut Xdp,
    interface: &str,
    mode: AyaXdpMode,
) -> Result<(FdLink, &'static str)> {
    let name = match mode {
        AyaXdpMode::Skb => "generic",
        _ => "native",
    };
    let id = program
        .attach(interface, mode)
        .with_context(|| format!("attaching to {interface} in {name} mode"))?;
    let link = program.take_link(id)?;
    let link = FdLink::try_from(link).map_err(|_| {
        anyhow::anyhow!(
            "the kernel attached {interface} without a BPF link (netlink fallback), which cannot \
             be pinned; a kernel with XDP links (5.9+) is needed"
        )
    })?;
    Ok((link, name))
}

/// The conventional bpffs mount point.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Makes sure `root` lies on a bpffs: under /sys/fs/bpf, bpffs is mounted there (as
/// systemd would); elsewhere, at `root` itself.
fn ensure_bpffs(root: &Path) -> Result<()> {
    let sys_fs_bpf = Path::new(SYS_FS_BPF);
    if root.starts_with(sys_fs_bpf) && fs_type(sys_fs_bpf)? != BPF_FS_MAGIC {
        // Agents starting together must not stack mounts (pins under a covered mount
        // would vanish from view): check again under a lock.
        let _lock = mount_lock()?;
        if fs_type(sys_fs_bpf)? != BPF_FS_MAGIC {
            mount_bpffs(sys_fs_bpf)?;
        }
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    if fs_type(root)? != BPF_FS_MAGIC {
        let _lock = mount_lock()?;
        if fs_type(root)? != BPF_FS_MAGIC {
            mount_bpffs(root)?;
        }
    }
    Ok(())
}

/// An exclusive flock held while mounting bpffs.
fn mount_lock() -> Result<File> {
    let path = Path::new("/run/filter-agent-bpffs.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // Blocks until the other mounter is done.
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    nix::mount::mount(Some("bpf"), at, Some("bpf"), MsFlags::empty(), None::<&str>)
        .map_err(io::Error::from)
        .with_context(|| format!("mounting bpffs at {} (root needed)", at.display()))?;
    info!("mounted bpffs at {}", at.display());
    Ok(())
}

fn fs_type(path: &Path) -> Result<FsType> {
    let stat = nix::sys::statfs::statfs(path)
        .map_err(io::Error::from)
        .with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_the_same_pin_path_is_refused() {
        let root = Path::new(SYS_FS_BPF).join(format!("filter-agent-test-{}", std::process::id()));
        let first = PinDir::open_locked(&root).unwrap();
        assert_eq!(fs_type(&root).unwrap(), BPF_FS_MAGIC);
        let second = PinDir::open_locked(&root).err().unwrap().to_string();
        assert!(
            second.starts_with("another filter-agent is already running with pin path"),
            "{second}"
        );
        drop(first);
        drop(PinDir::open_locked(&root).unwrap());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
