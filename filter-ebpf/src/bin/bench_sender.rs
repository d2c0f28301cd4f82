//! Traffic generator and sink for `cargo xtask bench-live` (filter-agent/benches/live.rs);
//! not part of the filter.
//!
//! `bench_sender` is run by BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES in the
//! customers namespace: every frame it returns XDP_REDIRECT for is transmitted out of the
//! customers' veth, so the router's veth receives xdp_frames in its NAPI ring as a driver
//! would hand them over. The kernel recycles live-frame pages with whatever the receiver
//! wrote into them (a forwarding router rewrites MACs and TTL), so the program writes the
//! whole header template back into every frame before redirecting it.
//!
//! `bench_sink` sits on the internet namespace's veth and counts and drops what the router
//! forwarded, so forwarded packets cost the internet side nothing but this.
#![no_std]
// A host build (`cargo build --workspace`) gets an empty `main` so that it links.
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP},
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Bytes of the frame rewritten from the template on every send: the whole frame.
const FRAME_WORDS: usize = 8;
const FRAME_LEN: usize = FRAME_WORDS * 8;

/// Written by the benchmark before it sends: where to send, and the frame.
#[repr(C)]
pub struct SenderConfig {
    /// The customers' veth, in the namespace the test run is made from.
    pub ifindex: u32,
    pub padding: u32,
    /// The frame, exactly `FRAME_LEN` bytes.
    pub frame: [u64; FRAME_WORDS],
}

#[map(name = "BENCH_SENDER")]
static BENCH_SENDER: Array<SenderConfig> = Array::with_max_entries(1, 0);

/// Packets the sink saw (per CPU; index 0).
#[map(name = "BENCH_SINK")]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_sender(ctx: XdpContext) -> u32 {
    let Some(config) = BENCH_SENDER.get(0) else {
        return XDP_ABORTED;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + FRAME_LEN > end {
        return XDP_ABORTED;
    }
    let words = data as *mut u64;
    for (i, word) in config.frame.iter().enumerate() {
        // SAFETY: bounds checked above (i < FRAME_WORDS); live-frame data is 8-aligned
        // (XDP_PACKET_HEADROOM), and unaligned writes are used anyway.
        unsafe { words.add(i).write_unaligned(*word) };
    }
    // SAFETY: a helper call; it only records the target for the XDP_REDIRECT below.
    unsafe { bpf_redirect(config.ifindex, 0) as u32 }
}

#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *count += 1 };
    }
    XDP_DROP
}

// A host build (`cargo clippy --workspace`) takes std's panic handler instead.
#[cfg(not(target_arch = "bpf"))]
extern crate std;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
