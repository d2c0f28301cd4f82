//! Bounds-checked access to the packet: every read is checked against `data_end`.

use aya_ebpf::programs::XdpContext;

use crate::headers::TcpPorts;

/// Linear XDP data never exceeds a page; larger offsets are truncation by definition.
/// The explicit bound keeps every offset range known to the verifier.
const MAX_OFFSET: usize = 4096;

pub struct Cursor<'a> {
    ctx: &'a XdpContext,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Cursor { ctx }
    }

    /// True when `len` bytes starting at `offset` lie inside the frame.
    #[inline(always)]
    pub fn has(&self, offset: usize, len: usize) -> bool {
        offset <= MAX_OFFSET && self.ctx.data() + offset + len <= self.ctx.data_end()
    }

    /// The header of type `T` at `offset`, if all of it is inside the frame.
    #[inline(always)]
    pub fn header<T>(&self, offset: usize) -> Option<&T> {
        if !self.has(offset, core::mem::size_of::<T>()) {
            return None;
        }
        // SAFETY: the whole header lies inside the packet, which outlives `self`; headers
        // are plain bytes with 2-byte alignment (see `headers`).
        Some(unsafe { &*((self.ctx.data() + offset) as *const T) })
    }

    /// The header of type `T` at `offset` for writing, if all of it is inside the frame.
    #[inline(always)]
    pub fn header_mut<T>(&self, offset: usize) -> Option<*mut T> {
        if !self.has(offset, core::mem::size_of::<T>()) {
            return None;
        }
        Some((self.ctx.data() + offset) as *mut T)
    }

    /// The TCP flags byte of a segment starting at `l4`, if it is inside the frame.
    #[inline(always)]
    pub fn tcp_flags(&self, l4: usize) -> Option<u8> {
        self.header::<[u8; 2]>(l4 + 12).map(|bytes| bytes[1])
    }

    /// The TCP destination port of a segment starting at `l4`.
    #[inline(always)]
    pub fn tcp_destination_port(&self, l4: usize) -> Option<u16> {
        self.header::<TcpPorts>(l4)
            .map(|ports| u16::from_be(ports.destination))
    }
}
