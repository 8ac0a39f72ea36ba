//! PROXY protocol headers (HAProxy's v1 text and v2 binary forms), which
//! the mesh sends a backend before any client byte so that the backend
//! sees the client's address rather than the node's.
//!
//! Only the `PROXY` command over TCP is produced: the mesh never sends
//! `LOCAL` (health probes do not pass through it) and carries no TLVs.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use flotilla_types::mesh::ProxyProtocol;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header of `version` for a connection from `src` (the client) to
/// `dst` (the address the client connected to).
pub fn header(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        ProxyProtocol::V1 => v1(src, dst).into_bytes(),
        ProxyProtocol::V2 => v2(src, dst),
    }
}

/// The two addresses in one family. A dual-stack listener reports IPv4
/// clients as IPv4-mapped IPv6 addresses; they are written as IPv4 when
/// both sides can be, and a mixed pair as IPv6 (mapped), because both
/// versions of the protocol carry one family for both addresses.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (IpAddr, IpAddr) {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let to_v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    match (unmap(src.ip()), unmap(dst.ip())) {
        (s @ IpAddr::V4(_), d @ IpAddr::V4(_)) => (s, d),
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (TCP6 for IPv6).
pub fn v1(src: SocketAddr, dst: SocketAddr) -> String {
    let (s, d) = same_family(src, dst);
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {s} {d} {} {}\r\n", src.port(), dst.port())
}

/// The binary header: signature, version 2 with command PROXY (0x21),
/// family TCP over IPv4 (0x11) or IPv6 (0x21), the address block's length
/// (big endian) and the block: source address, destination address,
/// source port, destination port.
pub fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(src, dst);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            let (s, d): (Ipv6Addr, Ipv6Addr) = (v6(s), v6(d));
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn v1_writes_tcp4_and_tcp6() {
        assert_eq!(
            v1(addr("192.168.0.1:56324"), addr("192.168.0.11:443")),
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            v1(addr("[2001:db8::1]:1000"), addr("[2001:db8::2]:80")),
            "PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n"
        );
    }

    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        assert_eq!(
            v1(addr("[::ffff:10.0.0.1]:5000"), addr("[::ffff:10.0.0.2]:80")),
            "PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n"
        );
        // A mixed pair cannot be IPv4: both become IPv6.
        assert_eq!(
            v1(addr("10.0.0.1:5000"), addr("[2001:db8::2]:80")),
            "PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 5000 80\r\n"
        );
    }

    #[test]
    fn v2_ipv4_bytes() {
        let got = v2(addr("192.168.0.1:56324"), addr("192.168.0.11:443"));
        let want: Vec<u8> = [
            &[
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            ][..],
            &[0x21, 0x11, 0x00, 0x0C],
            &[192, 168, 0, 1],
            &[192, 168, 0, 11],
            &[0xDC, 0x04], // 56324
            &[0x01, 0xBB], // 443
        ]
        .concat();
        assert_eq!(got, want);
        assert_eq!(got.len(), 28);
    }

    #[test]
    fn v2_ipv6_bytes() {
        let got = v2(addr("[2001:db8::1]:1000"), addr("[2001:db8::2]:80"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[0x03, 0xE8, 0x00, 0x50]);
        assert_eq!(got, want);
        assert_eq!(got.len(), 16 + 36);
    }
}
