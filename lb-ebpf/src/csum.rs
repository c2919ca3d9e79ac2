//! Incremental Internet checksum update (RFC 1624, eqn. 3).
//!
//! Values are 16/32-bit words read from the packet in whatever byte order the
//! CPU uses; one's-complement sums are byte-order independent as long as the
//! checksum and the words are read the same way, so no swapping is needed.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// New checksum after a 16-bit word of the covered data changed.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// New checksum after a 32-bit word (an IPv4 address) changed.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let s = !check as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(s)
}

/// New checksum after a 128-bit word (an IPv6 address) changed.
#[inline(always)]
pub fn replace16(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut s = !check as u32;
    let mut i = 0;
    while i < 4 {
        s += (!old[i] & 0xffff) + (!old[i] >> 16) + (new[i] & 0xffff) + (new[i] >> 16);
        i += 1;
    }
    !fold(s)
}

/// UDP over IPv4 may carry no checksum (0); a computed 0 is sent as 0xffff.
#[inline(always)]
pub fn udp_fixup(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(words: &[u16]) -> u16 {
        !fold(words.iter().map(|w| *w as u32).sum())
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut words = [
            0x4500u16, 0x0073, 0x0000, 0x4000, 0x4011, 0, 0xc612, 0x0001, 0xc612, 0x0014,
        ];
        let check = full(&words);
        words[8] = 0xc612;
        words[9] = 0x0bad;
        let old = (0x0014u32 << 16) | 0xc612;
        let new = (0x0badu32 << 16) | 0xc612;
        assert_eq!(replace4(check, old, new), full(&words));
        let c2 = replace2(full(&words), words[1], 0x0074);
        words[1] = 0x0074;
        assert_eq!(c2, full(&words));
    }

    #[test]
    fn replace16_matches_full_recompute() {
        let mut words = [0xffffu16; 12];
        words[0] = 0x2001;
        words[11] = 0x1234;
        let check = full(&words);
        let join = |w: &[u16]| -> [u32; 4] {
            core::array::from_fn(|i| w[2 * i] as u32 | (w[2 * i + 1] as u32) << 16)
        };
        let old = join(&words[2..10]);
        for (i, w) in words[2..10].iter_mut().enumerate() {
            *w = 0x0102 * i as u16 + 7;
        }
        let new = join(&words[2..10]);
        assert_eq!(replace16(check, &old, &new), full(&words));
    }
}
