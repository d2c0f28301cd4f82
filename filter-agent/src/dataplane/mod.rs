//! The kernel side as userspace sees it: load the embedded XDP object (maps fresh, or
//! pinned and adopted), bring its maps to a `MapImage` (see `sync`), attach it (see
//! `pins`), run frames through it with BPF_PROG_TEST_RUN and read its counters.

mod attach;
mod batch;
mod libxdp;
mod offender_table;
mod pins;
mod slots;
mod sync;

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode},
};
use filter_common::{
    ACTION_STATS_ENTRIES, ActionStat, Config, Counter, FAMILY_COUNT, Family, GroupName,
    InterfaceSlot, MapSpec, Offender, PROGRAM_DROP_BASELINE, PROGRAM_FILTER, PROGRAM_PASS_BASELINE,
    PROGRAM_REPLAY, REASON_COUNT, Reason, RecentSource, ReplayReport, SourceKey, Verdict,
    maps::{
        self, ACTION_STATS, CONFIG_SLOT, EVENTS, FILTER_CONFIG, GROUP_NAMES, GROUP_STATS,
        IFINDEX_SLOTS, INTERFACE_SLOTS, OFFENDERS, REASON_STATS, SOURCES_V4, SOURCES_V6,
    },
    reason_counter_index,
};
use log::warn;

pub use attach::{attached, components, detach_components};
pub use libxdp::freplace_refusal;
pub use pins::{AttachedInterface, ChainProgram, PinDir};
pub use sync::SyncReport;

use offender_table::OffenderTable;

use crate::image::MapImage;

/// The XDP object built by build.rs from the filter-ebpf crate.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/filter-ebpf"));

/// Smallest capacity of each prefix trie. Tries allocate per entry, so a generous limit
/// costs nothing until used and leaves room for live policy growth.
const MIN_PREFIX_CAPACITY: u32 = 65_536;

/// Frames shorter than this never reach XDP (and BPF_PROG_TEST_RUN refuses them).
pub const MIN_FRAME_LEN: usize = 14;

/// Capacity of each prefix trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub sources_v4: u32,
    pub sources_v6: u32,
}

impl Capacity {
    /// Room for the image twice over (a sync briefly holds old and new entries), and at
    /// least `MIN_PREFIX_CAPACITY`.
    pub fn for_image(image: &MapImage) -> Self {
        let size =
            |n: usize| (n.saturating_mul(2).min(u32::MAX as usize) as u32).max(MIN_PREFIX_CAPACITY);
        Capacity {
            sources_v4: size(image.sources_v4.len()),
            sources_v6: size(image.sources_v6.len()),
        }
    }
}

/// The verdict the kernel program gave one frame, read from its return code and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelVerdict {
    pub verdict: Verdict,
    pub reason: Reason,
    pub family: Family,
    /// The frame the program sent back out (XDP_TX), for `Verdict::Reject`.
    pub reply: Option<Vec<u8>>,
}

/// aya's loader of the embedded object. Making one reads and parses the kernel's BTF (a
/// 14 MB peak) for CO-RE relocations, of which this object has none: it is dropped at
/// once, and the agent makes its loader before it reads the policy, so that peak is gone
/// before the policy's memory is taken rather than added to it.
pub struct Loader(EbpfLoader<'static>);

impl Loader {
    pub fn new() -> Self {
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        Loader(loader)
    }
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    /// Interface -> our component's program id, for the dispatcher components this
    /// process attached (libbpf loaded them; aya does not know them).
    components: std::collections::BTreeMap<String, u32>,
}

impl Dataplane {
    /// Loads (does not attach) the filter, its replay entry and the pass-only and
    /// drop-only baselines with fresh maps.
    pub fn load(capacity: Capacity) -> Result<Self> {
        Self::load_object(
            Loader::new(),
            capacity,
            &[
                PROGRAM_FILTER,
                PROGRAM_REPLAY,
                PROGRAM_PASS_BASELINE,
                PROGRAM_DROP_BASELINE,
            ],
        )
    }

    /// Loads the filter (the agent's only program: replay and the benchmarks load their
    /// own, and each program the kernel verifies costs a quarter of a second at start)
    /// with every map pinned under `pins`: maps already pinned there are adopted (their
    /// contents and counters kept), missing ones are created and pinned.
    pub fn load_pinned(loader: Loader, pins: &PinDir, capacity: Capacity) -> Result<Self> {
        let paths: Vec<_> = maps::ALL
            .iter()
            .map(|map| pins.map_path(map.name))
            .collect();
        for (spec, path) in maps::ALL.iter().zip(&paths) {
            if !path.exists() {
                continue;
            }
            let sizes = pinned_sizes(path)?;
            if sizes == (spec.key_size, spec.value_size) {
                continue;
            }
            if !maps::OBSERVATIONS.contains(spec) {
                check_pinned_map(spec, path)?;
            }
            // Only what the kernel observed is lost; the filter left running keeps its
            // own table until the new program replaces it.
            warn!(
                "the pinned map {} has key/value sizes {}/{} from another version, this \
                 build needs {}/{}: its records are dropped and a fresh map is pinned",
                path.display(),
                sizes.0,
                sizes.1,
                spec.key_size,
                spec.value_size
            );
            std::fs::remove_file(path)
                .with_context(|| format!("removing the outdated pin {}", path.display()))?;
        }
        let mut loader = loader;
        for (spec, path) in maps::ALL.iter().zip(&paths) {
            loader.0.map_pin_path(spec.name, path.clone());
        }
        Self::load_object(loader, capacity, &[PROGRAM_FILTER])
    }

    /// Opens the maps an agent pinned under `pins`, to read them while no agent runs:
    /// every map must be pinned already (nothing is created) and no program is loaded.
    pub fn open_pinned(pins: &PinDir) -> Result<Self> {
        let Loader(mut loader) = Loader::new();
        for spec in maps::ALL {
            let path = pins.map_path(spec.name);
            if !path.exists() {
                bail!("{} is not pinned", path.display());
            }
            check_pinned_map(&spec, &path)?;
            loader.map_pin_path(spec.name, path);
        }
        let max = |name: &str| -> Result<u32> {
            let path = pins.map_path(name);
            Ok(MapInfo::from_pin(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .max_entries())
        };
        let ebpf = loader
            .map_max_entries(SOURCES_V4.name, max(SOURCES_V4.name)?)
            .map_max_entries(SOURCES_V6.name, max(SOURCES_V6.name)?)
            .load(OBJECT)
            .context("opening the pinned maps")
            .map_err(explain_permission)?;
        Ok(Dataplane {
            ebpf,
            components: Default::default(),
        })
    }

    fn load_object(
        Loader(mut loader): Loader,
        capacity: Capacity,
        programs: &[&str],
    ) -> Result<Self> {
        let mut ebpf = loader
            .map_max_entries(SOURCES_V4.name, capacity.sources_v4)
            .map_max_entries(SOURCES_V6.name, capacity.sources_v6)
            .load(OBJECT)
            .context("loading the XDP object into the kernel")
            .map_err(explain_permission)?;
        for &name in programs {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel refused program {name}"))
                .map_err(explain_permission)?;
        }
        Ok(Dataplane {
            ebpf,
            components: Default::default(),
        })
    }

    /// Loads the filter with fresh maps sized for `image` and writes the image into them.
    pub fn load_with(image: &MapImage) -> Result<Self> {
        let mut dataplane = Self::load(Capacity::for_image(image))?;
        dataplane.sync(image)?;
        Ok(dataplane)
    }

    /// Capacity of the loaded (possibly adopted) prefix tries.
    pub fn capacity(&self) -> Result<Capacity> {
        let max = |name: &str| -> Result<u32> { Ok(self.map(name)?.info()?.max_entries()) };
        Ok(Capacity {
            sources_v4: max(SOURCES_V4.name)?,
            sources_v6: max(SOURCES_V6.name)?,
        })
    }

    fn map(&self, name: &str) -> Result<&MapData> {
        match self
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))?
        {
            aya::maps::Map::Array(data)
            | aya::maps::Map::PerCpuArray(data)
            | aya::maps::Map::LpmTrie(data)
            | aya::maps::Map::LruHashMap(data)
            | aya::maps::Map::RingBuf(data) => Ok(data),
            _ => bail!("map {name} has an unexpected type"),
        }
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))
    }

    fn config_slot(&self) -> Result<u32> {
        let slot: Array<&MapData, u32> =
            Array::try_from(self.ebpf.map(CONFIG_SLOT.name).context(CONFIG_SLOT.name)?)?;
        Ok(slot.get(&0, 0)? & 1)
    }

    /// The config the program reads now.
    pub fn live_config(&self) -> Result<Config> {
        let slot = self.config_slot()?;
        let configs: Array<&MapData, Config> = Array::try_from(
            self.ebpf
                .map(FILTER_CONFIG.name)
                .context(FILTER_CONFIG.name)?,
        )?;
        Ok(configs.get(&slot, 0)?)
    }

    /// Writes `config` to the idle slot, then makes that slot live: readers see the old
    /// config or the new one, never a mix.
    fn switch_config(&mut self, config: &Config) -> Result<()> {
        let idle = self.config_slot()? ^ 1;
        let mut configs: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(FILTER_CONFIG.name)?)?;
        configs
            .set(idle, config, 0)
            .context("writing the idle config slot")?;
        let mut slot: Array<&mut MapData, u32> = Array::try_from(self.map_mut(CONFIG_SLOT.name)?)?;
        slot.set(0, idle, 0)
            .context("switching the live config slot")?;
        Ok(())
    }

    fn ifindex_slots(&mut self) -> Result<Array<&mut MapData, u32>> {
        Ok(Array::try_from(self.map_mut(IFINDEX_SLOTS.name)?)?)
    }

    fn interface_slots_map(&mut self) -> Result<Array<&mut MapData, InterfaceSlot>> {
        Ok(Array::try_from(self.map_mut(INTERFACE_SLOTS.name)?)?)
    }

    fn group_names(&mut self) -> Result<Array<&mut MapData, GroupName>> {
        Ok(Array::try_from(self.map_mut(GROUP_NAMES.name)?)?)
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// The loaded filter program.
    pub fn filter_program(&self) -> Result<&Xdp> {
        self.program(PROGRAM_FILTER)
    }

    /// Runs `frame` through the filter `repeat` times; returns the XDP action and the
    /// kernel-measured mean duration of one run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let (action, duration, _) = run(self.program(PROGRAM_FILTER)?, frame, repeat)?;
        Ok((action, duration))
    }

    /// The same for the pass-only baseline program.
    pub fn test_run_baseline(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let (action, duration, _) = run(self.program(PROGRAM_PASS_BASELINE)?, frame, repeat)?;
        Ok((action, duration))
    }

    /// The same for the drop-only baseline program.
    pub fn test_run_drop_baseline(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let (action, duration, _) = run(self.program(PROGRAM_DROP_BASELINE)?, frame, repeat)?;
        Ok((action, duration))
    }

    /// Attaches one of the object's programs (the filter or a baseline) to `interface`
    /// without pinning: the link lives as long as this `Dataplane`. For benchmarks.
    pub fn attach_unpinned(
        &mut self,
        program: &str,
        interface: &str,
        mode: AyaXdpMode,
    ) -> Result<()> {
        self.program_mut(program)?
            .attach(interface, mode)
            .with_context(|| format!("attaching {program} to {interface}"))?;
        Ok(())
    }

    /// Judges one frame in the kernel: the verdict from the program's return code, the
    /// reason and family from the (family, reason) counter that moved. Test runs count
    /// under interface slot 0.
    pub fn judge(&self, frame: &[u8]) -> Result<KernelVerdict> {
        let before = self.reason_counters(0)?;
        let (action, _, output) = run(self.program(PROGRAM_FILTER)?, frame, 1)?;
        let after = self.reason_counters(0)?;
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| after[i].packets != before[i].packets)
            .collect();
        let [index] = moved[..] else {
            bail!(
                "expected exactly one counter to move for a frame, saw {}",
                moved.len()
            );
        };
        let family = Family::ALL[index / REASON_COUNT as usize];
        let reason = Reason::ALL[index % REASON_COUNT as usize];
        debug_assert_eq!(reason_counter_index(0, family, reason) as usize, index);
        let (verdict, reply) = match action {
            XDP_DROP => (Verdict::Drop, None),
            XDP_PASS => (Verdict::Pass, None),
            XDP_TX => (Verdict::Reject, Some(output)),
            other => bail!("the filter returned unexpected XDP action {other}"),
        };
        Ok(KernelVerdict {
            verdict,
            reason,
            family,
            reply,
        })
    }

    /// Judges one frame through the replay entry point: one test run a frame, the
    /// decision read from its report, no counter read. Counters, relay buckets, offender
    /// records and replies move exactly as under the production entry (same code, same
    /// maps).
    ///
    /// `output` is the run's output buffer, reused from frame to frame (a reply is read
    /// from it).
    pub fn judge_replay<'o>(&self, frame: &[u8], output: &'o mut Vec<u8>) -> Result<Judgement<'o>> {
        if frame.len() < MIN_FRAME_LEN || frame.len() > MAX_TEST_FRAME_LEN {
            bail!(
                "a {}-byte frame is outside what XDP test runs take \
                 ({MIN_FRAME_LEN}..={MAX_TEST_FRAME_LEN})",
                frame.len()
            );
        }
        output.resize(MAX_OUTPUT, 0);
        let result = self
            .program(PROGRAM_REPLAY)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(output),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN failed")?;
        let output = &output[..(result.data_size_out as usize).min(MAX_OUTPUT)];
        let report = ReplayReport::from_bytes(output)
            .context("the replay program left no report in the metadata area")?;
        let decoded = (
            Reason::try_from(u32::from(report.reason)),
            Family::try_from(u32::from(report.family)),
        );
        let (Ok(reason), Ok(family)) = decoded else {
            bail!("the replay program reported an unknown reason or family: {report:?}");
        };
        let after_report = &output[size_of::<ReplayReport>()..];
        let (verdict, reply) = match result.return_value {
            XDP_DROP => (Verdict::Drop, None),
            XDP_PASS => (Verdict::Pass, None),
            XDP_TX => (Verdict::Reject, Some(after_report)),
            other => bail!("the filter returned unexpected XDP action {other}"),
        };
        Ok(Judgement {
            verdict,
            reason,
            family,
            group: report.group,
            reply,
        })
    }

    /// What the program did besides passing and dropping, summed over CPUs, indexed by
    /// `ActionStat as usize`.
    pub fn action_stats(&self) -> Result<[u64; ActionStat::ALL.len()]> {
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(ACTION_STATS.name)
                .context(ACTION_STATS.name)?,
        )?;
        let mut totals = [0u64; ActionStat::ALL.len()];
        for stat in ActionStat::ALL {
            debug_assert!((stat as u32) < ACTION_STATS_ENTRIES);
            totals[stat as usize] = array.get(&(stat as u32), 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// Every offender record the kernel holds (a set-associative table: a new source
    /// takes the way of its set seen least recently).
    pub fn offenders(&self) -> Result<Vec<(SourceKey, Offender)>> {
        Ok(self.offender_table()?.records())
    }

    fn offender_table(&self) -> Result<OffenderTable> {
        OffenderTable::of(self.ebpf.map(OFFENDERS.name).context(OFFENDERS.name)?)
    }

    /// Every record of the pinned OFFENDERS map at `path`, as [`Dataplane::offenders`],
    /// through a mapping of its own, so a caller need not hold the `Dataplane`.
    pub fn read_pinned_offenders(path: &Path) -> Result<Vec<(SourceKey, Offender)>> {
        Ok(OffenderTable::pinned(path)?.records())
    }

    /// How many records the pinned OFFENDERS map at `path` holds.
    pub fn count_pinned_offenders(path: &Path) -> Result<usize> {
        Ok(OffenderTable::pinned(path)?.count())
    }

    /// Every record of the pinned RECENT_SOURCES map at `path` (sources seen asking to
    /// connect to a filtered port), through a handle of its own.
    pub fn read_pinned_recent_sources(path: &Path) -> Result<Vec<(SourceKey, RecentSource)>> {
        let data =
            MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        let map: HashMap<MapData, SourceKey, RecentSource> =
            HashMap::try_from(aya::maps::Map::from_map_data(data)?)?;
        Ok(map.iter().filter_map(|entry| entry.ok()).collect())
    }

    /// One source's offender record, if the kernel holds one.
    pub fn offender(&self, key: &SourceKey) -> Result<Option<Offender>> {
        Ok(self.offender_table()?.get(key))
    }

    /// Takes the events ring buffer for reading (sampled drops, offender alerts); `None`
    /// once taken.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        let map = self.ebpf.take_map(EVENTS.name)?;
        RingBuf::try_from(map).ok()
    }

    /// One interface slot's (family, reason) counters summed over CPUs, indexed by
    /// `reason_counter_index(0, family, reason)`.
    pub fn reason_counters(&self, slot: u32) -> Result<Vec<Counter>> {
        let per_slot = FAMILY_COUNT * REASON_COUNT;
        self.summed_counters(REASON_STATS.name, slot * per_slot..(slot + 1) * per_slot)
    }

    /// One group's counters summed over CPUs, indexed by reason.
    pub fn group_counters(&self, group: u32) -> Result<Vec<Counter>> {
        self.summed_counters(
            GROUP_STATS.name,
            group * REASON_COUNT..(group + 1) * REASON_COUNT,
        )
    }

    fn summed_counters(&self, name: &str, range: std::ops::Range<u32>) -> Result<Vec<Counter>> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))?;
        let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
        range
            .map(|index| {
                let per_cpu = array.get(&index, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                }))
            })
            .collect()
    }

    /// Zeroes a group's counters, so an id handed to a new group starts from nothing.
    fn reset_group_counters(&mut self, group: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut array: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(self.map_mut(GROUP_STATS.name)?)?;
        for reason in Reason::ALL {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
            array.set(filter_common::group_counter_index(group, reason), zeros, 0)?;
        }
        Ok(())
    }
}

/// A name as the fixed, NUL-padded byte array the bookkeeping maps store.
fn fixed_name<const N: usize>(kind: &str, name: &str) -> Result<[u8; N]> {
    if name.len() > N {
        bail!("{kind} name {name:?} is longer than {N} bytes");
    }
    let mut bytes = [0u8; N];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(bytes)
}

/// The name stored by `fixed_name`.
fn read_fixed_name(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// A pinned map adopted by a new agent must have the layout this build expects; one
/// left by another version is refused rather than misread.
fn check_pinned_map(spec: &MapSpec, path: &Path) -> Result<()> {
    let (key, value) = pinned_sizes(path)?;
    if (key, value) != (spec.key_size, spec.value_size) {
        bail!(
            "the pinned map {} has key/value sizes {key}/{value}, this build needs {}/{}: \
             it was left by another version; run `filter-agent detach` first",
            path.display(),
            spec.key_size,
            spec.value_size
        );
    }
    Ok(())
}

/// The key and value sizes of the map pinned at `path`.
fn pinned_sizes(path: &Path) -> Result<(usize, usize)> {
    let info = MapInfo::from_pin(path)
        .with_context(|| format!("reading the pinned map {}", path.display()))?;
    Ok((info.key_size() as usize, info.value_size() as usize))
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Room for what the program writes back: at most the frame itself (replies only shrink).
const MAX_OUTPUT: usize = 4096;

/// Runs `frame` through `program`; returns the action, the mean duration of one run and
/// the frame as the program left it.
fn run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration, Vec<u8>)> {
    if frame.len() < MIN_FRAME_LEN {
        bail!(
            "a {}-byte frame is shorter than an Ethernet header; XDP never sees it",
            frame.len()
        );
    }
    let mut output = vec![0u8; MAX_OUTPUT.max(frame.len())];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN failed")?;
    output.truncate(result.data_size_out as usize);
    Ok((result.return_value, result.duration, output))
}

/// The kernel's decision on one frame, as the replay entry reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement<'o> {
    pub verdict: Verdict,
    pub reason: Reason,
    pub family: Family,
    /// Group whose prefix matched the source; 0 when none.
    pub group: u32,
    /// The frame sent back (XDP_TX), for `Verdict::Reject`.
    pub reply: Option<&'o [u8]>,
}

/// The largest frame BPF_PROG_TEST_RUN accepts for a non-multi-buffer XDP program
/// (a page less headroom and shared info). Longer frames are judged on this prefix:
/// the decision reads only headers.
pub const MAX_TEST_FRAME_LEN: usize = 3520;

/// What the agent needs (packaging/filter-agent.service grants the same), as bits of
/// /proc's CapEff. CAP_BPF and CAP_PERFMON are not enough: libxdp opens programs by id.
const NEEDED_CAPABILITIES: [(u32, &str); 2] = [(21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN")];

const PERMISSION_ADVICE: &str = "permission denied";

/// Turns the kernel's EPERM (and the verifier's EACCES) into advice when this process
/// lacks a capability the agent needs; other refusals (a file's mode, a socket's group)
/// are left as they are. Once per error, wherever it is applied.
pub fn explain_permission(err: anyhow::Error) -> anyhow::Error {
    let denied = err.chain().any(|cause| {
        let text = cause.to_string();
        text.contains("Operation not permitted") || text.contains("Permission denied")
    });
    let explained = err
        .chain()
        .any(|cause| cause.to_string().starts_with(PERMISSION_ADVICE));
    let missing = missing_capabilities();
    if !denied || explained || missing.is_empty() {
        return err;
    }
    err.context(format!(
        "{PERMISSION_ADVICE}: this process lacks {}; filter-agent needs root, or \
         CAP_SYS_ADMIN and CAP_NET_ADMIN (as its systemd unit grants; CAP_BPF and \
         CAP_PERFMON alone are refused); run this command with sudo",
        missing.join(" and ")
    ))
}

/// The needed capabilities this process does not have in its effective set.
fn missing_capabilities() -> Vec<&'static str> {
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0);
    NEEDED_CAPABILITIES
        .iter()
        .filter(|&&(bit, _)| effective & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}
