//! Real traffic between test namespaces.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::Netns;

/// A TCP round trip from a socket in `from` to a listener on `addr` in `to`; true when the
/// echo came back.
pub fn tcp_roundtrip(from: &Netns, to: &Netns, addr: SocketAddr) -> bool {
    let listener = to.enter(|| TcpListener::bind(addr).expect("bind server"));
    let server = std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut buf = [0_u8; 4];
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(&buf);
            }
        }
    });
    let client = from.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
    let ok = match client {
        Ok(mut conn) => {
            conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut buf = [0_u8; 4];
            conn.write_all(b"ping").is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == b"ping"
        }
        Err(_) => false,
    };
    if !ok {
        // Unblock the accept (from inside the listener's namespace) so the thread ends.
        let _ = to.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)));
    }
    let _ = server.join();
    ok
}
