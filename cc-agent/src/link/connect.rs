//! Opening a connection to one listener: TCP, TLS for `wss://`, then the
//! WebSocket handshake with the API key, all within [`CONNECT_TIMEOUT`].
//!
//! `ws://` and `wss://` differ only in whether TLS wraps the TCP stream:
//! both become one [`Ws`] over one [`Stream`], so everything after the
//! connect is written once. Only `wss://` trusts certificates, from
//! `ca_file` or the system's store (never none: an empty store is an error).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use cc_proto::wire::MAX_MESSAGE_BYTES;

use crate::config::{Config, Listener};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection to a listener, with or without TLS.
pub(crate) type Ws = WebSocketStream<Stream>;

/// A TCP stream, TLS-wrapped for `wss://`.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to `listener` and completes the WebSocket handshake with `key`
/// in the `X-CC-API-KEY` header; TLS when the listener's URL is `wss://`
/// (`tls` is then the client config [`tls_config`] made).
pub(crate) async fn connect(
    listener: &Listener,
    key: &str,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Ws> {
    let mut req = listener.url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "X-CC-API-KEY",
        HeaderValue::from_str(key).context("the API key is not a valid header value")?,
    );
    let tls = tls.filter(|_| listener.tls);
    let host = req
        .uri()
        .host()
        .context("listener_url has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = req
        .uri()
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| describe(tungstenite::Error::Io(e)))?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await?;
                Stream::Tls(Box::new(tls))
            }
        };
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
            .await
            .map_err(describe)?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .context("connecting timed out")?
}

/// The client config for `wss://` listeners: `ca_file`'s certificates, or
/// the system's.
pub(crate) fn tls_config(cfg: &Config) -> Result<Arc<ClientConfig>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading ca_file {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("parsing ca_file {}", path.display()))?)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        bail!("no trusted certificates for wss:// (install ca-certificates or set ca_file)");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Says what a refused handshake means, without echoing our request.
fn describe(e: tungstenite::Error) -> anyhow::Error {
    match e {
        tungstenite::Error::Http(resp) if resp.status().as_u16() == 401 => {
            anyhow!("the listener refused the API key (401)")
        }
        tungstenite::Error::Http(resp) => {
            anyhow!("the listener answered HTTP {}", resp.status())
        }
        other => anyhow!(other),
    }
}
