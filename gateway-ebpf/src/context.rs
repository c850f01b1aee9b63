//! One view of a packet for XDP and TC programs, and the single bounds-checked accessor every
//! header read goes through.
use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};

/// Bytes the TC program makes linear before parsing: enough for two VLAN tags, an IPv6
/// header and a TCP header with options.
const TC_PULL_LEN: u32 = 128;

pub trait Packet {
    /// Start of the directly readable packet data.
    fn data(&self) -> usize;
    /// End of the directly readable packet data.
    fn data_end(&self) -> usize;
    /// Length of the whole frame, Ethernet header included. For TC this can exceed
    /// `data_end - data` when the skb is not linear.
    fn frame_len(&self) -> u64;
}

/// Returns a pointer to a `T` at `offset` if the whole `T` lies inside the packet. Every
/// header read goes through here so the verifier sees one bounds-check shape.
#[inline(always)]
pub fn ptr_at<P: Packet, T>(packet: &P, offset: usize) -> Option<*const T> {
    let start = packet.data();
    let end = packet.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A writable pointer to a `T` at `offset` if the whole `T` lies inside the packet.
#[inline(always)]
pub fn ptr_at_mut<P: Packet, T>(packet: &P, offset: usize) -> Option<*mut T> {
    ptr_at::<P, T>(packet, offset).map(|p| p as *mut T)
}

/// Reads a `T` at `offset`; `T` must be a plain header struct valid for every bit pattern.
#[inline(always)]
pub fn read_at<P: Packet, T: Copy>(packet: &P, offset: usize) -> Option<T> {
    let ptr = ptr_at::<P, T>(packet, offset)?;
    // SAFETY: ptr_at checked that size_of::<T>() bytes at ptr are inside the packet; header
    // structs are #[repr(C)] byte-oriented, so any alignment and bit pattern is valid.
    Some(unsafe { core::ptr::read_unaligned(ptr) })
}

pub struct XdpPacket<'a> {
    ctx: &'a XdpContext,
}

impl<'a> XdpPacket<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Self { ctx }
    }

    #[inline(always)]
    pub fn ctx(&self) -> &'a XdpContext {
        self.ctx
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }
    #[inline(always)]
    fn frame_len(&self) -> u64 {
        // Programs are loaded without `frags`, so a frame is always one linear buffer.
        (self.ctx.data_end() - self.ctx.data()) as u64
    }
}

pub struct TcPacket<'a> {
    ctx: &'a TcContext,
}

impl<'a> TcPacket<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        // Headers of a GSO or paged skb may sit outside the linear area; pull them in so
        // direct access sees them. Failure only means fewer bytes are linear: the parser then
        // reports the packet as truncated rather than reading past data_end.
        let want = if ctx.len() < TC_PULL_LEN {
            ctx.len()
        } else {
            TC_PULL_LEN
        };
        if ctx.data_end() - ctx.data() < want as usize {
            let _ = ctx.pull_data(want);
        }
        Self { ctx }
    }

    #[inline(always)]
    pub fn ctx(&self) -> &'a TcContext {
        self.ctx
    }
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }
    #[inline(always)]
    fn frame_len(&self) -> u64 {
        u64::from(self.ctx.len())
    }
}
