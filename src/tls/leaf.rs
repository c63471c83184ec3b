//! Leaf certificates for intercepted hosts, minted on demand and signed by
//! the local CA: SAN = the host (DNS name or IP address), a validity of
//! days, a bounded cache. Leaf keys live in memory only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;

use super::ca::LocalCa;
use super::{provider, TlsError};

/// Hosts kept by default: plenty for a browsing session, a few MB at most.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;
/// Covers clients whose clocks run a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A week: far below the 398 days browsers accept, and long enough that a
/// cached leaf never expires during a session (it is reminted daily).
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Cached leaves older than this are minted again, so a served leaf always
/// has days of validity left.
const REMINT_AFTER: Duration = Duration::from_secs(24 * 3600);
/// X.520 limits a common name to 64 characters; longer names go in the
/// SAN only (which is all clients check anyway).
const MAX_CN: usize = 64;

/// The host as a certificate names it: lowercase, no brackets, no
/// trailing dot, and whether it is an IP address.
fn san_for(host: &str) -> Result<(String, SanType), TlsError> {
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let invalid = |detail: String| TlsError::LeafName {
        host: host.to_string(),
        detail,
    };
    match ServerName::try_from(bare.as_str()).map_err(|e| invalid(e.to_string()))? {
        ServerName::IpAddress(ip) => {
            let ip = std::net::IpAddr::from(ip);
            Ok((ip.to_string(), SanType::IpAddress(ip)))
        }
        ServerName::DnsName(_) => {
            let ia5 = bare
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| invalid(e.to_string()))?;
            Ok((bare, SanType::DnsName(ia5)))
        }
        _ => Err(invalid("not a DNS name or IP address".into())),
    }
}

/// Makes one leaf for `host`, signed by `ca`.
pub(crate) fn mint(ca: &LocalCa, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let (name, san) = san_for(host)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![san];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wstap");
    if name.len() <= MAX_CN {
        dn.push(DnType::CommonName, name.as_str());
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + VALIDITY).into();
    // The serial number defaults to a hash of the fresh public key, so each
    // leaf has its own.
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(TlsError::Generate)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider().key_provider.load_private_key(der)?;
    // The CA goes along in the chain: clients that trust it ignore it,
    // and Chromium's --ignore-certificate-errors-spki-list only matches
    // keys of certificates the server presents.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone(), ca.cert_der().clone()],
        signing_key,
    )))
}

struct Entry {
    leaf: Arc<CertifiedKey>,
    minted: Instant,
    last_used: u64,
}

struct Cache {
    entries: HashMap<String, Entry>,
    /// A use counter: the entry with the lowest `last_used` goes first.
    tick: u64,
}

/// Mints leaves per host and keeps the most recently used ones.
pub struct LeafMinter {
    ca: LocalCa,
    capacity: usize,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for LeafMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafMinter")
            .field("ca", &self.ca)
            .field("capacity", &self.capacity)
            .field("cached", &self.cached())
            .finish()
    }
}

impl LeafMinter {
    pub fn new(ca: LocalCa) -> Self {
        Self::with_capacity(ca, DEFAULT_CACHE_CAPACITY)
    }

    pub fn with_capacity(ca: LocalCa, capacity: usize) -> Self {
        LeafMinter {
            ca,
            capacity: capacity.max(1),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                tick: 0,
            }),
        }
    }

    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    /// How many leaves are cached.
    pub fn cached(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic elsewhere while holding the lock leaves a cache that is
        // still consistent (every write is a single insert or remove).
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leaf for `host`, from the cache or freshly minted.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let (name, _) = san_for(host)?;
        {
            let mut cache = self.lock();
            cache.tick += 1;
            let tick = cache.tick;
            if let Some(e) = cache.entries.get_mut(&name) {
                if e.minted.elapsed() < REMINT_AFTER {
                    e.last_used = tick;
                    return Ok(e.leaf.clone());
                }
            }
        }
        // Minted outside the lock: key generation and signing take a
        // moment, and other hosts should not wait for it. Two connections
        // racing for a new host may both mint; the last one is kept.
        let leaf = mint(&self.ca, &name)?;
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        if !cache.entries.contains_key(&name) && cache.entries.len() >= self.capacity {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.entries.remove(&k);
            }
        }
        cache.entries.insert(
            name,
            Entry {
                leaf: leaf.clone(),
                minted: Instant::now(),
                last_used: tick,
            },
        );
        Ok(leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::TempDir;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::UnixTime;

    fn verifier(ca: &LocalCa) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap()
    }

    fn verify(ca: &LocalCa, leaf: &CertifiedKey, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier(ca)
            .verify_server_cert(&leaf.cert[0], &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn leaves_verify_for_their_host_only() {
        let tmp = TempDir::new("leaf");
        let (ca, _) = LocalCa::load_or_create(&tmp.0).unwrap();
        let minter = LeafMinter::new(ca);
        let dns = minter.leaf("Example.TEST.").unwrap();
        verify(minter.ca(), &dns, "example.test").unwrap();
        let e = verify(minter.ca(), &dns, "other.test").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{e:?}"
        );
        // An IP literal needs an IP SAN: a DNS SAN "127.0.0.1" would not do.
        let ip = minter.leaf("127.0.0.1").unwrap();
        verify(minter.ca(), &ip, "127.0.0.1").unwrap();
        let v6 = minter.leaf("[::1]").unwrap();
        verify(minter.ca(), &v6, "::1").unwrap();
        assert!(verify(minter.ca(), &v6, "127.0.0.1").is_err());
        // The key in memory belongs to the certificate, and the chain
        // carries the CA after the leaf.
        dns.keys_match().unwrap();
        assert_eq!(dns.cert.len(), 2);
        assert_eq!(&dns.cert[1], minter.ca().cert_der());
    }

    #[test]
    fn the_cache_returns_the_same_leaf_and_stays_bounded() {
        let tmp = TempDir::new("leaf-cache");
        let (ca, _) = LocalCa::load_or_create(&tmp.0).unwrap();
        let minter = LeafMinter::with_capacity(ca, 3);
        let a = minter.leaf("a.test").unwrap();
        assert!(Arc::ptr_eq(&a, &minter.leaf("A.test").unwrap()));
        minter.leaf("b.test").unwrap();
        minter.leaf("c.test").unwrap();
        // a is used again, so b is now the least recently used
        minter.leaf("a.test").unwrap();
        minter.leaf("d.test").unwrap();
        assert_eq!(minter.cached(), 3);
        assert!(Arc::ptr_eq(&a, &minter.leaf("a.test").unwrap()));
        let cache = minter.lock();
        assert!(!cache.entries.contains_key("b.test"));
        assert!(cache.entries.contains_key("d.test"));
    }

    #[test]
    fn names_that_no_certificate_can_carry_are_refused() {
        let tmp = TempDir::new("leaf-bad");
        let (ca, _) = LocalCa::load_or_create(&tmp.0).unwrap();
        let minter = LeafMinter::new(ca);
        for bad in ["", "exa mple.test", "bücher.test", "a..b"] {
            let e = minter.leaf(bad).unwrap_err();
            assert!(matches!(e, TlsError::LeafName { .. }), "{bad:?}: {e}");
        }
        assert_eq!(minter.cached(), 0);
    }
}
