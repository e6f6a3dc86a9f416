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
