//! The XDP program: parse -> classify -> decide -> count. See docs/semantics.md.
#![no_std]
#![no_main]

mod decide;
mod maps;
mod observe;
mod parse;
mod reply;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use decide::{Decision, Judged};
use filter_common::{ActionStat, VERDICT_PASS, VERDICT_REJECT};
use parse::Cursor;

#[xdp]
pub fn smtp_filter(ctx: XdpContext) -> u32 {
    match decide::judge(&ctx) {
        Judged::Passed(decision) => {
            count(&ctx, &decision);
            XDP_PASS
        }
        // The verifier would walk the code from here on once for every parse path that
        // reaches it (each VLAN/PPPoE/extension-header combination has its own offsets).
        // Passing the decision through a map makes those paths one state.
        Judged::NeedsSource(decision) => match maps::stash(decision) {
            Some(stored) => finish(&ctx, stored),
            None => XDP_DROP,
        },
    }
}

const OFFSET_MASK: usize = 0xfff;

/// Decides a frame by its source, counts and records it, and carries out its verdict.
#[inline(never)]
fn finish(ctx: &XdpContext, decision: &mut Decision) -> u32 {
    // Read back from the map, the offsets are unknown to the verifier: masking bounds
    // them (they are below a page anyway) so offset arithmetic stays provably in range.
    decision.pppoe &= OFFSET_MASK;
    decision.l3 &= OFFSET_MASK;
    decision.l4 &= OFFSET_MASK;
    let config = maps::config();
    decide::decide_source(&Cursor::new(ctx), config, decision);
    // Counted before a reply rewrites the frame, so as it arrived.
    count(ctx, decision);
    if !decision.noteworthy() {
        return XDP_PASS;
    }
    // Before a reply overwrites the frame: records read the original headers.
    if let Some(config) = config {
        observe::observe(ctx, config, decision);
    }
    match decision.verdict {
        VERDICT_PASS => XDP_PASS,
        VERDICT_REJECT if reply::rewrite(ctx, decision) => {
            maps::count_action(ActionStat::ResetsSent);
            XDP_TX
        }
        _ => XDP_DROP,
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, decision: &Decision) {
    let slot = maps::interface_slot(ctx.ingress_ifindex() as u32);
    maps::count(decision, slot, (ctx.data_end() - ctx.data()) as u64);
}

/// The benchmark baseline: the cost of running any XDP program at all.
#[xdp]
pub fn pass_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The floor of any drop path: an XDP program that drops everything.
#[xdp]
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
