//! Carrying out a decision: count the frame, record it when it is noteworthy, and return
//! its XDP action (answering a rejected SYN in place first).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_xdp_get_buff_len,
    programs::XdpContext,
};
use filter_common::{ActionStat, Verdict};

use crate::{cursor::Cursor, decide, decision::Decision, maps, observe, reply};

const OFFSET_MASK: usize = 0xfff;

/// Decides a frame by its source, counts and records it, and carries out its verdict.
#[inline(never)]
pub fn finish(ctx: &XdpContext, decision: &mut Decision) -> u32 {
    // Read back from the map, the offsets are unknown to the verifier: masking bounds
    // them (they are below a page anyway) so offset arithmetic stays provably in range.
    decision.pppoe &= OFFSET_MASK;
    decision.l3 &= OFFSET_MASK;
    decision.l4 &= OFFSET_MASK;
    let config = maps::config();
    let cur = Cursor::new(ctx);
    decide::decide_source(&cur, config, decision);
    observe::remember_source(&cur, decision);
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
        Verdict::Pass => XDP_PASS,
        Verdict::Reject if reply::rewrite(ctx, decision) => {
            maps::count_action(ActionStat::ResetsSent);
            XDP_TX
        }
        _ => XDP_DROP,
    }
}

#[inline(always)]
pub fn count(ctx: &XdpContext, decision: &Decision) {
    let slot = maps::interface_slot(ctx.ingress_ifindex() as u32);
    maps::count(decision, slot, frame_len(ctx));
}

/// The frame's length over all its buffers (a multi-buffer frame's first buffer holds only
/// part of it).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    // SAFETY: a helper that only reads the XDP buffer's lengths.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) }
}
