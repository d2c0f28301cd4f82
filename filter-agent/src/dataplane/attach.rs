//! Taking the XDP hook of an interface, and sharing it: alone through a pinned link
//! (`attach: exclusive`, see `pins`), or as a component of a libxdp multi-program
//! dispatcher (`attach: multiprog`, through `libxdp`), never replacing or removing a
//! program that is not ours. `auto` joins a dispatcher that is there, takes an empty hook
//! alone, and refuses beside anything else.
//!
//! "Ours" is a program that uses this pin path's FILTER_CONFIG map: the test holds across
//! restarts and kill -9 without any record besides the pinned maps.

use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};
use aya::programs::loaded_programs;
use filter_common::{PROGRAM_FILTER, maps::FILTER_CONFIG};
use log::{info, warn};

use super::{
    Dataplane, OBJECT,
    libxdp::{self, AttachMode as HookMode, Hook, HookProgram},
    pins::{AttachedInterface, ChainProgram, PinDir},
};
use crate::policy::{AttachMode, Interface, XdpMode};

impl Dataplane {
    /// Attaches the filter to `interface` as its policy entry says, or keeps (and takes
    /// over) the attachment an earlier agent left. `reject`: the policy answers blocked
    /// SYNs, which on a veth needs the peer's cooperation (a warning says so).
    pub fn attach(
        &mut self,
        pins: &PinDir,
        interface: &Interface,
        reject: bool,
    ) -> Result<AttachedInterface> {
        let name = interface.name.as_str();
        let ifindex = ifindex(name)?;
        let mut warnings = Vec::new();
        if reject && driver(name).as_deref() == Some("veth") {
            let text = "a veth: the resets of `action: reject` (sent back with XDP_TX) arrive \
                        only if its peer runs an XDP program (GRO on the peer is enough on \
                        some kernels); without one they are lost while counted as sent"
                .to_string();
            warn!("interface={name} {text}");
            warnings.push(text);
        }
        // Our components are told apart by this map, which every program of ours shares.
        let ours = self.map(FILTER_CONFIG.name)?.info()?.id();
        let hook = libxdp::inspect(ifindex).with_context(|| format!("inspecting {name}"))?;
        let mut attached = if pins.has_link(name)? {
            if interface.attach == AttachMode::Multiprog {
                let text = format!(
                    "{name} stays attached alone (exclusive, as an earlier agent left it): \
                     moving into a dispatcher needs `filter-agent detach` and a restart"
                );
                warn!("interface={name} {text}");
                warnings.push(text);
            }
            pins.attach(self.program_mut(PROGRAM_FILTER)?, name, interface.xdp_mode)?
        } else {
            match (&hook, interface.attach) {
                (Hook::Dispatcher { .. }, AttachMode::Auto | AttachMode::Multiprog) => {
                    self.join_dispatcher(interface, ifindex, &hook, ours)?
                }
                (Hook::Empty, AttachMode::Multiprog) => {
                    if let Some(refusal) = libxdp::freplace_refusal() {
                        bail!(
                            "{name}: attach: multiprog needs a libxdp dispatcher, and the kernel \
                             refused it: {refusal}; this kernel cannot share the XDP hook, use \
                             `attach: exclusive` (or `auto`) to run alone on it"
                        );
                    }
                    self.join_dispatcher(interface, ifindex, &hook, ours)?
                }
                (Hook::Empty, AttachMode::Auto | AttachMode::Exclusive) => {
                    pins.attach(self.program_mut(PROGRAM_FILTER)?, name, interface.xdp_mode)?
                }
                (Hook::Single { program, mode }, _) => {
                    bail!(foreign_program(name, interface.attach, program, *mode))
                }
                (Hook::Dispatcher { dispatcher, .. }, AttachMode::Exclusive) => bail!(
                    "{name} has a libxdp dispatcher (program {}) sharing its XDP hook: \
                     attach: exclusive would have to replace it with the filter alone, and \
                     filter-agent never removes other programs; use `attach: auto` or \
                     `multiprog` to join the dispatcher",
                    dispatcher.id
                ),
            }
        };
        attached.chain = chain(ifindex, ours)?;
        attached.warnings.extend(attached.fallback.clone());
        attached.warnings.extend(warnings);
        Ok(attached)
    }

    /// Our filter as a component of the dispatcher on `ifindex` (created if the hook is
    /// empty). A component an earlier agent left is replaced by this agent's program
    /// without a gap: the new one is added first, then the old one removed, each a
    /// dispatcher swap by libxdp.
    fn join_dispatcher(
        &mut self,
        interface: &Interface,
        ifindex: u32,
        hook: &Hook,
        ours: u32,
    ) -> Result<AttachedInterface> {
        let name = interface.name.as_str();
        let (existing, mode) = match hook {
            Hook::Dispatcher {
                components, mode, ..
            } => (
                components
                    .iter()
                    .filter(|c| uses_map(c.id, ours))
                    .map(|c| c.id)
                    .collect::<Vec<_>>(),
                *mode,
            ),
            _ => (Vec::new(), HookMode::Unspec),
        };
        if let Some(&current) = self.components.get(name)
            && existing.contains(&current)
        {
            return Ok(component(name, current, mode));
        }
        let maps = self.map_fds()?;
        let maps: Vec<(&str, _)> = maps.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
        let attach = |mode| {
            libxdp::attach_component(
                OBJECT,
                PROGRAM_FILTER,
                &maps,
                ifindex,
                mode,
                interface.priority,
            )
        };
        let mut fallback = None;
        let id = match (mode, interface.xdp_mode) {
            (HookMode::Unspec, XdpMode::Native) => attach(HookMode::Native)?,
            (HookMode::Unspec, XdpMode::Generic) => attach(HookMode::Skb)?,
            (HookMode::Unspec, XdpMode::Auto) => match attach(HookMode::Native) {
                Ok(id) => id,
                Err(err) => {
                    let text = format!(
                        "native XDP refused on {name} ({err:#}); the dispatcher runs in generic \
                         mode, which filters later in the stack and costs about three times the \
                         CPU"
                    );
                    warn!("interface={name} {text}");
                    fallback = Some(text);
                    attach(HookMode::Skb)?
                }
            },
            // Joining: the dispatcher's mode is the interface's.
            (mode, _) => attach(mode)?,
        };
        info!(
            "interface={name} joined the libxdp dispatcher as program {id} (priority {}, \
             XDP_PASS continues the chain)",
            interface.priority
        );
        for old in existing {
            libxdp::detach_component(old, ifindex, mode)?;
            info!("interface={name} removed the component program {old} an earlier agent left");
        }
        self.components.insert(name.to_string(), id);
        let hook = libxdp::inspect(ifindex)?;
        let mode = match hook {
            Hook::Dispatcher { mode, .. } => mode,
            // libxdp attaches a lone program without a dispatcher when the kernel refuses
            // one (freplace): the filter would then hold the hook alone, which is not what
            // multiprog promised the other programs. Take it off again before failing.
            Hook::Single { program, mode } if program.id == id => {
                libxdp::detach_component(id, ifindex, mode)?;
                bail!(
                    "{name}: libxdp could not build a dispatcher and attached the filter                      alone instead; removed it again. This kernel cannot share the XDP hook:                      use `attach: exclusive` (or `auto`) to run alone on it"
                )
            }
            _ => bail!("{name}: after joining, libxdp finds no dispatcher on the interface"),
        };
        let mut attached = component(name, id, mode);
        attached.fallback = fallback;
        Ok(attached)
    }

    /// Every map of the object with its fd, for a second loader (libbpf) to reuse.
    pub(super) fn map_fds(&self) -> Result<Vec<(&'static str, std::os::fd::OwnedFd)>> {
        filter_common::maps::ALL
            .iter()
            .map(|spec| {
                let fd = self.map(spec.name)?.fd().as_fd().try_clone_to_owned()?;
                Ok((spec.name, fd))
            })
            .collect()
    }
}

/// Our component `id` in the dispatcher on `interface` (it has no link of ours: libxdp
/// pins the dispatcher's).
fn component(interface: &str, id: u32, mode: HookMode) -> AttachedInterface {
    AttachedInterface {
        interface: interface.to_string(),
        mode: mode_name(mode).to_string(),
        attach: AttachMode::Multiprog.name().to_string(),
        program_id: id,
        link_id: 0,
        fallback: None,
        warnings: Vec::new(),
        chain: Vec::new(),
    }
}

fn mode_name(mode: HookMode) -> &'static str {
    match mode {
        HookMode::Skb => "generic",
        HookMode::Hw => "offload",
        _ => "native",
    }
}

/// The refusal beside a program that is not a dispatcher: name it and say what to do.
fn foreign_program(
    name: &str,
    attach: AttachMode,
    program: &HookProgram,
    mode: HookMode,
) -> String {
    let sharing = match libxdp::freplace_refusal() {
        Some(refusal) => format!(
            "; sharing the hook is not possible on this kernel anyway, it refuses libxdp's \
             dispatcher: {refusal}"
        ),
        None => String::new(),
    };
    format!(
        "{name} already runs XDP program {} (\"{}\", {} mode), which is not a libxdp \
         dispatcher (attach: {}); filter-agent never replaces or removes another program. \
         Either load that program through libxdp (xdp-loader, or a tool built on libxdp) so \
         the filter can join its dispatcher, or remove it (`ip link set dev {name} xdp off`) \
         if the filter is to run alone{sharing}",
        program.id,
        program.name,
        mode_name(mode),
        attach.name()
    )
}

/// The programs on the hook of `ifindex` in run order, ours marked.
fn chain(ifindex: u32, ours: u32) -> Result<Vec<ChainProgram>> {
    let entry = |p: &HookProgram| ChainProgram {
        id: p.id,
        name: p.name.clone(),
        priority: p.priority,
        chain_on_pass: p.chain_on_pass,
        ours: uses_map(p.id, ours),
    };
    Ok(match libxdp::inspect(ifindex)? {
        Hook::Empty => Vec::new(),
        Hook::Single { program, .. } => vec![entry(&program)],
        Hook::Dispatcher { components, .. } => components.iter().map(entry).collect(),
    })
}

/// Whether program `id` uses map `map_id`.
fn uses_map(id: u32, map_id: u32) -> bool {
    loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .and_then(|p| p.map_ids().ok().flatten())
        .is_some_and(|ids| ids.contains(&map_id))
}

/// Our components in libxdp dispatchers on any interface of this network namespace:
/// (interface, ifindex, program id, mode).
pub fn components(pins: &PinDir) -> Result<Vec<(String, u32, u32, HookMode)>> {
    if !pins.map_path(FILTER_CONFIG.name).exists() {
        return Ok(Vec::new());
    }
    let ours = pins.map_id(FILTER_CONFIG.name)?;
    let mut found = Vec::new();
    for interface in nix::net::if_::if_nameindex()?.iter() {
        let ifindex = interface.index();
        let name = interface.name().to_string_lossy().into_owned();
        if let Ok(Hook::Dispatcher {
            components, mode, ..
        }) = libxdp::inspect(ifindex)
        {
            for c in components.iter().filter(|c| uses_map(c.id, ours)) {
                found.push((name.clone(), ifindex, c.id, mode));
            }
        }
    }
    Ok(found)
}

/// Removes our component from `interface`'s dispatcher, if it has one there.
pub fn detach_components(pins: &PinDir, interface: Option<&str>) -> Result<Vec<String>> {
    let mut detached = Vec::new();
    for (name, ifindex, id, mode) in components(pins)? {
        if interface.is_none_or(|i| i == name) {
            libxdp::detach_component(id, ifindex, mode)?;
            info!("interface={name} removed our component (program {id}) from the dispatcher");
            detached.push(name);
        }
    }
    Ok(detached)
}

/// What every interface the filter is on holds now: the pinned links and the dispatcher
/// components, each with the programs on its hook.
pub fn attached(pins: &PinDir) -> Result<Vec<AttachedInterface>> {
    let mut all = pins.attached()?;
    if !pins.map_path(FILTER_CONFIG.name).exists() {
        return Ok(all);
    }
    let ours = pins.map_id(FILTER_CONFIG.name)?;
    for (name, _, id, mode) in components(pins)? {
        all.push(component(&name, id, mode));
    }
    for a in &mut all {
        if let Ok(index) = ifindex(&a.interface) {
            a.chain = chain(index, ours)?;
        }
    }
    all.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(all)
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("no such interface: {name}"))
}

/// The kernel driver of `interface` (ethtool's GDRVINFO), e.g. "veth".
fn driver(interface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DriverInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
        counts: [u32; 5],
    }
    #[repr(C)]
    struct Request {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DriverInfo,
        _pad: [u8; 16],
    }
    let mut info = DriverInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
        counts: [0; 5],
    };
    let mut request = Request {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket for the ioctl, closed below; the request points at `info`,
    // which outlives the call, and is sized as the kernel's struct ifreq.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return None;
        }
        let result = libc::ioctl(socket, SIOCETHTOOL, &mut request);
        libc::close(socket);
        if result < 0 {
            return None;
        }
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}
