//! The rustls side of the database connection: a tokio-postgres
//! `MakeTlsConnect` that checks the server as [`TlsParams`] says, presents a
//! client certificate when one is given, and words TLS failures in one line.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

use super::{Roots, SslMode, TlsParams};

/// Makes the TLS session of each connection; cheap to clone.
#[derive(Clone)]
pub struct MakeRustls {
    /// None for `sslmode=disable` (tokio-postgres then never asks for TLS).
    config: Option<Arc<ClientConfig>>,
}

impl MakeRustls {
    /// Reads the root and client certificates the parameters name. The
    /// error is one line naming the parameter and the file.
    pub fn new(params: &TlsParams) -> Result<MakeRustls, String> {
        if params.mode == SslMode::Disable {
            return Ok(MakeRustls { config: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("setting up TLS: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&params.roots, params.mode) {
            (Some(roots), SslMode::VerifyCa) => Arc::new(ChainOnly(webpki(roots, &provider)?)),
            (Some(roots), SslMode::VerifyFull) => webpki(roots, &provider)?,
            _ => Arc::new(Unchecked(provider)),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &params.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let pem = read(cert, "sslcert")?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "sslcert {}: no PEM certificate in it",
                        cert.display()
                    ));
                }
                let pem = read(key, "sslkey")?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| format!("sslkey {}: no usable private key: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
        };
        Ok(MakeRustls {
            config: Some(Arc::new(config)),
        })
    }
}

fn read(path: &std::path::Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

fn webpki(
    roots: &Roots,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let pem = read(path, "sslrootcert")?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no PEM certificate in it",
                    path.display()
                ));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "sslrootcert=system: the system's trust store has no certificates".into(),
                );
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("sslrootcert: {e}"))
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            // Empty for Unix-domain sockets, where no TLS is made.
            name: ServerName::try_from(domain.to_string()).ok(),
        })
    }
}

/// The TLS handshake of one connection.
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| io::Error::other("TLS is turned off (sslmode=disable)"))?;
            let name = self
                .name
                .ok_or_else(|| io::Error::other("no host name to make a TLS connection to"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A database connection inside TLS.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM then runs without channel binding (tokio-postgres's default,
        // channel_binding=prefer, allows it).
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `prefer` and `require`: encrypted, but any certificate is taken (libpq's
/// meaning). The handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
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

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// checked. webpki checks the chain before the name, so a name error means
/// the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A failed connection in one line that names the cause: the server's
/// certificate, its name, a missing client certificate, or a server that
/// refuses cleartext.
pub fn describe(e: &tokio_postgres::Error, params: &TlsParams) -> String {
    if let Some(db) = e.as_db_error() {
        let mut line = format!("{}: {}", db.severity(), db.message());
        if db.message().ends_with("no encryption") {
            line.push_str(&format!(
                " (the server accepts only TLS connections from here; sslmode={} did not make one: use sslmode=require or stronger)",
                params.mode.name()
            ));
        } else if db.message().contains("client certificate") && params.client.is_none() {
            line.push_str(" (set sslcert and sslkey to present one)");
        }
        if let Some(detail) = db.detail() {
            line.push_str(&format!("; {}", detail.replace('\n', " ")));
        }
        return line;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let tls = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return format!("TLS handshake failed: {}", describe_tls(tls, params));
        }
        source = s.source();
    }
    // tokio-postgres's own text, with its causes.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    let text = text.replace('\n', " ");
    if text.contains("server does not support TLS") {
        return format!(
            "the server does not offer TLS, and sslmode={} requires it (is ssl = on in its postgresql.conf?)",
            params.mode.name()
        );
    }
    text
}

fn describe_tls(e: &rustls::Error, params: &TlsParams) -> String {
    let roots = match &params.roots {
        Some(Roots::File(path)) => format!("sslrootcert={}", path.display()),
        Some(Roots::System) => "the system's trust store".to_string(),
        None => "no root given".to_string(),
    };
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the server's certificate is not signed by a trusted root ({roots})")
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "the server's certificate is not valid for the host name {} (it names {}); sslmode=verify-full checks the name",
            expected.to_str(),
            presented
                .iter()
                .map(|p| plain_name(p))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the server's certificate is not valid for the host name connected to; sslmode=verify-full checks the name".into()
        }
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate was refused ({other:?}; checked against {roots})")
        }
        rustls::Error::AlertReceived(alert) if params.client.is_none() => format!(
            "the server ended the handshake ({alert:?}); if it wants a client certificate, set sslcert and sslkey"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake or the client certificate ({alert:?})")
        }
        other => other.to_string(),
    }
}

/// `DnsName("db.internal")` or `IpAddress(10.0.0.7)` (rustls's wording of
/// a certificate's names) as `db.internal`, `10.0.0.7`.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|r| r.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

#[cfg(test)]
mod tests {
    #[test]
    fn certificate_names_are_shown_plainly() {
        assert_eq!(super::plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(super::plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(super::plain_name("other"), "other");
    }
}
