//! The XDP program: parse -> classify -> decide -> count. See docs/semantics.md.
#![no_std]
#![no_main]

mod decide;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn smtp_filter(ctx: XdpContext) -> u32 {
    let decision = decide::judge(&ctx);
    let slot = maps::interface_slot(ctx.ingress_ifindex() as u32);
    maps::count(&decision, slot, (ctx.data_end() - ctx.data()) as u64);
    if decision.drop { XDP_DROP } else { XDP_PASS }
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
