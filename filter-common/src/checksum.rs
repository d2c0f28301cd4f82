//! The Internet checksum (RFC 1071) as the reject path builds it. The one's-complement
//! sum is the same in either byte order, so network-order words are summed as read and
//! the folded result is stored as computed.

/// Sums 16-bit words into a 32-bit accumulator, carries kept for [`fold`].
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u32 {
    let mut sum = 0u32;
    for word in words {
        sum += *word as u32;
    }
    sum
}

/// Folds the carries of a sum into 16 bits and complements it: the checksum field.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's worked example: words 0001 f203 f4f5 f6f7 sum to 0xddf2 (with carries
    /// 0x2ddf0), whose complement is 0x220d.
    #[test]
    fn rfc1071_example() {
        let words = [0x0001, 0xf203, 0xf4f5, 0xf6f7];
        assert_eq!(sum_words(&words), 0x2ddf0);
        assert_eq!(fold(sum_words(&words)), 0x220d);
    }

    /// A header with its checksum in place sums to 0xffff, so folds to zero.
    #[test]
    fn a_correct_ipv4_header_checks_to_zero() {
        // 192.0.2.1 -> 198.51.100.2, TTL 64, TCP, total length 40, DF.
        let mut header: [u16; 10] = [
            0x4500, 0x0028, 0x0000, 0x4000, 0x4006, 0x0000, 0xc000, 0x0201, 0xc633, 0x6402,
        ];
        header[5] = fold(sum_words(&header));
        assert_eq!(fold(sum_words(&header)), 0);
        // Byte order does not matter: the same words swapped check too.
        let swapped = header.map(u16::swap_bytes);
        assert_eq!(fold(sum_words(&swapped)), 0);
    }

    #[test]
    fn folding_carries_twice() {
        // 0xffff + 0xffff = 0x1fffe: one fold gives 0xffff, complement 0.
        assert_eq!(fold(0x1fffe), 0);
        assert_eq!(fold(0), 0xffff);
    }
}
