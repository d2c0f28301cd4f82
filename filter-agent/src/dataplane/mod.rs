//! The kernel side as userspace sees it: load the embedded XDP object with maps sized for
//! a policy, write a `MapImage` into its maps, run frames through it with
//! BPF_PROG_TEST_RUN and read its counters.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp},
};
use filter_common::{
    Config, Counter, Family, MAP_CONFIG, MAP_GROUP_STATS, MAP_REASON_STATS, MAP_SOURCES_V4,
    MAP_SOURCES_V6, PROGRAM_FILTER, PROGRAM_PASS_BASELINE, REASON_COUNT, REASON_STATS_ENTRIES,
    Reason, SourceRule, reason_counter_index,
};

use crate::image::MapImage;

/// The XDP object built by build.rs from the filter-ebpf crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/filter-ebpf"));

/// Smallest capacity of each prefix trie. Tries allocate per entry, so a generous limit
/// costs nothing until used and leaves room for live policy growth.
const MIN_PREFIX_CAPACITY: u32 = 65_536;

/// Frames shorter than this never reach XDP (and BPF_PROG_TEST_RUN refuses them).
pub const MIN_FRAME_LEN: usize = 14;

/// Capacity of each prefix trie, sized so the image fits twice over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub sources_v4: u32,
    pub sources_v6: u32,
}

impl Capacity {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVerdict {
    pub drop: bool,
    pub reason: Reason,
    pub family: Family,
}

pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads (does not attach) the filter and the pass-only baseline program.
    pub fn load(capacity: Capacity) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_SOURCES_V4, capacity.sources_v4)
            .map_max_entries(MAP_SOURCES_V6, capacity.sources_v6)
            .load(OBJECT)
            .context("loading the XDP object into the kernel")
            .map_err(explain_permission)?;
        for name in [PROGRAM_FILTER, PROGRAM_PASS_BASELINE] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel refused program {name}"))
                .map_err(explain_permission)?;
        }
        Ok(Dataplane { ebpf })
    }

    /// Loads the filter with maps sized for `image` and writes the image into them.
    pub fn load_with(image: &MapImage) -> Result<Self> {
        let mut dataplane = Self::load(Capacity::for_image(image))?;
        dataplane.write_image(image)?;
        Ok(dataplane)
    }

    /// Writes every entry of `image` into the (fresh) maps.
    pub fn write_image(&mut self, image: &MapImage) -> Result<()> {
        self.write_config(&image.config)?;
        let mut sources_v4 = self.lpm::<[u8; 4], SourceRule>(MAP_SOURCES_V4)?;
        for (prefix, rule) in &image.sources_v4 {
            sources_v4
                .insert(
                    &Key::new(prefix.prefix_len().into(), prefix.addr().octets()),
                    rule,
                    0,
                )
                .with_context(|| format!("inserting source prefix {prefix}"))?;
        }
        let mut sources_v6 = self.lpm::<[u8; 16], SourceRule>(MAP_SOURCES_V6)?;
        for (prefix, rule) in &image.sources_v6 {
            sources_v6
                .insert(
                    &Key::new(prefix.prefix_len().into(), prefix.addr().octets()),
                    rule,
                    0,
                )
                .with_context(|| format!("inserting source prefix {prefix}"))?;
        }
        Ok(())
    }

    fn write_config(&mut self, config: &Config) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_CONFIG)
            .context("map FILTER_CONFIG missing")?;
        let mut array: Array<&mut MapData, Config> = Array::try_from(map)?;
        array
            .set(0, config, 0)
            .context("writing the filter config")?;
        Ok(())
    }

    fn lpm<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> Result<LpmTrie<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))?;
        Ok(LpmTrie::try_from(map)?)
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// The loaded filter program (to attach it, or read its info).
    pub fn filter_program(&self) -> Result<&Xdp> {
        self.program(PROGRAM_FILTER)
    }

    /// Runs `frame` through the filter `repeat` times; returns the XDP action and the
    /// kernel-measured mean duration of one run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        run(self.program(PROGRAM_FILTER)?, frame, repeat)
    }

    /// The same for the pass-only baseline program.
    pub fn test_run_baseline(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        run(self.program(PROGRAM_PASS_BASELINE)?, frame, repeat)
    }

    /// Judges one frame in the kernel: the verdict from the program's return code, the
    /// reason and family from the (family, reason) counter that moved.
    pub fn judge(&self, frame: &[u8]) -> Result<KernelVerdict> {
        let before = self.reason_counters()?;
        let (action, _) = self.test_run(frame, 1)?;
        let after = self.reason_counters()?;
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
        debug_assert_eq!(reason_counter_index(family, reason) as usize, index);
        let drop = match action {
            XDP_DROP => true,
            XDP_PASS => false,
            other => bail!("the filter returned unexpected XDP action {other}"),
        };
        Ok(KernelVerdict {
            drop,
            reason,
            family,
        })
    }

    /// (family, reason) counters summed over CPUs, indexed by `reason_counter_index`.
    pub fn reason_counters(&self) -> Result<Vec<Counter>> {
        self.summed_counters(MAP_REASON_STATS, REASON_STATS_ENTRIES)
    }

    /// Per-group counters summed over CPUs, indexed by `group_counter_index`.
    pub fn group_counters(&self, groups: u32) -> Result<Vec<Counter>> {
        self.summed_counters(MAP_GROUP_STATS, (groups + 1) * REASON_COUNT)
    }

    fn summed_counters(&self, name: &str, entries: u32) -> Result<Vec<Counter>> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))?;
        let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
        (0..entries)
            .map(|index| {
                let per_cpu = array.get(&index, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                }))
            })
            .collect()
    }
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    if frame.len() < MIN_FRAME_LEN {
        bail!(
            "a {}-byte frame is shorter than an Ethernet header; XDP never sees it",
            frame.len()
        );
    }
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN failed")?;
    Ok((result.return_value, result.duration))
}

/// Turns the kernel's EPERM into advice: loading BPF programs needs root (or CAP_BPF,
/// CAP_NET_ADMIN and CAP_PERFMON).
fn explain_permission(err: anyhow::Error) -> anyhow::Error {
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(1))
            || cause.to_string().contains("Operation not permitted")
    });
    if denied {
        err.context(
            "permission denied: loading the XDP program needs root (or CAP_BPF, CAP_NET_ADMIN \
             and CAP_PERFMON); run this command with sudo",
        )
    } else {
        err
    }
}
