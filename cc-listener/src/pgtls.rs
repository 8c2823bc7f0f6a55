//! How a listener reaches PostgreSQL: the `--db` URL read once into
//! [`Target`] (the client's settings, the TLS mode and the CA file), the
//! connection itself ([`connect`]), and what a failure says
//! ([`PgError`], [`ConnectError`]).
//!
//! TLS is rustls with the ring provider, as on the agent address. The
//! modes are libpq's, spelled as libpq spells them in the URL
//! (`?sslmode=verify-full&sslrootcert=/etc/croncommander/db-ca.pem`):
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it, else plain | not checked |
//! | `require` | always | not checked; with `sslrootcert`, its chain is (as `verify-ca`) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host in the URL |
//!
//! Only `verify-full` stops a machine in the middle that can answer for
//! the database's address; `prefer` and `require` stop only one that
//! listens. `verify-ca` and `verify-full` need `sslrootcert` (a PEM file):
//! there is no default CA. No client certificates; no channel binding
//! (SCRAM runs without it, as with libpq when the server does not
//! offer it).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// How long a connection attempt may take when the URL sets no
/// `connect_timeout`: an address that drops packets fails instead of
/// hanging the listener's start.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// libpq's `sslmode`, as this listener reads it (the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => bail!(
                "sslmode=allow is not supported: use prefer (TLS if the server offers it) or disable"
            ),
            other => bail!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A PostgreSQL database as `--db` names it, read once.
#[derive(Debug, Clone)]
pub struct Target {
    config: postgres::Config,
    mode: SslMode,
    root: Option<PathBuf>,
}

impl Target {
    /// Reads a `postgres://` URL. `sslmode` and `sslrootcert` are read
    /// here (the client library knows neither `verify-*` nor a CA file);
    /// every other setting is the client library's. Errors never show the
    /// password.
    pub fn parse(url: &str) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Self::words(url);
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = SslMode::Prefer;
        let mut root = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = SslMode::parse(&percent_decode(value)?)?,
                "sslrootcert" => root = Some(PathBuf::from(percent_decode(value)?)),
                _ => rest.push(pair),
            }
        }
        anyhow::ensure!(
            root.is_some() || !matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull),
            "sslmode={} needs sslrootcert=PATH (a PEM file of the CA that signed the server's certificate)",
            mode.as_str()
        );
        // What the client library itself does: nothing, or TLS it must
        // get; what is verified is this module's.
        rest.push(match mode {
            SslMode::Disable => "sslmode=disable",
            SslMode::Prefer => "sslmode=prefer",
            _ => "sslmode=require",
        });
        let mut config = postgres::Config::from_str(&format!("{base}?{}", rest.join("&")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        Ok(Self { config, mode, root })
    }

    /// `key=value` words (what [`crate::store::Store::open_postgres`]
    /// also takes; `--db` takes URLs only): the client library's settings
    /// as they are, with the TLS modes it knows and no CA.
    fn words(settings: &str) -> Result<Self> {
        use postgres::config::SslMode as Client;
        let mut config = postgres::Config::from_str(settings)?;
        let mode = match config.get_ssl_mode() {
            Client::Disable => SslMode::Disable,
            Client::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        Ok(Self {
            config,
            mode,
            root: None,
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The database's name, if the URL gives one.
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// Every address a connection tries, `host:port`, comma-separated.
    pub fn addresses(&self) -> String {
        use postgres::config::Host;
        let ports = self.config.get_ports();
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
            })
            .collect();
        if hosts.is_empty() {
            "the default socket".to_owned()
        } else {
            hosts.join(", ")
        }
    }

    /// The TLS connector of this target's mode.
    fn tls(&self) -> Result<MakeRustls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let mut config = match (&self.root, self.mode) {
            (_, SslMode::Disable) => return Ok(MakeRustls(None)),
            (None, _) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DangerAnyCertificate(provider)))
                .with_no_client_auth(),
            (Some(root), SslMode::VerifyFull) => builder
                .with_root_certificates(roots(root)?)
                .with_no_client_auth(),
            (Some(root), _) => {
                let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(root)?),
                    provider,
                )
                .build()?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                    .with_no_client_auth()
            }
        };
        // What PostgreSQL 17's direct TLS negotiation asks for; harmless
        // to older servers.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustls(Some(Arc::new(config))))
    }
}

/// Connects to `url` (a `postgres://` URL with libpq's TLS settings). The
/// error names the addresses tried and the TLS mode, and carries the
/// server's own words ([`ConnectError`]).
pub fn connect(url: &str) -> Result<postgres::Client> {
    let target = Target::parse(url).map_err(|e| anyhow!("the PostgreSQL URL: {e:#}"))?;
    let tls = target.tls().context("setting up TLS to PostgreSQL")?;
    target.config.connect(tls).map_err(|e| {
        anyhow::Error::new(ConnectError {
            at: target.addresses(),
            mode: target.mode,
            error: PgError(e),
        })
    })
}

/// The CA certificates in the PEM file `path`.
fn roots(path: &Path) -> Result<rustls::RootCertStore> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        store
            .add(cert.with_context(|| format!("parsing {}", path.display()))?)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    anyhow::ensure!(!store.is_empty(), "{} holds no certificate", path.display());
    Ok(store)
}

/// `%XX` escapes of a URL's query value.
fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("a bad %-escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("{text:?} is not UTF-8 once unescaped"))
}

/// A PostgreSQL error as a person needs it on one line: the server's
/// severity, message, SQLSTATE, detail and hint, or the client's failure
/// with every cause (a refused connection, a certificate not trusted).
/// The original stays inside (`is_constraint` reads its code).
#[derive(Debug)]
pub struct PgError(pub postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            write!(
                f,
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            )?;
            if let Some(detail) = db.detail() {
                write!(f, "; DETAIL: {}", detail.replace('\n', " "))?;
            }
            if let Some(hint) = db.hint() {
                write!(f, "; HINT: {}", hint.replace('\n', " "))?;
            }
            return Ok(());
        }
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Its text holds every cause already.
impl std::error::Error for PgError {}

/// A connection that could not be opened: where, how, and why —
/// `connecting to PostgreSQL: HOST:PORT (sslmode=MODE): WHY`.
#[derive(Debug)]
pub struct ConnectError {
    at: String,
    mode: SslMode,
    error: PgError,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connecting to PostgreSQL: {} (sslmode={}): {}",
            self.at,
            self.mode.as_str(),
            self.error
        )?;
        if let Some(hint) = certificate_hint(&self.error.0) {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// What to do about a server certificate rustls refused, in words.
fn certificate_hint(e: &postgres::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(c)) = inner {
            return Some(match c {
                C::UnknownIssuer | C::BadSignature => {
                    "the server's certificate is not signed by a CA in sslrootcert"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "the server's certificate does not name the host in the URL: \
                     reach the server by a name its certificate holds"
                }
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => {
                    "the server's certificate is outside its validity dates"
                }
                _ => return None,
            });
        }
        source = s.source();
    }
    None
}

impl std::error::Error for ConnectError {}

// ---- the connector: rustls under the client library ----

/// Makes a TLS session per connection; `None`: `sslmode=disable` (the
/// client library never asks).
#[derive(Debug, Clone)]
struct MakeRustls(Option<Arc<rustls::ClientConfig>>);

impl MakeTlsConnect<postgres::Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = std::io::Error;

    /// `domain` is the host as the URL names it; one that is not a name
    /// (a socket directory) fails only if TLS is attempted on it.
    fn make_tls_connect(&mut self, domain: &str) -> std::io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_owned()).map_err(|_| domain.to_owned()),
        })
    }
}

#[derive(Debug)]
struct RustlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    name: Result<ServerName<'static>, String>,
}

impl TlsConnect<postgres::Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: postgres::Socket) -> Self::Future {
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let config = self
                .config
                .ok_or_else(|| invalid("TLS was asked for with sslmode=disable".into()))?;
            let name = self
                .name
                .map_err(|h| invalid(format!("{h:?} is not a host name TLS can check")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS session with the server.
#[derive(Debug)]
pub struct RustlsStream(Box<tokio_rustls::client::TlsStream<postgres::Socket>>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

// ---- what is checked of the server's certificate ----

/// `require` and `prefer` without a CA: the session is encrypted and its
/// handshake signed by the certificate's key, but whose key that is goes
/// unchecked (libpq's meaning of both modes).
#[derive(Debug)]
struct DangerAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for DangerAnyCertificate {
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
        dss: &rustls::DigitallySignedStruct,
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with a CA): the chain must end at the CA;
/// the name in the certificate is not compared with the host. WebPKI checks
/// the chain before the name, so a name error means the chain held.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_settings_are_read_and_the_rest_left_to_the_client() {
        let t = Target::parse("postgres://u:pw@db.example:6543/cc").unwrap();
        assert_eq!(t.mode(), SslMode::Prefer);
        assert_eq!(t.addresses(), "db.example:6543");
        assert_eq!(t.dbname(), Some("cc"));
        let t = Target::parse(
            "postgres://u@h/cc?application_name=x&sslmode=verify-full&sslrootcert=/etc/c%20a.pem",
        )
        .unwrap();
        assert_eq!(t.mode(), SslMode::VerifyFull);
        assert_eq!(t.root.as_deref(), Some(Path::new("/etc/c a.pem")));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(
            t.config.get_ssl_mode(),
            postgres::config::SslMode::Require,
            "verify-full asks the client library for TLS"
        );
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        let t = Target::parse("host=h dbname=cc sslmode=require").unwrap();
        assert_eq!(
            (t.mode(), t.addresses()),
            (SslMode::Require, "h:5432".into())
        );
        let t = Target::parse("postgres://h/cc?sslmode=disable&connect_timeout=2").unwrap();
        assert_eq!(t.mode(), SslMode::Disable);
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(2))
        );
        for (url, says) in [
            ("postgres://h/cc?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://h/cc?sslmode=verify-ca", "needs sslrootcert"),
            ("postgres://h/cc?sslmode=allow", "not supported"),
            ("postgres://h/cc?sslmode=bogus", "not one of"),
            ("postgres://h/cc?sslrootcert=%zz", "%-escape"),
        ] {
            let e = format!("{:#}", Target::parse(url).unwrap_err());
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let t =
            Target::parse("postgres://h/cc?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .unwrap();
        let e = format!("{:#}", t.tls().unwrap_err());
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
