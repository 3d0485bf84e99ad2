//! The `virtio_net_hdr` that precedes each frame on a TAP device opened with
//! `IFF_VNET_HDR`, and the one use the relay makes of it: frames from the
//! host whose TCP or UDP checksum passt already computed enter the guest's
//! stack as `CHECKSUM_PARTIAL`, so the stack does not read every byte a
//! second time to verify them (virtio-net's receive path skips the same
//! work when its device offers `VIRTIO_NET_F_GUEST_CSUM`).
//!
//! The checksum field is rewritten to the pseudo-header sum, which is what
//! `CHECKSUM_PARTIAL` means: a frame the guest delivers locally is taken as
//! is, and one it forwards (a bridge, NAT for containers) gets its checksum
//! completed by the kernel, correctly. Only frames whose headers parse
//! (IPv4 unfragmented or IPv6 without extension headers, carrying TCP or
//! UDP, lengths in range) are marked; every other frame goes in with an
//! all-zero header and is verified by the guest as before.
//!
//! The relay never enables offloads on the TAP (`TUNSETOFFLOAD`), so frames
//! the guest sends come out fully checksummed and their header is dropped.

/// Bytes of `struct virtio_net_hdr` (the TAP's default `vnet_hdr_sz`).
pub const HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const NEEDS_CSUM: u8 = 1;
const ETH_LEN: usize = 14;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Adds `bytes` (an even number of them) as big-endian 16-bit words.
fn sum_words(mut acc: u32, bytes: &[u8]) -> u32 {
    for w in bytes.chunks(2) {
        let hi = u32::from(w[0]) << 8;
        let lo = w.get(1).map_or(0, |b| u32::from(*b));
        acc += hi | lo;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Where a frame's transport header starts, its protocol, its length and
/// the pseudo-header sum (unfolded), if the frame is one we mark.
fn transport(frame: &[u8]) -> Option<(usize, u8, usize, u32)> {
    let ip = frame.get(ETH_LEN..)?;
    match be16(frame, 12)? {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            let frag = be16(ip, 6)? & 0x3fff;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || frag != 0 {
                return None;
            }
            let proto = ip[9];
            let len = total - ihl;
            let acc = sum_words(0, ip.get(12..20)?) + u32::from(proto) + len as u32;
            Some((ETH_LEN + ihl, proto, len, acc))
        }
        0x86dd => {
            let len = usize::from(be16(ip, 4)?);
            if ip.first()? >> 4 != 6 || 40 + len > ip.len() {
                return None;
            }
            let proto = ip[6];
            let acc = sum_words(0, ip.get(8..40)?) + u32::from(proto) + len as u32;
            Some((ETH_LEN + 40, proto, len, acc))
        }
        _ => None,
    }
}

/// The header for `frame` on its way into the TAP; when it marks the frame
/// `NEEDS_CSUM`, the frame's checksum field now holds the pseudo-header sum.
pub fn into_tap(frame: &mut [u8]) -> [u8; HDR_LEN] {
    let mut hdr = [0u8; HDR_LEN];
    let Some((start, proto, len, acc)) = transport(frame) else {
        return hdr;
    };
    let (offset, min) = match proto {
        IPPROTO_TCP => (16, 20),
        IPPROTO_UDP => (6, 8),
        _ => return hdr,
    };
    let at = start + offset;
    if len < min || at + 2 > frame.len() {
        return hdr;
    }
    // UDP over IPv4 may carry no checksum at all (0): leave it alone.
    if proto == IPPROTO_UDP && frame[at] == 0 && frame[at + 1] == 0 {
        return hdr;
    }
    frame[at..at + 2].copy_from_slice(&fold(acc).to_be_bytes());
    hdr[0] = NEEDS_CSUM;
    // hdr_len, csum_start, csum_offset (little-endian, as the TAP reads
    // them on x86 and every other little-endian machine).
    hdr[2..4].copy_from_slice(&((start + min) as u16).to_le_bytes());
    hdr[6..8].copy_from_slice(&(start as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&(offset as u16).to_le_bytes());
    hdr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full Internet checksum the kernel computes when it completes a
    /// `CHECKSUM_PARTIAL` frame: over the transport bytes, field included.
    fn complete(frame: &[u8], hdr: &[u8; HDR_LEN], len: usize) -> u16 {
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        !fold(sum_words(0, &frame[start..start + len]))
    }

    /// The correct checksum of a transport segment (field zeroed first).
    fn correct(frame: &mut [u8], at: usize) {
        frame[at..at + 2].fill(0);
        let (start, _, len, acc) = transport(frame).unwrap();
        let c = !fold(sum_words(acc, &frame[start..start + len]));
        frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let l4 = if proto == IPPROTO_TCP { 20 } else { 8 };
        let total = 20 + l4 + payload.len();
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend([192, 0, 2, 1, 192, 0, 2, 2]);
        f.extend(ip);
        let mut t = vec![0u8; l4];
        t[0..4].copy_from_slice(&[0x1f, 0x90, 0xc3, 0x50]);
        if proto == IPPROTO_UDP {
            t[4..6].copy_from_slice(&((l4 + payload.len()) as u16).to_be_bytes());
        } else {
            t[12] = 0x50;
        }
        f.extend(t);
        f.extend(payload);
        let at = 34 + if proto == IPPROTO_TCP { 16 } else { 6 };
        correct(&mut f, at);
        f
    }

    fn ipv6_udp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend(((8 + payload.len()) as u16).to_be_bytes());
        ip.extend([IPPROTO_UDP, 64]);
        ip.extend([0xfd; 16]);
        ip.extend([0xfe; 16]);
        f.extend(ip);
        f.extend([0x00, 0x35, 0x12, 0x34]);
        f.extend(((8 + payload.len()) as u16).to_be_bytes());
        f.extend([0, 0]);
        f.extend(payload);
        correct(&mut f, 54 + 6);
        f
    }

    #[test]
    fn a_marked_frame_completes_to_its_original_checksum() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        for (mut f, at, len) in [
            (ipv4(IPPROTO_TCP, &data), 34 + 16, 20 + data.len()),
            (ipv4(IPPROTO_UDP, &data), 34 + 6, 8 + data.len()),
            (ipv6_udp(&data), 54 + 6, 8 + data.len()),
        ] {
            let orig = u16::from_be_bytes([f[at], f[at + 1]]);
            let hdr = into_tap(&mut f);
            assert_eq!(hdr[0], NEEDS_CSUM);
            let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
            let off = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
            assert_eq!(start + off, at);
            assert_ne!(u16::from_be_bytes([f[at], f[at + 1]]), orig);
            assert_eq!(
                complete(&f, &hdr, len),
                orig,
                "completes as the kernel would"
            );
        }
    }

    #[test]
    fn frames_not_understood_go_in_unmarked_and_unchanged() {
        let mut frag = ipv4(IPPROTO_TCP, b"x");
        frag[14 + 6] = 0x20; // more fragments
        let mut no_sum = ipv4(IPPROTO_UDP, b"x");
        no_sum[40..42].fill(0);
        let mut icmp = ipv4(IPPROTO_TCP, b"x");
        icmp[14 + 9] = 1;
        let mut long = ipv4(IPPROTO_TCP, b"x");
        long[16..18].copy_from_slice(&9000u16.to_be_bytes());
        let arp = {
            let mut f = vec![0u8; 42];
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f
        };
        for f in [frag, no_sum, icmp, long, arp] {
            let mut g = f.clone();
            assert_eq!(into_tap(&mut g), [0; HDR_LEN]);
            assert_eq!(g, f);
        }
    }

    #[test]
    fn every_truncation_of_a_frame_is_safe() {
        for full in [ipv4(IPPROTO_TCP, &[1; 40]), ipv6_udp(&[2; 40])] {
            for n in 0..full.len() {
                let mut f = full[..n].to_vec();
                assert_eq!(into_tap(&mut f), [0; HDR_LEN], "{n} bytes");
            }
        }
    }
}
