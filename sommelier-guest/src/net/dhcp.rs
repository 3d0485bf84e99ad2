//! A minimal DHCPv4 client's messages (RFC 2131, 2132): DISCOVER and REQUEST
//! as whole broadcast Ethernet frames, and the parsing of the server's OFFER
//! and ACK. Every field of an answer is bounds-checked; anything else is
//! ignored (`None`).

/// Message types (option 53).
pub const DISCOVER: u8 = 1;
/// DHCPOFFER.
pub const OFFER: u8 = 2;
/// DHCPREQUEST.
pub const REQUEST: u8 = 3;
/// DHCPACK.
pub const ACK: u8 = 5;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// op … file: the fixed BOOTP part before the magic cookie.
const BOOTP: usize = 236;

/// What the server handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The guest's address.
    pub addr: [u8; 4],
    /// Its netmask (option 1; /24 when absent).
    pub mask: [u8; 4],
    /// The default router (option 3).
    pub router: Option<[u8; 4]>,
    /// Resolvers (option 6).
    pub dns: Vec<[u8; 4]>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// The server's identifier (option 54), for the REQUEST.
    pub server: Option<[u8; 4]>,
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A DISCOVER (`lease` None) or a REQUEST for `lease`, broadcast from `mac`.
pub fn message(mac: [u8; 6], xid: u32, lease: Option<&Lease>) -> Vec<u8> {
    let mut opts = vec![53, 1, if lease.is_some() { REQUEST } else { DISCOVER }];
    if let Some(l) = lease {
        opts.extend_from_slice(&[50, 4]);
        opts.extend_from_slice(&l.addr);
        if let Some(s) = l.server {
            opts.extend_from_slice(&[54, 4]);
            opts.extend_from_slice(&s);
        }
    }
    // Parameters: mask, router, resolvers, MTU.
    opts.extend_from_slice(&[55, 4, 1, 3, 6, 26, 255]);
    let mut bootp = vec![0u8; BOOTP];
    bootp[..4].copy_from_slice(&[1, 1, 6, 0]);
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    // The broadcast flag: the guest has no address to be answered at yet.
    bootp[10] = 0x80;
    bootp[28..34].copy_from_slice(&mac);
    bootp.extend_from_slice(&MAGIC);
    bootp.extend_from_slice(&opts);
    let udp_len = (UDP + bootp.len()) as u16;
    let ip_len = IP as u16 + udp_len;
    let mut f = Vec::with_capacity(ETH + usize::from(ip_len));
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; IP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[16..20].copy_from_slice(&[255; 4]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    // A zero UDP checksum means "none" over IPv4.
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&bootp);
    f
}

fn ip4(b: &[u8]) -> Option<[u8; 4]> {
    b.get(..4)?.try_into().ok()
}

/// The message type and lease of a server answer to transaction `xid` for
/// `mac` in `frame`; `None` for any other frame.
pub fn answer(frame: &[u8], mac: [u8; 6], xid: u32) -> Option<(u8, Lease)> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(ETH..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IP || *ip.get(9)? != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let ip = ip.get(..total)?;
    let udp = ip.get(ihl..)?;
    if udp.get(2..4)? != 68u16.to_be_bytes() {
        return None;
    }
    let bootp = udp.get(UDP..)?;
    if *bootp.first()? != 2 || bootp.get(4..8)? != xid.to_be_bytes() {
        return None;
    }
    if bootp.get(28..34)? != mac || bootp.get(BOOTP..BOOTP + 4)? != MAGIC {
        return None;
    }
    let mut lease = Lease {
        addr: ip4(bootp.get(16..20)?)?,
        mask: [255, 255, 255, 0],
        router: None,
        dns: Vec::new(),
        mtu: None,
        server: None,
    };
    let mut kind = None;
    let mut opts = bootp.get(BOOTP + 4..)?;
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => {
                opts = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let val = rest.get(..usize::from(len))?;
        opts = &rest[usize::from(len)..];
        match code {
            1 => lease.mask = ip4(val)?,
            3 => lease.router = ip4(val),
            6 => lease.dns = val.chunks_exact(4).filter_map(ip4).collect(),
            26 if val.len() == 2 => lease.mtu = Some(u16::from_be_bytes([val[0], val[1]])),
            53 if val.len() == 1 => kind = Some(val[0]),
            54 => lease.server = ip4(val),
            _ => {}
        }
    }
    if lease.addr == [0; 4] {
        return None;
    }
    Some((kind?, lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    /// A server's answer, built field by field from RFC 2131's layout.
    fn server_answer(kind: u8, xid: u32, mac: [u8; 6], opts: &[u8]) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP];
        bootp[..4].copy_from_slice(&[2, 1, 6, 0]);
        bootp[4..8].copy_from_slice(&xid.to_be_bytes());
        bootp[16..20].copy_from_slice(&[10, 0, 2, 15]);
        bootp[28..34].copy_from_slice(&mac);
        bootp.extend_from_slice(&MAGIC);
        bootp.extend_from_slice(&[53, 1, kind]);
        bootp.extend_from_slice(opts);
        bootp.push(255);
        let udp_len = (UDP + bootp.len()) as u16;
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[8, 0, 0x45, 0]);
        f.extend_from_slice(&(20 + udp_len).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 2, 255, 255, 255, 255]);
        f.extend_from_slice(&[0, 67, 0, 68]);
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&bootp);
        f
    }

    #[test]
    fn a_discover_is_a_valid_broadcast_udp_frame() {
        let f = message(MAC, 0x1234_5678, None);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(
            usize::from(u16::from_be_bytes([f[16], f[17]])),
            f.len() - 14
        );
        assert_eq!(&f[34..38], &[0, 68, 0, 67]);
        let bootp = &f[42..];
        assert_eq!(&bootp[4..8], &0x1234_5678u32.to_be_bytes());
        assert_eq!(
            &bootp[BOOTP..BOOTP + 7],
            &[99, 130, 83, 99, 53, 1, DISCOVER]
        );
    }

    #[test]
    fn a_request_names_the_offered_address_and_server() {
        let l = Lease {
            addr: [10, 0, 2, 15],
            mask: [255; 4],
            router: None,
            dns: vec![],
            mtu: None,
            server: Some([10, 0, 2, 2]),
        };
        let f = message(MAC, 7, Some(&l));
        let o = &f[42 + BOOTP + 4..];
        assert_eq!(
            &o[..13],
            &[53, 1, REQUEST, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0]
        );
    }

    #[test]
    fn an_ack_gives_address_mask_router_resolvers_and_mtu() {
        let opts = [
            1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 9, 9, 9, 9, 26, 2, 0xff,
            0xf0, 54, 4, 10, 0, 2, 2, 0,
        ];
        let f = server_answer(ACK, 42, MAC, &opts);
        let (kind, l) = answer(&f, MAC, 42).unwrap();
        assert_eq!(kind, ACK);
        assert_eq!(l.addr, [10, 0, 2, 15]);
        assert_eq!(l.mask, [255, 255, 255, 0]);
        assert_eq!(l.router, Some([10, 0, 2, 2]));
        assert_eq!(l.dns, vec![[10, 0, 2, 3], [9, 9, 9, 9]]);
        assert_eq!(l.mtu, Some(65520));
        assert_eq!(l.server, Some([10, 0, 2, 2]));
    }

    #[test]
    fn other_transactions_hosts_and_broken_answers_are_ignored() {
        let f = server_answer(OFFER, 42, MAC, &[]);
        assert!(answer(&f, MAC, 42).is_some());
        assert!(answer(&f, MAC, 43).is_none(), "other xid");
        assert!(answer(&f, [2, 0, 0, 0, 0, 8], 42).is_none(), "other mac");
        for n in 0..f.len() {
            assert!(answer(&f[..n], MAC, 42).is_none(), "cut at {n}");
        }
        // An option whose length runs past the end.
        let mut g = server_answer(OFFER, 42, MAC, &[]);
        let end = g.len() - 1;
        g[end] = 6;
        g.push(200);
        assert!(answer(&g, MAC, 42).is_none());
        // Our own broadcast is not an answer.
        assert!(answer(&message(MAC, 42, None), MAC, 42).is_none());
    }
}
