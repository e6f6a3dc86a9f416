//! A process for host tests to run inside a test cgroup: `host-probe bind tcp|udp PORT` binds
//! 127.0.0.1:PORT and exits 0, or 13 when bind fails with EPERM (a Block policy), 1 otherwise;
//! `host-probe connect tcp PORT` connects to 127.0.0.1:PORT.

use std::net::{TcpListener, TcpStream, UdpSocket};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(proto), Some(port)) = (args.get(2), args.get(3).and_then(|p| p.parse::<u16>().ok()))
    else {
        eprintln!("usage: host-probe bind tcp|udp PORT | host-probe connect tcp PORT");
        std::process::exit(2);
    };
    let result = match (args[1].as_str(), proto.as_str()) {
        ("connect", _) => TcpStream::connect(("127.0.0.1", port)).map(drop),
        (_, "tcp") => TcpListener::bind(("127.0.0.1", port)).map(drop),
        _ => UdpSocket::bind(("127.0.0.1", port)).map(drop),
    };
    match result {
        Ok(()) => println!("{} {proto} {port}: ok", args[1]),
        Err(e) => {
            eprintln!("bind {proto} {port}: {e}");
            std::process::exit(if e.raw_os_error() == Some(libc::EPERM) { 13 } else { 1 });
        }
    }
}
