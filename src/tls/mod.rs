//! TLS for both sides of the proxy: trust for `wss://`/`https://` upstreams,
//! the listener's certificates, and the interception CA with its leaves.
//! Uses rustls with the ring provider throughout.

pub mod ca;
pub mod client;
pub mod leaf;
pub mod server;

use std::sync::Arc;

/// The crypto provider every config in wstap uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors in setting TLS up: files, certificates, keys, the CA. None of
/// them carries key material, only paths and causes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: {detail}")]
    Pem { path: String, detail: String },
    #[error("{path} holds no usable private key: {detail}")]
    Key { path: String, detail: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {detail}")]
    KeyMismatch {
        cert: String,
        key: String,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("no home directory ($HOME is unset): give the CA directory explicitly")]
    NoHome,
    #[error("no wstap CA in {dir} yet: create it with `wstap ca init`")]
    CaMissing { dir: String },
    #[error(
        "{present} exists but {missing} does not; wstap will not overwrite half a CA: \
         restore the missing file, or move {present} away to create a new CA"
    )]
    CaPartial { present: String, missing: String },
    #[error("{path} already exists; wstap never overwrites CA files")]
    CaExists { path: String },
    #[error("{path} is not a usable CA key: {detail}")]
    CaKey { path: String, detail: String },
    #[error("the CA key {key} does not belong to the certificate {cert}: {detail}")]
    CaMismatch {
        cert: String,
        key: String,
        detail: String,
    },
    #[error(
        "the CA certificate {cert} cannot sign leaves that verify ({detail}); \
         was it made by another tool, or has it expired? Move the directory's two files away \
         and run `wstap ca init` again"
    )]
    CaUnusable { cert: String, detail: String },
    #[error("cannot make a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("cannot make a certificate for {host:?}: {detail}")]
    LeafName { host: String, detail: String },
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let p = std::env::temp_dir().join(format!(
                "wstap-{tag}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
