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
    /// 0 or 1: every frame is the template. More: frame n takes the addresses of flow
    /// n modulo `flows` from `BENCH_FLOWS`, so the router sees many customers.
    pub flows: u32,
    /// The frame, exactly `FRAME_LEN` bytes.
    pub frame: [u64; FRAME_WORDS],
}

/// One flow's fields of an Ethernet + IPv4 + TCP frame, checksums computed by the
/// benchmark, so the sender only copies bytes.
#[repr(C)]
pub struct Flow {
    /// IPv4 source and destination (frame bytes 26..34).
    pub addresses: [u8; 8],
    /// IPv4 header checksum (bytes 24..26).
    pub ip_check: [u8; 2],
    /// TCP checksum (bytes 50..52).
    pub tcp_check: [u8; 2],
}

const IP_CHECK_AT: usize = 24;
const ADDRESSES_AT: usize = 26;
const TCP_CHECK_AT: usize = 50;

/// The most flows one run cycles through.
const MAX_FLOWS: u32 = 65_536;

#[map(name = "BENCH_SENDER")]
static BENCH_SENDER: Array<SenderConfig> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_FLOWS")]
static BENCH_FLOWS: Array<Flow> = Array::with_max_entries(MAX_FLOWS, 0);

/// The next flow, per CPU (the sender runs on one).
#[map(name = "BENCH_NEXT_FLOW")]
static BENCH_NEXT_FLOW: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

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
    if config.flows > 1 {
        let Some(next) = BENCH_NEXT_FLOW.get_ptr_mut(0) else {
            return XDP_ABORTED;
        };
        // SAFETY: this CPU's slot of a per-CPU array.
        let index = unsafe { *next };
        let following = index + 1;
        // SAFETY: as above.
        unsafe {
            *next = if following >= config.flows {
                0
            } else {
                following
            }
        };
        let Some(flow) = BENCH_FLOWS.get(index) else {
            return XDP_ABORTED;
        };
        let bytes = data as *mut u8;
        // SAFETY: every offset plus its length is below FRAME_LEN, checked above.
        unsafe {
            (bytes.add(IP_CHECK_AT) as *mut [u8; 2]).write_unaligned(flow.ip_check);
            (bytes.add(ADDRESSES_AT) as *mut [u8; 8]).write_unaligned(flow.addresses);
            (bytes.add(TCP_CHECK_AT) as *mut [u8; 2]).write_unaligned(flow.tcp_check);
        }
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
