//! Many entries of one map in one system call: BPF_MAP_UPDATE_BATCH, _DELETE_BATCH and
//! _LOOKUP_BATCH through libbpf (aya 0.14 has none). At a million prefixes one call per
//! entry costs about a second in system-call overhead alone.
//!
//! The kernel applies an update or delete batch element by element in array order, each
//! visible to the program as soon as it is written (`generic_map_update_batch` calls the
//! map's own update for each), exactly as the same calls made one by one: the hole-free
//! order of a sync plan holds inside and across batches.

use std::{
    ffi::{c_int, c_void},
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Pod, maps::MapData};

/// Entries per system call: large enough that the call's own cost vanishes, small enough
/// that the key and value buffers stay small.
pub const BATCH: usize = 8192;

unsafe extern "C" {
    // libbpf's bpf.h; `opts` may be NULL (no flags).
    fn bpf_map_update_batch(
        fd: c_int,
        keys: *const c_void,
        values: *const c_void,
        count: *mut u32,
        opts: *const c_void,
    ) -> c_int;
    fn bpf_map_delete_batch(
        fd: c_int,
        keys: *const c_void,
        count: *mut u32,
        opts: *const c_void,
    ) -> c_int;
    fn bpf_map_lookup_batch(
        fd: c_int,
        in_batch: *mut c_void,
        out_batch: *mut c_void,
        keys: *mut c_void,
        values: *mut c_void,
        count: *mut u32,
        opts: *const c_void,
    ) -> c_int;
}

/// A batch that stopped early: how many of its elements were applied, and why it stopped.
#[derive(Debug)]
pub struct Partial {
    pub done: usize,
    pub error: io::Error,
}

/// The map's key and value sizes must be those of `K` and `V`, or the kernel would read
/// past the buffers.
fn check_sizes<K, V>(map: &MapData) -> Result<(), Partial> {
    let info = map.info().map_err(|e| Partial {
        done: 0,
        error: io::Error::other(e),
    })?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(Partial {
            done: 0,
            error: io::Error::other(format!(
                "the map's key/value sizes are {}/{}, the batch's {}/{}",
                info.key_size(),
                info.value_size(),
                size_of::<K>(),
                size_of::<V>()
            )),
        });
    }
    Ok(())
}

fn outcome(ret: c_int, done: u32) -> Result<(), Partial> {
    if ret == 0 {
        Ok(())
    } else {
        Err(Partial {
            done: done as usize,
            error: io::Error::from_raw_os_error(-ret),
        })
    }
}

/// Writes `values[i]` under `keys[i]`, in order.
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), Partial> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    check_sizes::<K, V>(map)?;
    let mut count = u32::try_from(keys.len()).expect("batches are small");
    // SAFETY: `keys` and `values` hold `count` elements each of the map's key and value
    // sizes (checked above); the kernel only reads them, and writes `count`.
    let ret = unsafe {
        bpf_map_update_batch(
            map.fd().as_fd().as_raw_fd(),
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            &mut count,
            std::ptr::null(),
        )
    };
    outcome(ret, count)
}

/// Deletes `keys`, in order.
pub fn delete<K: Pod, V>(map: &MapData, keys: &[K]) -> Result<(), Partial> {
    check_sizes::<K, V>(map)?;
    let mut count = u32::try_from(keys.len()).expect("batches are small");
    // SAFETY: `keys` holds `count` elements of the map's key size (checked above); the
    // kernel only reads them, and writes `count`.
    let ret = unsafe {
        bpf_map_delete_batch(
            map.fd().as_fd().as_raw_fd(),
            keys.as_ptr().cast(),
            &mut count,
            std::ptr::null(),
        )
    };
    outcome(ret, count)
}

/// Every entry of the map, [`BATCH`] per call.
pub fn read_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    check_sizes::<K, V>(map).map_err(|p| p.error)?;
    let mut entries = Vec::new();
    let mut keys: Vec<K> = Vec::with_capacity(BATCH);
    let mut values: Vec<V> = Vec::with_capacity(BATCH);
    // Where the kernel resumes: the key it returned last (a trie's next-key cursor).
    let mut cursor = std::mem::MaybeUninit::<K>::uninit();
    let mut first = true;
    loop {
        let mut count = BATCH as u32;
        // SAFETY: `keys` and `values` have room for `count` elements of the map's key and
        // value sizes (checked above), `cursor` for one key; the kernel writes at most
        // that. `in_batch` is NULL on the first call, then the cursor the last call left.
        let ret = unsafe {
            bpf_map_lookup_batch(
                map.fd().as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    cursor.as_mut_ptr().cast()
                },
                cursor.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                std::ptr::null(),
            )
        };
        let end = ret == -libc::ENOENT;
        if ret != 0 && !end {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        let read = (count as usize).min(BATCH);
        // SAFETY: the kernel wrote `count` keys and values.
        unsafe {
            keys.set_len(read);
            values.set_len(read);
        }
        entries.extend(keys.drain(..).zip(values.drain(..)));
        if end {
            return Ok(entries);
        }
        first = false;
    }
}
