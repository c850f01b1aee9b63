//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624, eqn. 3):
//! rewriting an address or port changes the checksum by the difference of the words alone.

/// Folds carries back into the low 16 bits (twice is enough for any sum of two 32-bit
/// halves).
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word of the covered data changes from `old` to `new`:
/// HC' = ~(~HC + ~m + m'). All values as read big-endian from the packet.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The one's-complement sum of a field's 16-bit words, unfolded (a pseudo-header part).
#[inline(always)]
pub fn sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    sum_words(bytes)
}

/// The Internet checksum of `bytes` (whose checksum field holds zero) with `initial`
/// (e.g. a pseudo-header's [`sum`]) added in.
#[inline(always)]
pub fn checksum<const N: usize>(bytes: &[u8; N], initial: u32) -> u16 {
    !fold(fold(initial) as u32 + fold(sum_words(bytes)) as u32)
}

/// The one's-complement sum of a field's 16-bit words.
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += (u32::from(bytes[i]) << 8) | u32::from(bytes[i + 1]);
        i += 2;
    }
    sum
}

/// [`update16`] for a small field (a 4-byte address, a port pair): RFC 1624 holds for any
/// field, taking m and m' as the one's-complement sums of its old and new words.
#[inline(always)]
pub fn update_field<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    update16(check, fold(sum_words(old)), fold(sum_words(new)))
}

/// The folded sums of a flow's old and new address pairs, for one [`update16`] covering all
/// four addresses (RFC 1624 holds for any field, taking m and m' as the one's-complement
/// sums of its old and new words). IPv4 addresses come mapped into IPv6: the `::ffff`
/// prefix is the same on both sides and cancels.
// Out of line, over map memory: unrolled over the packet it spilled past the 512-byte stack.
#[inline(never)]
pub fn address_sums(
    old_src: &[u8; 16],
    old_dst: &[u8; 16],
    new_src: &[u8; 16],
    new_dst: &[u8; 16],
) -> (u16, u16) {
    (
        fold(sum_words(old_src) + sum_words(old_dst)),
        fold(sum_words(new_src) + sum_words(new_dst)),
    )
}

/// The IPv4 header checksum of a 20-byte header (its own checksum field is skipped).
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
        }
        i += 2;
    }
    !fold(sum)
}
