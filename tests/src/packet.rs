//! Hand-made packets: a raw ICMP socket (echo and other request types without the `ping`
//! binary) and an `AF_PACKET` socket that sends whole Ethernet frames, malformed ones included.
//! Create them inside a test namespace with [`crate::Netns::enter`].

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(ret)
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(1),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(0),
        )
    };
    check(ret, "setsockopt SO_RCVTIMEO").map(|_| ())
}

/// A raw IPv4 ICMP socket (root only). It receives every ICMP message addressed to its
/// namespace, so [`IcmpSocket::request`] filters by peer, type and id.
pub struct IcmpSocket {
    fd: OwnedFd,
}

impl IcmpSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) },
            "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)",
        )?;
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_timeout(&fd, Duration::from_millis(200))?;
        Ok(Self { fd })
    }

    /// Sends an ICMP message of `icmp_type` (code 0) carrying `id` and `seq`.
    pub fn send(&self, to: Ipv4Addr, icmp_type: u8, id: u16, seq: u16) -> io::Result<()> {
        let mut msg = vec![icmp_type, 0, 0, 0];
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(b"sensor-e2e-icmp!");
        let sum = checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(to).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: a valid socket, buffer and sockaddr_in of the sizes given.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(0),
            )
        };
        check(i32::try_from(ret).unwrap_or(-1), "sendto").map(|_| ())
    }

    /// Waits up to `timeout` for an ICMP message from `from` of `icmp_type` with `id`.
    pub fn wait_for(&self, from: Ipv4Addr, icmp_type: u8, id: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0_u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: a valid socket and buffer of the size given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue }; // timeout: look at the deadline
            // Raw IPv4 sockets deliver the IP header too.
            if n < 20 {
                continue;
            }
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            if n < ihl + 8 || src != from {
                continue;
            }
            let icmp = &buf[ihl..n];
            if icmp[0] == icmp_type && u16::from_be_bytes([icmp[4], icmp[5]]) == id {
                return true;
            }
        }
        false
    }

    /// Sends one request and waits for the matching reply type.
    pub fn request(&self, to: Ipv4Addr, request: u8, reply: u8, id: u16, seq: u16) -> bool {
        self.send(to, request, id, seq).expect("send ICMP");
        self.wait_for(to, reply, id, Duration::from_secs(1))
    }
}

/// An `AF_PACKET` socket bound to one interface: sends frames exactly as given.
pub struct FrameSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl FrameSocket {
    /// Opens the socket on `interface` of the calling thread's network namespace.
    pub fn new(interface: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(interface).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: send only, nothing is queued for reading.
        // SAFETY: plain socket(2) call.
        let fd = check(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) },
            "socket(AF_PACKET, SOCK_RAW)",
        )?;
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, ifindex: i32::try_from(ifindex).map_err(io::Error::other)? })
    }

    /// Sends one frame (Ethernet header included); returns the bytes sent.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::sa_family_t::try_from(libc::AF_PACKET).unwrap_or(17);
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: a valid socket, buffer and sockaddr_ll of the sizes given.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(0),
            )
        };
        usize::try_from(ret).map_err(|_| io::Error::last_os_error())
    }
}

/// Byte-exact IPv4 and IPv6 packets for the bypass tests: fragments (tiny, overlapping, out
/// of order), IPv6 extension header chains and truncated L4 headers, with real checksums so
/// that a packet the sensor lets through is one the receiving kernel accepts.
pub mod build {
    use std::net::IpAddr;

    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    /// IPv6 next-header values.
    pub const NEXT_DEST_OPTS: u8 = 60;
    pub const NEXT_FRAGMENT: u8 = 44;
    pub const TCP_SYN: u8 = 0x02;

    fn sum(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
            .sum()
    }

    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap_or(0)
    }

    fn octets(addr: IpAddr) -> Vec<u8> {
        match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// The TCP/UDP checksum of a whole L4 `segment` (checksum field zero) with the IPv4 or
    /// IPv6 pseudo-header (RFC 793, RFC 8200 section 8.1).
    pub fn l4_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
        let mut pseudo = octets(src);
        pseudo.extend_from_slice(&octets(dst));
        let len = u32::try_from(segment.len()).expect("small segment");
        if src.is_ipv4() {
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&u16::try_from(len).expect("small").to_be_bytes());
        } else {
            pseudo.extend_from_slice(&len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        let total = sum(&pseudo) + sum(segment);
        match fold(total) {
            0 if protocol == PROTO_UDP => 0xffff,
            c => c,
        }
    }

    /// A TCP segment: 20-byte header with `options` (padded to 4 bytes), then `payload`.
    pub fn tcp(
        src: IpAddr,
        dst: IpAddr,
        (sport, dport): (u16, u16),
        flags: u8,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut options = options.to_vec();
        options.resize(options.len().div_ceil(4) * 4, 1); // NOP padding
        let words = u8::try_from(5 + options.len() / 4).expect("short options");
        let mut s = sport.to_be_bytes().to_vec();
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&0x1000_0000_u32.to_be_bytes()); // sequence number
        s.extend_from_slice(&0_u32.to_be_bytes()); // acknowledgment number
        s.extend_from_slice(&[words << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
        s.extend_from_slice(&options);
        s.extend_from_slice(payload);
        let c = l4_checksum(src, dst, PROTO_TCP, &s);
        s[16..18].copy_from_slice(&c.to_be_bytes());
        s
    }

    /// A TCP SYN of 40 bytes (MSS, SACK permitted, timestamps, window scale options).
    pub fn tcp_syn(src: IpAddr, dst: IpAddr, ports: (u16, u16)) -> Vec<u8> {
        let options = [
            2, 4, 0x05, 0xb4, // MSS 1460
            4, 2, // SACK permitted
            8, 10, 0, 0, 0, 1, 0, 0, 0, 0, // timestamps
            1, // NOP
            3, 3, 7, // window scale 7
        ];
        tcp(src, dst, ports, TCP_SYN, &options, &[])
    }

    /// A UDP datagram with its checksum.
    pub fn udp(src: IpAddr, dst: IpAddr, (sport, dport): (u16, u16), payload: &[u8]) -> Vec<u8> {
        let mut s = sport.to_be_bytes().to_vec();
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&u16::try_from(8 + payload.len()).expect("small").to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(payload);
        let c = l4_checksum(src, dst, PROTO_UDP, &s);
        s[6..8].copy_from_slice(&c.to_be_bytes());
        s
    }

    /// An IPv4 packet: a 20-byte header with its checksum, then `payload`. `fragment` is
    /// (offset in bytes, a multiple of 8; more fragments).
    pub fn ipv4(
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        id: u16,
        (offset, more): (usize, bool),
        payload: &[u8],
    ) -> Vec<u8> {
        assert_eq!(offset % 8, 0, "fragment offsets are in 8-byte units");
        let frag = u16::try_from(offset / 8).expect("offset") | if more { 0x2000 } else { 0 };
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&u16::try_from(20 + payload.len()).expect("small").to_be_bytes());
        ip.extend_from_slice(&id.to_be_bytes());
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, protocol, 0, 0]);
        ip.extend_from_slice(&octets(src));
        ip.extend_from_slice(&octets(dst));
        let c = fold(sum(&ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(payload);
        ip
    }

    /// An IPv6 packet: the fixed header with `next`, then `rest` (extension headers and
    /// upper-layer data).
    pub fn ipv6(src: IpAddr, dst: IpAddr, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&u16::try_from(rest.len()).expect("small").to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&octets(src));
        ip.extend_from_slice(&octets(dst));
        ip.extend_from_slice(rest);
        ip
    }

    /// An 8-byte destination options header (PadN only) followed by `next`.
    pub fn dest_opts(next: u8) -> [u8; 8] {
        [next, 0, 1, 4, 0, 0, 0, 0]
    }

    /// An IPv6 fragment header: `next`, offset in bytes (a multiple of 8), M flag, `id`.
    pub fn fragment_header(next: u8, offset: usize, more: bool, id: u32) -> [u8; 8] {
        assert_eq!(offset % 8, 0, "fragment offsets are in 8-byte units");
        let field = u16::try_from(offset).expect("offset") | u16::from(more);
        let f = field.to_be_bytes();
        let i = id.to_be_bytes();
        [next, 0, f[0], f[1], i[0], i[1], i[2], i[3]]
    }

    /// An Ethernet frame around an IPv4 or IPv6 packet.
    pub fn ethernet(dst: [u8; 6], src: [u8; 6], packet: &[u8]) -> Vec<u8> {
        let ethertype: u16 = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        let mut frame = dst.to_vec();
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(packet);
        frame
    }
}
