//! The replay entry's report: the decision, written into the XDP metadata area in front
//! of the frame, where BPF_PROG_TEST_RUN's output begins. One test run then tells
//! userspace everything, without reading any counter.

use aya_ebpf::{helpers::bpf_xdp_adjust_meta, programs::XdpContext};
use filter_common::{REPLAY_REPORT_MAGIC, ReplayReport};

use crate::decision::Decision;

const REPORT_LEN: usize = core::mem::size_of::<ReplayReport>();

/// Reports `decision` and returns `action` unchanged. Without room for the report the
/// output carries none, which userspace refuses rather than misreads.
#[inline(always)]
pub fn reported(ctx: &XdpContext, decision: &Decision, action: u32) -> u32 {
    // SAFETY: the helper only moves the program's own metadata pointer.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(REPORT_LEN as i32)) } != 0 {
        return action;
    }
    let meta = ctx.metadata();
    if meta + REPORT_LEN > ctx.data() {
        return action;
    }
    // SAFETY: bounds checked against data just above; data_meta is 4-byte aligned (the
    // kernel allows only multiples of 4 below an aligned data pointer).
    unsafe {
        (meta as *mut ReplayReport).write(ReplayReport {
            magic: REPLAY_REPORT_MAGIC,
            verdict: decision.verdict as u8,
            reason: decision.reason as u8,
            family: decision.family as u8,
            padding: 0,
            group: decision.group,
        });
    }
    action
}
