//! The kernel's offender table (`OFFENDERS`, an array of [`OffenderSet`]) as userspace
//! reads it: mapped read-only into this process, so listing all 65,536 records is a
//! memory scan rather than a system call per entry.

use std::{num::NonZeroUsize, os::fd::AsFd, path::Path, ptr::NonNull};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};
use filter_common::{OFFENDER_SETS, Offender, OffenderSet, SourceKey};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// A read-only mapping of the offender table.
pub struct OffenderTable {
    sets: NonNull<OffenderSet>,
}

/// The kernel lays array values out every `value_size` rounded up to 8 bytes.
const _: () = assert!(size_of::<OffenderSet>().is_multiple_of(8));
const TABLE_BYTES: usize = OFFENDER_SETS as usize * size_of::<OffenderSet>();

impl OffenderTable {
    /// Maps the table of a loaded filter.
    pub fn of(map: &Map) -> Result<OffenderTable> {
        let Map::Array(data) = map else {
            bail!("the OFFENDERS map is not an array: it was left by another version");
        };
        Self::map(data)
    }

    /// Maps the pinned table at `path`.
    pub fn pinned(path: &Path) -> Result<OffenderTable> {
        let data =
            MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        Self::map(&data)
    }

    fn map(data: &MapData) -> Result<OffenderTable> {
        let length = NonZeroUsize::new(TABLE_BYTES).expect("the table has sets");
        // SAFETY: a fresh shared read-only mapping of the whole array, which the kernel
        // keeps alive while mapped (the fd may close); unmapped on drop.
        let base = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                data.fd().as_fd(),
                0,
            )
        }
        .context("mapping the OFFENDERS table (BPF_F_MMAPABLE) into memory")?;
        Ok(OffenderTable { sets: base.cast() })
    }

    /// A copy of set `index`, read as the kernel may be writing it (a record caught
    /// mid-update can be off by the update in progress).
    fn set(&self, index: u32) -> OffenderSet {
        assert!(index < OFFENDER_SETS);
        // SAFETY: in the mapping; volatile, as the kernel writes it concurrently.
        unsafe { self.sets.add(index as usize).read_volatile() }
    }

    /// Every record the table holds, in set order.
    pub fn records(&self) -> Vec<(SourceKey, Offender)> {
        (0..OFFENDER_SETS)
            .flat_map(|index| self.set(index).ways)
            .filter(|slot| slot.record.attempts != 0)
            .map(|slot| (slot.key, slot.record))
            .collect()
    }

    /// How many records the table holds.
    pub fn count(&self) -> usize {
        (0..OFFENDER_SETS)
            .flat_map(|index| self.set(index).ways)
            .filter(|slot| slot.record.attempts != 0)
            .count()
    }

    /// `key`'s record, if the table holds one.
    pub fn get(&self, key: &SourceKey) -> Option<Offender> {
        self.set(OffenderSet::index(key, OFFENDER_SETS))
            .ways
            .into_iter()
            .find(|slot| slot.record.attempts != 0 && slot.key.is(key))
            .map(|slot| slot.record)
    }
}

impl Drop for OffenderTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        let _ = unsafe { munmap(self.sets.cast(), TABLE_BYTES) };
    }
}

// SAFETY: a read-only mapping; every read copies out.
unsafe impl Send for OffenderTable {}
