//! The XDP programs: the filter (parse -> classify -> decide -> count, see
//! docs/semantics.md) and the two benchmark baselines.
//!
//! Every entry is frags-aware (`xdp.frags`, BPF_F_XDP_HAS_FRAGS), so it attaches in native
//! mode to ports with jumbo frames, whose frames arrive in several buffers. Only the first
//! buffer is read directly (`Cursor` checks every read against its end); the headers a
//! verdict needs are always in it, and a first buffer that ends early is judged as a
//! truncated frame, as docs/semantics.md says. Lengths count every buffer.
#![no_std]
#![no_main]

mod act;
mod cursor;
mod decide;
mod decision;
mod headers;
mod limit;
mod maps;
mod observe;
mod parse;
mod replay;
mod reply;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use decision::Judged;

#[xdp(frags)]
pub fn smtp_filter(ctx: XdpContext) -> u32 {
    match decide::judge(&ctx) {
        Judged::Passed(decision) => {
            act::count(&ctx, &decision);
            XDP_PASS
        }
        // The verifier would walk the code from here on once for every parse path that
        // reaches it (each VLAN/PPPoE/extension-header combination has its own offsets).
        // Passing the decision through a map makes those paths one state.
        Judged::NeedsSource(decision) => match maps::stash(decision) {
            Some(stored) => act::finish(&ctx, stored),
            None => XDP_DROP,
        },
    }
}

/// The filter as `filter-agent replay` runs it through BPF_PROG_TEST_RUN (never
/// attached): the same decision, counters, records and replies as `smtp_filter`, the
/// decision also reported in the metadata area (see `replay`). A separate entry, so the
/// production path pays nothing for it.
#[xdp(frags)]
pub fn smtp_filter_replay(ctx: XdpContext) -> u32 {
    match decide::judge(&ctx) {
        Judged::Passed(decision) => {
            act::count(&ctx, &decision);
            replay::reported(&ctx, &decision, XDP_PASS)
        }
        Judged::NeedsSource(decision) => match maps::stash(decision) {
            Some(stored) => {
                let action = act::finish(&ctx, stored);
                replay::reported(&ctx, stored, action)
            }
            None => XDP_DROP,
        },
    }
}

/// The benchmark baseline: the cost of running any XDP program at all.
#[xdp(frags)]
pub fn pass_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The floor of any drop path: an XDP program that drops everything.
#[xdp(frags)]
pub fn drop_baseline(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

// Only the BPF build needs it; a host `cargo clippy --workspace` links std's.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
