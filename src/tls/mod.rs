//! TLS for both sides of the proxy: trust for `wss://`/`https://` upstreams,
//! and (later) the listener's certificates and the interception CA.
//! Uses rustls with the ring provider throughout.

pub mod client;

use std::sync::Arc;

/// The crypto provider every config in wstap uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: {detail}")]
    Pem { path: String, detail: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}
