//! Client-side TLS towards upstreams: web PKI roots plus extra CAs from PEM
//! files, ALPN `http/1.1` (WebSockets run over HTTP/1.1), or no
//! verification at all when the user asks for it (`--insecure`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{provider, TlsError};

/// How to trust upstream certificates.
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    /// PEM files with more trusted roots.
    pub extra_roots: Vec<PathBuf>,
    /// Accept any certificate.
    pub insecure: bool,
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// A client config for upstream connections.
pub fn client_config(opts: &TrustOptions) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_verifier(server_verifier(opts)?)
}

/// How certificates are judged under `opts`: the web PKI roots plus the
/// extra ones, or nothing at all (`--insecure`). Separate from
/// [`client_config`] so `check` can wrap it and still see a certificate
/// that fails verification.
pub fn server_verifier(opts: &TrustOptions) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    if opts.insecure {
        return Ok(Arc::new(AcceptAnything(provider())));
    }
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in &opts.extra_roots {
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
    }
    // what `with_root_certificates` builds: no CRLs, the provider's algorithms
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
}

/// A client config around `verifier`, with ALPN `http/1.1`.
pub fn client_config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify and send as SNI: a DNS name, or an IP address
/// (which rustls matches against IP SANs and does not send as SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))
}

/// `--insecure`: every certificate passes; signatures are still checked
/// so the session keys are real.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
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
