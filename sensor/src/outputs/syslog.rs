//! Syslog output: RFC 5424 messages (formatted by `fasyslog`) over UDP (one message per
//! datagram, RFC 5426), TCP (octet-counting framing, RFC 6587 §3.4.1) or a unix datagram
//! socket. The MSG part is the event's JSON; the structured data names its kind:
//! `<PRI>1 TIMESTAMP NODE APP PID KIND [sensor@32473 kind="KIND"] {json}`.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use fasyslog::{Facility, SDElement, Severity, format::SyslogContext};
use serde::Deserialize;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpStream, UdpSocket, UnixDatagram},
    sync::mpsc,
};

use super::{Counters, OutputLine, SyslogConfig};

/// SD-ID of our structured data element; 32473 is the private enterprise number reserved for
/// documentation (RFC 5612).
pub const SD_ID: &str = "sensor@32473";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    Udp(String),
    Tcp(String),
    Unix(PathBuf),
}

impl TryFrom<String> for SyslogAddress {
    type Error = String;

    fn try_from(address: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "syslog address {address:?}: expected udp://HOST:PORT, tcp://HOST:PORT or \
                 unix:///PATH"
            )
        };
        let host_port = |rest: &str| {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(rest.to_owned())
        };
        if let Some(rest) = address.strip_prefix("udp://") {
            Ok(Self::Udp(host_port(rest)?))
        } else if let Some(rest) = address.strip_prefix("tcp://") {
            Ok(Self::Tcp(host_port(rest)?))
        } else if let Some(path) = address.strip_prefix("unix://").filter(|p| p.starts_with('/')) {
            Ok(Self::Unix(PathBuf::from(path)))
        } else {
            Err(bad())
        }
    }
}

impl<'de> Deserialize<'de> for SyslogAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A syslog facility by name (`user`, `daemon`, `local0` … `local7`, …); default `user`, as
/// Falco's syslog output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FacilityName(pub Facility);

impl Default for FacilityName {
    fn default() -> Self {
        Self(Facility::USER)
    }
}

impl fmt::Debug for FacilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for FacilityName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map(Self).map_err(|()| {
            serde::de::Error::custom(format!(
                "unknown syslog facility {name:?}: expected kern, user, mail, daemon, auth, \
                 syslog, lpr, news, uucp, cron, authpriv, ftp, ntp, audit, alert, clock or \
                 local0 … local7"
            ))
        })
    }
}

enum Transport {
    Udp(Option<UdpSocket>),
    Tcp(Option<TcpStream>),
    Unix(Option<UnixDatagram>),
}

pub struct SyslogSender {
    address: SyslogAddress,
    context: SyslogContext,
    transport: Transport,
    buf: Vec<u8>,
}

impl SyslogSender {
    pub fn new(config: &SyslogConfig, node_name: &str) -> std::io::Result<Self> {
        let app = &config.app_name;
        if app.is_empty() || app.len() > 48 || !app.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(std::io::Error::other(format!(
                "app_name {app:?}: 1 to 48 printable ASCII characters without spaces (RFC 5424)"
            )));
        }
        let mut context = SyslogContext::const_new();
        context
            .facility(config.facility.0)
            .hostname(hostname_field(node_name))
            .appname(app.clone())
            .procid(std::process::id().to_string());
        let transport = match config.address {
            SyslogAddress::Udp(_) => Transport::Udp(None),
            SyslogAddress::Tcp(_) => Transport::Tcp(None),
            SyslogAddress::Unix(_) => Transport::Unix(None),
        };
        Ok(Self { address: config.address.clone(), context, transport, buf: Vec::new() })
    }

    /// The RFC 5424 message for `line` (without transport framing).
    pub fn format(&self, line: &OutputLine) -> String {
        let severity = Severity::try_from(line.priority().severity()).unwrap_or(Severity::WARNING);
        let mut elements = Vec::new();
        if let Ok(mut sd) = SDElement::new(SD_ID)
            && sd.add_param("kind", line.kind.as_str()).is_ok()
        {
            elements.push(sd);
        }
        self.context
            .format_rfc5424(severity, Some(line.kind.as_str()), elements, Some(&line.json))
            .to_string()
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Arc<OutputLine>>, counters: Counters) {
        let mut logged = false;
        while let Some(line) = rx.recv().await {
            let message = self.format(&line);
            // A stream that broke since the last message is reconnected once.
            let mut result = self.send(&message).await;
            if result.is_err() && matches!(self.transport, Transport::Tcp(_)) {
                result = self.send(&message).await;
            }
            match result {
                Ok(()) => {
                    counters.sent.inc();
                    logged = false;
                }
                Err(err) => {
                    counters.errors.inc();
                    if !logged {
                        tracing::warn!(address = ?self.address, "syslog output: {err}");
                        logged = true;
                    }
                }
            }
        }
    }

    async fn send(&mut self, message: &str) -> std::io::Result<()> {
        let result = match (&mut self.transport, &self.address) {
            (Transport::Udp(socket), SyslogAddress::Udp(addr)) => {
                if socket.is_none() {
                    let target = resolve(addr).await?;
                    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    let s = UdpSocket::bind(bind).await?;
                    s.connect(target).await?;
                    *socket = Some(s);
                }
                match socket {
                    Some(s) => s.send(message.as_bytes()).await.map(drop),
                    None => Ok(()),
                }
            }
            (Transport::Tcp(stream), SyslogAddress::Tcp(addr)) => {
                if stream.is_none() {
                    let target = resolve(addr).await?;
                    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
                        .await
                        .map_err(|_| std::io::Error::other("connect timed out"))??;
                    s.set_nodelay(true)?;
                    *stream = Some(s);
                }
                self.buf.clear();
                self.buf.extend_from_slice(format!("{} ", message.len()).as_bytes());
                self.buf.extend_from_slice(message.as_bytes());
                match stream {
                    Some(s) => s.write_all(&self.buf).await,
                    None => Ok(()),
                }
            }
            (Transport::Unix(socket), SyslogAddress::Unix(path)) => {
                if socket.is_none() {
                    let s = UnixDatagram::unbound()?;
                    s.connect(path)?;
                    *socket = Some(s);
                }
                match socket {
                    Some(s) => s.send(message.as_bytes()).await.map(drop),
                    None => Ok(()),
                }
            }
            _ => Err(std::io::Error::other("transport does not match the address")),
        };
        if result.is_err() {
            // Reconnect (and re-resolve) on the next message.
            match &mut self.transport {
                Transport::Udp(s) => *s = None,
                Transport::Tcp(s) => *s = None,
                Transport::Unix(s) => *s = None,
            }
        }
        result
    }
}

async fn resolve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))
}

/// HOSTNAME is 1*255 PRINTUSASCII.
fn hostname_field(node: &str) -> String {
    let name: String = node.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() { "-".to_owned() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::EventKind;

    fn sender(address: &str) -> SyslogSender {
        let config = SyslogConfig {
            name: None,
            types: None,
            min_priority: None,
            queue_size: None,
            address: SyslogAddress::try_from(address.to_owned()).expect("address"),
            facility: FacilityName(Facility::LOCAL3),
            app_name: "sensor".into(),
        };
        SyslogSender::new(&config, "node-1").expect("sender")
    }

    #[test]
    fn formats_rfc5424_with_kind_and_json_message() {
        let s = sender("udp://127.0.0.1:514");
        let line =
            OutputLine::new(EventKind::Alert, r#"{"priority":"Critical","output":"a]b"}"#.into());
        let msg = s.format(&line);
        // local3 (19) * 8 + critical (2) = 154
        assert!(msg.starts_with("<154>1 "), "{msg}");
        let fields: Vec<&str> = msg.splitn(7, ' ').collect();
        assert_eq!(fields[2..6], ["node-1", "sensor", &std::process::id().to_string(), "alert"]);
        assert_eq!(fields[6], format!(r#"[sensor@32473 kind="alert"] {}"#, line.json));
        let host = s.format(&OutputLine::new(EventKind::Host, "{}".into()));
        assert!(host.starts_with("<158>1 "), "info: {host}");
    }

    #[test]
    fn addresses_are_checked() {
        for good in ["udp://127.0.0.1:514", "tcp://syslog.example:6514", "unix:///dev/log"] {
            assert!(SyslogAddress::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1:514", "udp://host", "tcp://:1", "unix://rel", "udp://h:99999"] {
            assert!(SyslogAddress::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn tcp_frames_with_octet_counting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut s = sender(&format!("tcp://127.0.0.1:{port}"));
        let (tx, rx) = mpsc::channel(4);
        let counters = crate::outputs::OutputMetrics::default().counters("t");
        tx.send(Arc::new(OutputLine::new(EventKind::Flow, "{\"a\":1}".into())))
            .await
            .expect("send");
        drop(tx);
        let expected = s.format(&OutputLine::new(EventKind::Flow, "{\"a\":1}".into()));
        s.buf.clear();
        let task = tokio::spawn(s.run(rx, counters.clone()));
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut got).await.expect("read");
        task.await.expect("task");
        let (len, msg) = got.split_once(' ').expect("octet count");
        assert_eq!(len.parse::<usize>().expect("len"), msg.len());
        // Same message up to the timestamp, which differs between the two formats.
        assert_eq!(msg.split(' ').nth(2), expected.split(' ').nth(2));
        assert!(msg.ends_with("{\"a\":1}"), "{msg}");
        assert_eq!(counters.sent.get(), 1);
    }
}
