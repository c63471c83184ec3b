//! The local CA that signs interception certificates: loaded from its
//! directory, or created there once. The key file is made with mode 0600
//! and never overwritten; the key is never logged or written anywhere else.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{provider, TlsError};

/// The CA certificate's file name inside the CA directory.
pub const CERT_FILE: &str = "wstap-ca.pem";
/// The CA key's file name inside the CA directory.
pub const KEY_FILE: &str = "wstap-ca-key.pem";
/// The CA's common name, as trust stores list it.
pub const CA_COMMON_NAME: &str = "wstap local CA";

/// Ten years, like mkcert: the CA is trusted once, by hand, so it should
/// outlive the machine; the leaves it signs are the short-lived ones.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Backdating covers clients whose clocks run a little behind.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// Where the CA lives by default: `$XDG_DATA_HOME/wstap`, else
/// `~/.local/share/wstap` (macOS: `~/Library/Application Support/wstap`).
pub fn default_dir() -> Result<PathBuf, TlsError> {
    default_dir_from(
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn default_dir_from(xdg: Option<PathBuf>, home: Option<PathBuf>) -> Result<PathBuf, TlsError> {
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = xdg.filter(|p| p.is_absolute()) {
        if !cfg!(target_os = "macos") {
            return Ok(xdg.join("wstap"));
        }
    }
    let home = home.filter(|p| p.is_absolute()).ok_or(TlsError::NoHome)?;
    if cfg!(target_os = "macos") {
        Ok(home.join("Library/Application Support/wstap"))
    } else {
        Ok(home.join(".local/share/wstap"))
    }
}

/// The two files of a CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which of the two files exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaState {
    Absent,
    Complete,
    /// Exactly one of the two files exists.
    Partial {
        cert: bool,
    },
}

impl CaFiles {
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        CaFiles {
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
            dir,
        }
    }

    /// Looks at the files without reading them. A dangling symlink counts
    /// as present: creating a file there would write through it.
    pub fn state(&self) -> CaState {
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        match (exists(&self.cert), exists(&self.key)) {
            (false, false) => CaState::Absent,
            (true, true) => CaState::Complete,
            (cert, _) => CaState::Partial { cert },
        }
    }

    /// Both files exist; otherwise the error says which is missing.
    pub fn check_complete(&self) -> Result<(), TlsError> {
        match self.state() {
            CaState::Complete => Ok(()),
            CaState::Absent => Err(TlsError::CaMissing {
                dir: self.dir.display().to_string(),
            }),
            CaState::Partial { cert } => Err(self.partial_error(cert)),
        }
    }

    /// The error for a directory holding one file of the pair.
    fn partial_error(&self, cert_present: bool) -> TlsError {
        let (present, missing) = if cert_present {
            (&self.cert, &self.key)
        } else {
            (&self.key, &self.cert)
        };
        TlsError::CaPartial {
            present: present.display().to_string(),
            missing: missing.display().to_string(),
        }
    }
}

/// A CA that can sign leaf certificates.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    files: CaFiles,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of every output, Debug included.
        f.debug_struct("LocalCa")
            .field("cert", &self.files.cert)
            .field("key", &"[elided]")
            .finish()
    }
}

/// Whether [`LocalCa::load_or_create`] made a new CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Created,
    Loaded,
}

impl LocalCa {
    /// Loads the CA in `dir`, or creates it when neither file exists. One
    /// file without the other is an error: overwriting it could throw away
    /// a CA that users already trust.
    pub fn load_or_create(dir: &Path) -> Result<(LocalCa, Origin), TlsError> {
        let files = CaFiles::in_dir(dir);
        match files.state() {
            CaState::Complete => Ok((Self::load_files(files)?, Origin::Loaded)),
            CaState::Absent => match Self::create(files.clone()) {
                Ok(ca) => Ok((ca, Origin::Created)),
                // Another process created it between our look and our
                // create_new: use theirs.
                Err(TlsError::CaExists { .. }) if files.state() == CaState::Complete => {
                    Ok((Self::load_files(files)?, Origin::Loaded))
                }
                Err(e) => Err(e),
            },
            CaState::Partial { cert } => Err(files.partial_error(cert)),
        }
    }

    /// Loads an existing CA; an error if there is none.
    pub fn load(dir: &Path) -> Result<LocalCa, TlsError> {
        let files = CaFiles::in_dir(dir);
        files.check_complete()?;
        Self::load_files(files)
    }

    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }

    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)) of the CA key: what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes to trust this CA
    /// without touching the system store.
    pub fn spki_sha256(&self) -> String {
        use base64::Engine;
        use rcgen::PublicKeyData;
        let spki = self.issuer.key().subject_public_key_info();
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    fn create(files: CaFiles) -> Result<LocalCa, TlsError> {
        create_private_dir(&files.dir)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        let mut params = ca_params(&key);
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        if let Err(e) = write_new(&files.cert, cert.pem().as_bytes(), 0o644) {
            // The key file is ours, made a moment ago: removing it keeps
            // the directory from being stuck half-created.
            let _ = fs::remove_file(&files.key);
            return Err(e);
        }
        tracing::info!(cert = %files.cert.display(), "created the local CA");
        Ok(LocalCa {
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            files,
        })
    }

    fn load_files(files: CaFiles) -> Result<LocalCa, TlsError> {
        let certs = super::client::load_certs(&files.cert)?;
        let cert_der = certs
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                path: files.cert.display().to_string(),
            })?;
        warn_if_readable_by_others(&files.key);
        let key_pem = fs::read_to_string(&files.key).map_err(|source| TlsError::Read {
            path: files.key.display().to_string(),
            source,
        })?;
        // rcgen's error names no key material; ours names only the path.
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::CaKey {
            path: files.key.display().to_string(),
            detail: e.to_string(),
        })?;
        drop(key_pem);
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::sign::CertifiedKey::from_der(vec![cert_der.clone()], pkcs8, &provider()).map_err(
            |e| TlsError::CaMismatch {
                cert: files.cert.display().to_string(),
                key: files.key.display().to_string(),
                detail: e.to_string(),
            },
        )?;
        let params = ca_params(&key);
        let ca = LocalCa {
            issuer: Issuer::new(params, key),
            cert_der,
            files,
        };
        ca.check_signs_verifiable_leaves()?;
        Ok(ca)
    }

    /// The issuer is rebuilt from the key rather than parsed from the
    /// certificate, so a certificate made by another tool (other subject)
    /// or an expired one would only show up in clients. A probe leaf
    /// verified against the loaded certificate catches both here.
    fn check_signs_verifiable_leaves(&self) -> Result<(), TlsError> {
        let probe = "probe.wstap.invalid";
        let leaf = super::leaf::mint(self, probe)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::CaUnusable {
            cert: self.files.cert.display().to_string(),
            detail: e.to_string(),
        })?;
        let name =
            rustls::pki_types::ServerName::try_from(probe).map_err(|e| TlsError::CaUnusable {
                cert: self.files.cert.display().to_string(),
                detail: e.to_string(),
            })?;
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map_err(|e| TlsError::CaUnusable {
                cert: self.files.cert.display().to_string(),
                detail: e.to_string(),
            })?;
        Ok(())
    }
}

/// The CA's certificate parameters. The subject is derived from the key
/// alone (its identifier goes into the OU), so loading rebuilds exactly
/// the name the certificate carries without parsing X.509, and two
/// wstap CAs in one trust store still have different names.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id = params.key_identifier(key);
    let short: String = id.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wstap");
    dn.push(DnType::OrganizationalUnitName, format!("local CA {short}"));
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.display().to_string(),
        source,
    })
}

/// Creates `path` with `mode`, failing if anything is there already:
/// the mode applies from the first byte, and nothing is overwritten.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::CaExists {
                path: path.display().to_string(),
            }
        } else {
            TlsError::Write {
                path: path.display().to_string(),
                source,
            }
        }
    })?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Write {
            path: path.display().to_string(),
            source,
        })
}

fn warn_if_readable_by_others(key: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(key) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %key.display(),
                    mode = format!("{mode:o}"),
                    "the CA key is readable by other users; run chmod 600 on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = key;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::TempDir;

    #[test]
    fn creates_once_with_a_private_key_file_then_loads() {
        let tmp = TempDir::new("ca");
        let dir = tmp.0.join("nested/ca");
        let (ca, origin) = LocalCa::load_or_create(&dir).unwrap();
        assert_eq!(origin, Origin::Created);
        assert_eq!(ca.cert_path(), dir.join(CERT_FILE));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key_mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(key_mode & 0o777, 0o600);
            let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        let cert_before = fs::read(dir.join(CERT_FILE)).unwrap();
        let key_before = fs::read(dir.join(KEY_FILE)).unwrap();
        assert!(String::from_utf8_lossy(&key_before).contains("PRIVATE KEY"));

        let (again, origin) = LocalCa::load_or_create(&dir).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(fs::read(dir.join(CERT_FILE)).unwrap(), cert_before);
        assert_eq!(fs::read(dir.join(KEY_FILE)).unwrap(), key_before);
        assert!(!format!("{again:?}").contains("PRIVATE"));
        // the pin is over the SubjectPublicKeyInfo exactly as the
        // certificate carries it, and survives a reload
        use rcgen::PublicKeyData;
        let spki = ca.issuer().key().subject_public_key_info();
        assert!(ca
            .cert_der()
            .windows(spki.len())
            .any(|w| w == spki.as_slice()));
        assert_eq!(again.spki_sha256(), ca.spki_sha256());
        assert_eq!(ca.spki_sha256().len(), 44);
    }

    #[test]
    fn one_file_without_the_other_is_refused_and_left_alone() {
        let tmp = TempDir::new("ca-partial");
        LocalCa::load_or_create(&tmp.0).unwrap();
        let key = fs::read(tmp.0.join(KEY_FILE)).unwrap();
        fs::remove_file(tmp.0.join(CERT_FILE)).unwrap();
        let e = LocalCa::load_or_create(&tmp.0).unwrap_err();
        assert!(matches!(e, TlsError::CaPartial { .. }), "{e}");
        assert!(e.to_string().contains(CERT_FILE), "{e}");
        assert_eq!(fs::read(tmp.0.join(KEY_FILE)).unwrap(), key);
        assert!(!tmp.0.join(CERT_FILE).exists());
    }

    #[test]
    fn a_key_from_another_ca_is_named_as_a_mismatch() {
        let a = TempDir::new("ca-a");
        let b = TempDir::new("ca-b");
        LocalCa::load_or_create(&a.0).unwrap();
        LocalCa::load_or_create(&b.0).unwrap();
        fs::copy(b.0.join(KEY_FILE), a.0.join(KEY_FILE)).unwrap();
        let e = LocalCa::load(&a.0).unwrap_err();
        assert!(matches!(e, TlsError::CaMismatch { .. }), "{e}");
        // The message names files, never key material.
        assert!(!e.to_string().contains("BEGIN"), "{e}");
    }

    #[test]
    fn a_ca_certificate_from_another_tool_is_refused() {
        // Same key, different subject: leaves would name an issuer that
        // does not match the certificate clients trust.
        let tmp = TempDir::new("ca-foreign");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        fs::write(tmp.0.join(CERT_FILE), cert.pem()).unwrap();
        fs::write(tmp.0.join(KEY_FILE), key.serialize_pem()).unwrap();
        let e = LocalCa::load(&tmp.0).unwrap_err();
        assert!(matches!(e, TlsError::CaUnusable { .. }), "{e}");
    }

    #[test]
    fn load_without_a_ca_says_so() {
        let tmp = TempDir::new("ca-none");
        let e = LocalCa::load(&tmp.0).unwrap_err();
        assert!(matches!(e, TlsError::CaMissing { .. }), "{e}");
    }

    #[test]
    fn default_dir_follows_xdg_then_home() {
        let xdg = Some(PathBuf::from("/x/data"));
        let home = Some(PathBuf::from("/home/u"));
        let rel = Some(PathBuf::from("relative"));
        if cfg!(target_os = "macos") {
            assert_eq!(
                default_dir_from(xdg, home).unwrap(),
                PathBuf::from("/home/u/Library/Application Support/wstap")
            );
        } else {
            assert_eq!(
                default_dir_from(xdg, home.clone()).unwrap(),
                PathBuf::from("/x/data/wstap")
            );
            assert_eq!(
                default_dir_from(rel, home).unwrap(),
                PathBuf::from("/home/u/.local/share/wstap")
            );
        }
        assert!(matches!(
            default_dir_from(None, None),
            Err(TlsError::NoHome)
        ));
    }
}
