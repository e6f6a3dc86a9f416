//! Webhook output: each event's JSON is POSTed (`Content-Type: application/json`) to a URL,
//! over HTTPS with certificate verification (rustls; the system's CAs or `tls.ca_file`), one
//! kept-alive HTTP/1.1 connection. A failed attempt (connection, TLS, timeout, HTTP 5xx, 408
//! or 429) is retried after an exponential backoff; other 4xx answers are not retried.

use std::{sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, StatusCode, Uri,
    body::Bytes,
    client::conn::http1::{self, SendRequest},
    header,
};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use serde::Deserialize;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::TlsConnector;

use super::{Counters, OutputLine, WebhookConfig, backoff};

/// An `http://` or `https://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(pub Uri);

impl TryFrom<String> for WebhookUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("webhook url {url:?}: {e}"))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(Self(uri)),
            _ => Err(format!("webhook url {url:?}: expected http://HOST[:PORT]/PATH or https://…")),
        }
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

pub struct Webhook {
    uri: Uri,
    /// Request target in origin form (`/path?query`).
    target: String,
    host: String,
    port: u16,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out")]
    Timeout,
    #[error("server answered {0}")]
    Status(StatusCode),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            Self::Status(s) => {
                s.is_server_error()
                    || *s == StatusCode::TOO_MANY_REQUESTS
                    || *s == StatusCode::REQUEST_TIMEOUT
            }
            _ => true,
        }
    }
}

impl Webhook {
    pub fn new(config: &WebhookConfig) -> std::io::Result<Self> {
        let uri = config.url.0.clone();
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::other(format!("server name {host:?}: {e}")))?;
            Some((TlsConnector::from(Arc::new(client_config(config)?)), name))
        } else {
            None
        };
        let target = uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            uri,
            target,
            host,
            port,
            authority,
            tls,
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            backoff: Duration::from_millis(config.backoff_ms),
            conn: None,
        })
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Arc<OutputLine>>, counters: Counters) {
        let mut logged = false;
        while let Some(line) = rx.recv().await {
            let body = Bytes::from(line.json.clone());
            let mut attempt = 0;
            let result = loop {
                let result = tokio::time::timeout(self.timeout, self.post(body.clone()))
                    .await
                    .unwrap_or(Err(AttemptError::Timeout));
                match result {
                    Ok(()) => break Ok(()),
                    Err(err) => {
                        // Whatever went wrong, the next attempt starts on a fresh connection.
                        self.conn = None;
                        if attempt >= self.retries || !err.retryable() {
                            break Err(err);
                        }
                        tracing::debug!(url = %self.uri, attempt, "webhook attempt failed: {err}");
                        tokio::time::sleep(backoff(self.backoff, attempt)).await;
                        attempt += 1;
                        counters.retries.inc();
                    }
                }
            };
            match result {
                Ok(()) => {
                    counters.sent.inc();
                    logged = false;
                }
                Err(err) => {
                    counters.errors.inc();
                    if !logged {
                        tracing::warn!(url = %self.uri, "webhook output: {err}");
                        logged = true;
                    }
                }
            }
        }
    }

    async fn post(&mut self, body: Bytes) -> Result<(), AttemptError> {
        if let Some(conn) = &mut self.conn
            && conn.ready().await.is_err()
        {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.connect().await?),
        };
        let request = Request::post(self.target.as_str())
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("sensor/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(std::io::Error::other)?;
        let response = conn.send_request(request).await?;
        let status = response.status();
        // Read the body to the end so that the connection can carry the next request.
        http_body_util::BodyExt::collect(response.into_body()).await?;
        if status.is_success() { Ok(()) } else { Err(AttemptError::Status(status)) }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, AttemptError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender
            }
            None => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(sender)
    }
}

fn client_config(config: &WebhookConfig) -> std::io::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    let mut tls = if config.tls.insecure_skip_verify {
        tracing::warn!(url = %config.url.0, "webhook: server certificate verification disabled");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(path) = &config.tls.ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| std::io::Error::other(format!("ca_file {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(std::io::Error::other(format!(
                    "ca_file {}: no usable certificate",
                    path.display()
                )));
            }
        } else {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// `insecure_skip_verify`: any certificate chain is accepted, handshake signatures are still
/// checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(WebhookUrl::try_from("https://127.0.0.1:8443/in".to_owned()).is_ok());
        assert!(WebhookUrl::try_from("http://siem/".to_owned()).is_ok());
        assert!(WebhookUrl::try_from("ftp://siem/".to_owned()).is_err());
        assert!(WebhookUrl::try_from("/relative".to_owned()).is_err());
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(AttemptError::Timeout.retryable());
        assert!(AttemptError::Status(StatusCode::SERVICE_UNAVAILABLE).retryable());
        assert!(AttemptError::Status(StatusCode::TOO_MANY_REQUESTS).retryable());
        assert!(!AttemptError::Status(StatusCode::BAD_REQUEST).retryable());
    }
}
