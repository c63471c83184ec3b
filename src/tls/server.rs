//! Server-side TLS: the listener's config from `--tls-cert/--tls-key`, the
//! interception acceptor that answers each ClientHello with a leaf minted
//! for its name, and the naming of client handshake failures (a client
//! that refuses the certificate is told apart from one that is not TLS).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage};
use rustls::sign::SingleCertAndKey;
use rustls::{AlertDescription, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::leaf::LeafMinter;
use super::{provider, TlsError};
use crate::proto::failure::ClientTlsFailure;

/// wstap speaks HTTP/1.1 to clients (WebSockets over h2 are out of scope),
/// so that is the one protocol it offers.
const ALPN: &[u8] = b"http/1.1";

/// A server config that serves `certs` (leaf first) with `key`.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::Error as PemError;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        PemError::Io(source) => TlsError::Read {
            path: path.display().to_string(),
            source,
        },
        PemError::NoItemsFound => TlsError::Key {
            path: path.display().to_string(),
            detail: "no PEM private key in it".into(),
        },
        other => TlsError::Key {
            path: path.display().to_string(),
            detail: other.to_string(),
        },
    })
}

/// The TLS listener of `--tls-cert/--tls-key`, and what to tell users
/// whose clients refuse its certificate.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    pub trust_hint: String,
}

impl ListenerTls {
    pub fn new(config: Arc<ServerConfig>, trust_hint: impl Into<String>) -> Self {
        ListenerTls {
            config,
            trust_hint: trust_hint.into(),
        }
    }

    /// Loads a PEM certificate chain and its key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = super::client::load_certs(cert)?;
        let key_der = load_key(key)?;
        let config = server_config(certs, key_der).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                detail: e.to_string(),
            },
            other => TlsError::Key {
                path: key.display().to_string(),
                detail: other.to_string(),
            },
        })?;
        let hint = format!(
            "The client does not accept the certificate from --tls-cert {}. Make it trust the \
             certificate's issuing CA (certs/README.md shows how for browsers, curl, Node and \
             Python), and connect with a name the certificate lists (an IP address needs an IP SAN).",
            cert.display()
        );
        Ok(ListenerTls::new(Arc::new(config), hint))
    }

    /// Runs the server side of a handshake on `io` within `timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<TlsStream<IO>, ClientTlsFailure>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.config.clone();
        let (stream, _) = accept_with(io, timeout, |_| Ok(config)).await?;
        Ok(stream)
    }
}

/// Reads the ClientHello, lets `choose` pick the config from it, and
/// finishes the handshake, all within one deadline. Returns the stream and
/// the name the client asked for (SNI), if it sent one.
pub async fn accept_with<IO, F>(
    io: IO,
    timeout: Duration,
    choose: F,
) -> Result<(TlsStream<IO>, Option<String>), ClientTlsFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&ClientHello<'_>) -> Result<Arc<ServerConfig>, ClientTlsFailure>,
{
    let deadline = Instant::now() + timeout;
    let timed_out = || ClientTlsFailure::Timeout { after: timeout };
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout_at(deadline, lazy).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(classify_before_hello(&e)),
        Ok(Ok(start)) => start,
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_string);
    let config = choose(&hello)?;
    match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Err(_) => Err(timed_out()),
        Ok(Err(e)) => Err(classify_after_hello(&e)),
        Ok(Ok(stream)) => Ok((stream, sni)),
    }
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

fn is_hang_up(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
    )
}

/// A failure while the ClientHello was still being read.
fn classify_before_hello(e: &io::Error) -> ClientTlsFailure {
    if let Some(re) = rustls_error(e) {
        return match re {
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                ClientTlsFailure::NotTls {
                    detail: re.to_string(),
                }
            }
            _ => ClientTlsFailure::Other {
                detail: re.to_string(),
            },
        };
    }
    if is_hang_up(e) {
        return ClientTlsFailure::ClosedBeforeHello;
    }
    ClientTlsFailure::Other {
        detail: e.to_string(),
    }
}

/// The RFC 8446 name of an alert a client sends when it rejects a
/// certificate, with what it usually means; `None` for other alerts.
fn certificate_alert(a: AlertDescription) -> Option<&'static str> {
    Some(match a {
        AlertDescription::UnknownCA => "unknown_ca: it does not trust the issuing CA",
        AlertDescription::BadCertificate => {
            "bad_certificate: often the certificate does not name the host it asked for"
        }
        AlertDescription::CertificateExpired => {
            "certificate_expired: the certificate is outside its validity (check the clocks)"
        }
        AlertDescription::CertificateUnknown => {
            "certificate_unknown: it rejected the certificate (Chromium sends this for an untrusted CA or a wrong name)"
        }
        AlertDescription::UnsupportedCertificate => "unsupported_certificate",
        AlertDescription::CertificateRevoked => "certificate_revoked",
        AlertDescription::AccessDenied => "access_denied",
        _ => return None,
    })
}

/// A failure after the ClientHello, when the client has (or is about to
/// have) our certificate.
fn classify_after_hello(e: &io::Error) -> ClientTlsFailure {
    if let Some(re) = rustls_error(e) {
        if let rustls::Error::AlertReceived(a) = re {
            if let Some(name) = certificate_alert(*a) {
                return ClientTlsFailure::Refused {
                    detail: format!("it sent the alert {name}"),
                };
            }
        }
        return ClientTlsFailure::Other {
            detail: re.to_string(),
        };
    }
    use io::ErrorKind as K;
    match e.kind() {
        // An orderly close after our flight: the client may well have read
        // the certificate and left. Node 20 and Python's asyncio (websockets
        // 17) refuse an untrusted certificate exactly so, without an alert;
        // Chromium, curl and Python's blocking ssl send one. A connection
        // dropped before the client read our flight looks the same (Chromium
        // aborts handshakes in flight when it flushes its connections once at
        // start-up): the case left ambiguous, reported as the refusal.
        K::UnexpectedEof => {
            return ClientTlsFailure::Refused {
                detail: format!(
                    "it closed the connection during the handshake, after wstap sent the \
                     certificate, without an alert (Node and Python's asyncio refuse so; \
                     Chromium also drops a handshake so when it flushes its connections \
                     at start-up: if the page then loads, ignore this) ({e})"
                ),
            }
        }
        // Our flight met a closed or reset socket: the client left without
        // reading it, so it did not judge the certificate. Chromium drops
        // spare connections so (seen with Chromium 156: a broken pipe on one
        // connection while the page loaded over its siblings).
        K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted => {
            return ClientTlsFailure::ClosedDuringHandshake {
                detail: e.to_string(),
            }
        }
        _ => {}
    }
    ClientTlsFailure::Other {
        detail: e.to_string(),
    }
}

/// Terminates TLS from clients that asked (with CONNECT) for a host:
/// answers with a leaf for the name in the ClientHello's SNI, or for the
/// CONNECT host when there is none (clients send no SNI for IP addresses).
#[derive(Debug, Clone)]
pub struct Interceptor {
    minter: Arc<LeafMinter>,
}

/// An intercepted client connection.
pub struct Intercepted<IO> {
    pub stream: TlsStream<IO>,
    /// The name the leaf was made for.
    pub host: String,
}

impl Interceptor {
    pub fn new(minter: Arc<LeafMinter>) -> Self {
        Interceptor { minter }
    }

    pub fn minter(&self) -> &LeafMinter {
        &self.minter
    }

    /// What to tell users whose clients refuse the minted certificates.
    pub fn trust_hint(&self) -> String {
        format!(
            "Trust the CA at {}: see README 'Trust the wstap CA'.",
            self.minter.ca().cert_path().display()
        )
    }

    /// Runs the handshake on `io` for a client that asked for
    /// `connect_host`, within `timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        connect_host: &str,
        timeout: Duration,
    ) -> Result<Intercepted<IO>, ClientTlsFailure>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut host = String::new();
        let (stream, _) = accept_with(io, timeout, |hello| {
            host = hello.server_name().unwrap_or(connect_host).to_string();
            self.config_for(&host)
        })
        .await?;
        Ok(Intercepted { stream, host })
    }

    fn config_for(&self, host: &str) -> Result<Arc<ServerConfig>, ClientTlsFailure> {
        let leaf = self
            .minter
            .leaf(host)
            .map_err(|e| ClientTlsFailure::Certificate {
                host: host.to_string(),
                detail: e.to_string(),
            })?;
        let other = |e: rustls::Error| ClientTlsFailure::Other {
            detail: e.to_string(),
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(leaf)));
        config.alpn_protocols = vec![ALPN.to_vec()];
        // One config per connection: a session cache or tickets in it
        // could never be used again, so skip making them.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::LocalCa;
    use crate::tls::testutil::TempDir;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const STEP: Duration = Duration::from_secs(10);

    fn client(trusted: Option<&CertificateDer<'static>>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        if let Some(c) = trusted {
            roots.add(c.clone()).unwrap();
        }
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }

    /// Accepts one connection with the interceptor (as if CONNECT asked for
    /// `connect_host`) and connects to it with `config`, sending SNI for
    /// `name`. Returns both outcomes.
    async fn handshake(
        interceptor: Interceptor,
        connect_host: &'static str,
        config: Arc<ClientConfig>,
        name: &'static str,
    ) -> (
        Result<Intercepted<TcpStream>, ClientTlsFailure>,
        io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            interceptor.accept(sock, connect_host, STEP).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name).unwrap();
        let client = tokio::time::timeout(
            STEP,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .expect("client handshake timed out");
        let server = tokio::time::timeout(STEP, server)
            .await
            .expect("server handshake timed out")
            .unwrap();
        (server, client)
    }

    fn interceptor(tmp: &TempDir) -> Interceptor {
        let (ca, _) = LocalCa::load_or_create(&tmp.0).unwrap();
        Interceptor::new(Arc::new(LeafMinter::new(ca)))
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_gets_a_leaf_for_its_sni() {
        let tmp = TempDir::new("icpt-ok");
        let icpt = interceptor(&tmp);
        let trusting = client(Some(icpt.minter().ca().cert_der()));
        // SNI wins over the CONNECT host: the client verifies the leaf
        // against the name it sent, so success means the SAN is that name.
        let (server, client) = handshake(
            icpt.clone(),
            "10.9.9.9",
            trusting.clone(),
            "ws.example.test",
        )
        .await;
        let mut server = server.expect("server side");
        let mut client = client.expect("client side");
        assert_eq!(server.host, "ws.example.test");
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(STEP, server.stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        // Clients send no SNI for IP addresses: the CONNECT host names the
        // leaf, which needs an IP SAN to verify.
        let (server, client) = handshake(icpt.clone(), "127.0.0.1", trusting, "127.0.0.1").await;
        assert_eq!(server.expect("server side").host, "127.0.0.1");
        client.expect("client side verifies the IP SAN");
        assert_eq!(icpt.minter().cached(), 2);
    }

    #[tokio::test]
    async fn a_client_not_trusting_the_ca_is_classified_as_refused() {
        let tmp = TempDir::new("icpt-refused");
        let icpt = interceptor(&tmp);
        let (server, client) = handshake(
            icpt.clone(),
            "ws.example.test",
            client(None),
            "ws.example.test",
        )
        .await;
        assert!(client.is_err());
        let f = server.err().expect("the server side fails too");
        assert!(f.is_refused(), "{f:?}");
        assert!(f.message().contains("unknown_ca"), "{}", f.message());
        let finding = f.finding(&icpt.trust_hint()).unwrap();
        assert_eq!(finding.code, "client-tls-failed");
        assert!(
            finding.hint.contains("Trust the wstap CA"),
            "{}",
            finding.hint
        );
        assert!(
            finding
                .hint
                .contains(&icpt.minter().ca().cert_path().display().to_string()),
            "{}",
            finding.hint
        );
    }

    #[tokio::test]
    async fn a_name_mismatch_and_a_silent_close_are_refusals_a_reset_is_not() {
        let tmp = TempDir::new("icpt-name");
        let icpt = interceptor(&tmp);
        let trusting = client(Some(icpt.minter().ca().cert_der()));
        // No SNI (an IP name), CONNECT said another host: the leaf names
        // that host, and the client checks 127.0.0.1.
        let (server, outcome) = handshake(icpt.clone(), "other.test", trusting, "127.0.0.1").await;
        assert!(outcome.is_err());
        let f = server.err().unwrap();
        assert!(
            f.is_refused() && f.message().contains("bad_certificate"),
            "{f:?}"
        );

        // Hang-ups without an alert: after reading our whole flight (how
        // Node refuses) and with the flight unread (a dropped spare
        // connection, which the kernel ends with a reset).
        for read_all in [true, false] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let icpt2 = icpt.clone();
            let server = tokio::spawn(async move {
                let (sock, _) = l.accept().await.unwrap();
                icpt2.accept(sock, "ws.example.test", STEP).await
            });
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut conn = rustls::ClientConnection::new(
                client(None),
                ServerName::try_from("ws.example.test").unwrap(),
            )
            .unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            tcp.write_all(&hello).await.unwrap();
            let mut buf = [0u8; 1];
            tokio::time::timeout(STEP, tcp.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if read_all {
                // the rest of the flight, then an orderly close
                let mut rest = [0u8; 64 * 1024];
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Ok(n) = tcp.try_read(&mut rest) {
                    if n == 0 {
                        break;
                    }
                }
            }
            drop(tcp);
            let f = tokio::time::timeout(STEP, server)
                .await
                .unwrap()
                .unwrap()
                .err()
                .unwrap();
            if read_all {
                assert!(f.is_refused(), "{f:?}");
                assert!(f.finding("h").is_some());
            } else {
                assert!(
                    matches!(f, ClientTlsFailure::ClosedDuringHandshake { .. }),
                    "{f:?}"
                );
                assert!(f.is_client_gone() && f.finding("h").is_none(), "{f:?}");
            }
        }
    }

    #[tokio::test]
    async fn plain_http_and_silence_are_not_refusals() {
        let tmp = TempDir::new("icpt-plain");
        let icpt = interceptor(&tmp);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let icpt2 = icpt.clone();
        let server = tokio::spawn(async move {
            let mut out = Vec::new();
            for timeout in [STEP, STEP, Duration::from_millis(200)] {
                let (sock, _) = l.accept().await.unwrap();
                out.push(icpt2.accept(sock, "h.test", timeout).await.err().unwrap());
            }
            out
        });
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n")
            .await
            .unwrap();
        drop(TcpStream::connect(addr).await.unwrap());
        let _silent = TcpStream::connect(addr).await.unwrap();
        let out = tokio::time::timeout(STEP, server).await.unwrap().unwrap();
        assert!(
            matches!(out[0], ClientTlsFailure::NotTls { .. }),
            "{:?}",
            out[0]
        );
        assert_eq!(out[1], ClientTlsFailure::ClosedBeforeHello);
        assert!(
            matches!(out[2], ClientTlsFailure::Timeout { .. }),
            "{:?}",
            out[2]
        );
        assert!(out.iter().all(|f| f.finding("h").is_none()));
        drop(plain);
    }

    #[tokio::test]
    async fn listener_tls_from_pem_files() {
        let tmp = TempDir::new("listener-pem");
        let (ca, _) = LocalCa::load_or_create(&tmp.0.join("ca")).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::NoCa;
        let cert = params.signed_by(&key, ca.issuer()).unwrap();
        let cert_path = tmp.0.join("cert.pem");
        let key_path = tmp.0.join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let tls = ListenerTls::from_files(&cert_path, &key_path).unwrap();
        assert!(tls.trust_hint.contains("cert.pem"));

        // a key that is not the certificate's
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_path, other.serialize_pem()).unwrap();
        let e = ListenerTls::from_files(&cert_path, &key_path).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        // a key file without a key
        std::fs::write(&key_path, cert.pem()).unwrap();
        let e = ListenerTls::from_files(&cert_path, &key_path).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");

        // and it serves: a client trusting the CA connects
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let tls = ListenerTls::from_files(&cert_path, &key_path).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            tls.accept(sock, STEP).await.map(|_| ())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(
            STEP,
            tokio_rustls::TlsConnector::from(client(Some(ca.cert_der())))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp),
        )
        .await
        .unwrap()
        .unwrap();
        tokio::time::timeout(STEP, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
