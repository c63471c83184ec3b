//! Shared test harness: an in-process proxy with a collecting sink, echo
//! and scripted raw upstreams on 127.0.0.1:0, a WebSocket client, the
//! binary runner, and the e2e peer gate. Every await has a timeout.
#![allow(dead_code)] // each test file uses a different part

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;
use wstap::bus;
use wstap::demo::echo::{self, EchoOptions};
use wstap::proto::event::{
    CloseSummary, Event, EventKind, Finding, FrameEvent, Handshake, HttpExchange,
};
use wstap::proxy::{Proxy, ProxyConfig};
use wstap::sink::collect::{CollectSink, Collected};
use wstap::sink::{spawn_dispatcher, Sink};
use wstap::tls::client::{client_config, TrustOptions};

/// The longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test with `what` if it takes longer than STEP.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?} waiting for {what}"),
    }
}

/// A proxy running in this process, its events collected.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub events: Collected,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    dispatcher: Option<std::thread::JoinHandle<wstap::sink::DispatchReport>>,
}

impl TestProxy {
    pub async fn start(upstream: &str) -> TestProxy {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: &str, tweak: impl FnOnce(&mut ProxyConfig)) -> TestProxy {
        Self::start_full(upstream, tweak, TrustOptions::default()).await
    }

    pub async fn start_full(
        upstream: &str,
        tweak: impl FnOnce(&mut ProxyConfig),
        trust: TrustOptions,
    ) -> TestProxy {
        Self::start_with_sinks(upstream, tweak, trust, Vec::new()).await
    }

    /// Like `start_full`, with more sinks beside the collector.
    pub async fn start_with_sinks(
        upstream: &str,
        tweak: impl FnOnce(&mut ProxyConfig),
        trust: TrustOptions,
        extra: Vec<Box<dyn Sink>>,
    ) -> TestProxy {
        let mut cfg = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            upstream.parse().expect("upstream URL"),
        );
        cfg.grace = Duration::from_millis(500);
        cfg.insecure = trust.insecure;
        // as the binary runs: connections dealt out to relay threads
        cfg.relay_threads = 2;
        tweak(&mut cfg);
        let events = Collected::default();
        let (tx, rx) = bus::channel(bus::DEFAULT_CAPACITY, false);
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(CollectSink(events.clone()))];
        sinks.extend(extra);
        // WSTAP_TEST_LOG=1 shows the human log of in-process proxies (with --nocapture)
        if std::env::var_os("WSTAP_TEST_LOG").is_some() {
            sinks.push(Box::new(wstap::sink::terminal::TerminalSink::new(
                Box::new(std::io::stderr()),
                false,
            )));
        }
        let dispatcher = spawn_dispatcher(rx, sinks).unwrap();
        let proxy = Proxy::bind(cfg, client_config(&trust).unwrap(), tx)
            .await
            .unwrap();
        let addr = proxy.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            proxy
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        TestProxy {
            addr,
            events,
            stop: Some(stop),
            task: Some(task),
            dispatcher: Some(dispatcher),
        }
    }

    /// Waits (up to STEP) until `done` holds; returns the events.
    pub async fn wait(&self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let evs = self.events.wait_for(STEP, &done).await;
        assert!(
            done(&evs),
            "timed out waiting for {what}; events so far:\n{}",
            dump(&evs)
        );
        evs
    }

    /// Waits for `n` close events (one per finished connection).
    pub async fn wait_closes(&self, n: usize) -> Vec<Event> {
        self.wait(&format!("{n} close events"), |e| closes(e).len() >= n)
            .await
    }

    /// Stops the proxy and waits until every event has reached the sinks.
    pub async fn stop(mut self) -> Vec<Event> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = within("proxy shutdown", t).await;
        }
        if let Some(d) = self.dispatcher.take() {
            let _ = tokio::task::spawn_blocking(move || d.join()).await;
        }
        self.events.snapshot()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn dump(evs: &[Event]) -> String {
    evs.iter()
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn frames(evs: &[Event]) -> Vec<FrameEvent> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Frame(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

pub fn findings(evs: &[Event]) -> Vec<Finding> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Finding(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

pub fn finding_codes(evs: &[Event]) -> Vec<String> {
    findings(evs).into_iter().map(|f| f.code).collect()
}

pub fn handshakes(evs: &[Event]) -> Vec<Handshake> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Handshake(h) => Some((**h).clone()),
            _ => None,
        })
        .collect()
}

pub fn closes(evs: &[Event]) -> Vec<CloseSummary> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Close(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub fn https(evs: &[Event]) -> Vec<HttpExchange> {
    evs.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Http(h) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

/// Starts the built-in echo upstream; returns its address.
pub async fn echo_server(opts: EchoOptions) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(echo::serve(l, opts));
    addr
}

pub type Ws = WebSocketStream<TcpStream>;

/// A tokio-tungstenite client through `addr`, without size limits.
pub async fn ws_client(
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
) -> (
    Ws,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let tcp = within("TCP connect", TcpStream::connect(addr))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    within(
        "WebSocket handshake",
        tokio_tungstenite::client_async_with_config(req, tcp, Some(echo::unlimited())),
    )
    .await
    .expect("handshake through the proxy")
}

/// A listener whose connections are handled by `script`, one task each.
pub async fn scripted_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let script = script.clone();
            tokio::spawn(async move { script(s).await });
        }
    });
    addr
}

/// Reads from `s` until the end of an HTTP head; returns the head bytes.
pub async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = within("an HTTP head", s.read(&mut byte)).await.unwrap();
        if n == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    buf
}

/// Reads until EOF.
pub async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    within("EOF", s.read_to_end(&mut buf)).await.unwrap();
    buf
}

/// Reads exactly n bytes.
pub async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within("bytes", s.read_exact(&mut buf)).await.unwrap();
    buf
}

/// Whether e2e tests with outside peers must run (`WSTAP_E2E=require`).
pub fn e2e_required() -> bool {
    std::env::var("WSTAP_E2E")
        .map(|v| v == "require")
        .unwrap_or(false)
}

/// Finds an outside peer's binary for an e2e test. Without it the test is
/// skipped with a printed notice, unless `WSTAP_E2E=require` (CI), where a
/// missing peer fails the test.
pub fn e2e_peer(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = PathBuf::from(c);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            for c in candidates {
                let p = dir.join(c);
                if !c.contains('/') && p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    if e2e_required() {
        panic!("WSTAP_E2E=require but {name} is not installed ({candidates:?})");
    }
    eprintln!("NOTICE: skipping this e2e test: {name} is not installed (install it, or run .ci/run, to include it)");
    None
}

/// An NDJSON log file in its own temporary directory.
pub struct JsonLog {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl std::ops::Deref for JsonLog {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for JsonLog {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

/// The wstap binary running as a child process.
pub struct BinProxy {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub args: Vec<String>,
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wstap"))
}

impl BinProxy {
    /// Starts `wstap <args>` and waits for its "listening on" line.
    pub async fn start(args: &[&str]) -> BinProxy {
        let mut child = tokio::process::Command::new(bin_path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wstap");
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = lines.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut rd = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = rd.next_line().await {
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
                store.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let addr = match tokio::time::timeout(STEP, rx).await {
            Ok(Ok(a)) => a.parse().expect("listening address"),
            _ => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "wstap {args:?} did not report its address; status {status:?}; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        BinProxy {
            child,
            addr,
            args,
            stderr_lines: lines,
        }
    }

    /// Starts `wstap proxy --listen 127.0.0.1:0 --upstream URL <extra>`.
    pub async fn reverse(upstream: &str, extra: &[&str]) -> BinProxy {
        let mut args = vec!["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// Like `reverse`, with `--json` to a fresh file (kept until the
    /// returned log is dropped).
    pub async fn reverse_with_log(upstream: &str, extra: &[&str]) -> (BinProxy, JsonLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut args = vec!["--json", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let proxy = Self::reverse(upstream, &args).await;
        (proxy, JsonLog { _dir: dir, path })
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let status = within("wstap to exit after SIGTERM", self.child.wait())
            .await
            .unwrap();
        // let the stderr reader catch the last lines
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = self.stderr();
        (status, err)
    }
}

/// Runs `wstap <args>` to completion; on an unexpected status prints the
/// command, status, stdout and stderr.
pub fn run_bin(args: &[&str], expect: Option<i32>) -> (i32, String, String) {
    let out = std::process::Command::new(bin_path())
        .args(args)
        .output()
        .expect("run wstap");
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(want) = expect {
        assert_eq!(
            code, want,
            "wstap {args:?} exited {code}, expected {want}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    (code, stdout, stderr)
}

/// Writes all of `data` to a raw TCP stream.
pub async fn send(s: &mut TcpStream, data: &[u8]) {
    within("a write", s.write_all(data)).await.unwrap();
}

/// A client uploading a body in `pieces` of `piece` bytes, a pause before
/// each, that gives up when a send fails (as curl does: "Send failure:
/// Connection reset by peer"); then reads the answer to EOF. For answers
/// wstap gives before the body is in: when it closes without reading what
/// is still on its way, the kernel resets the connection.
pub async fn upload_in_pieces(
    addr: SocketAddr,
    head: &[u8],
    pieces: usize,
    piece: usize,
) -> Result<Vec<u8>, String> {
    let mut s = within("connect", TcpStream::connect(addr)).await.unwrap();
    within("the head", s.write_all(head))
        .await
        .map_err(|e| format!("sending the head failed: {e}"))?;
    let data = vec![b'b'; piece];
    for i in 0..pieces {
        // time for wstap to answer (and close) while the body is on its way
        tokio::time::sleep(Duration::from_millis(150)).await;
        within("a piece of the body", s.write_all(&data))
            .await
            .map_err(|e| format!("sending piece {i} of the body failed: {e}"))?;
    }
    let mut got = Vec::new();
    within("the answer", s.read_to_end(&mut got))
        .await
        .map_err(|e| format!("reading the answer failed after {} bytes: {e}", got.len()))?;
    Ok(got)
}

/// A loopback port that refuses connections: bound (so no one else takes
/// it) but never listening. Keep the socket alive while the port is used.
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

pub mod cdp;
pub mod chromium;
pub mod deflate_echo;
pub mod nginx;
pub mod ui;

/// An echo upstream that accepts any request carrying `Sec-WebSocket-Key`
/// with a 101, whatever else a hop stripped (as lenient servers do), then
/// echoes messages.
pub async fn lenient_echo() -> SocketAddr {
    scripted_upstream(|mut s| async move {
        let head = String::from_utf8_lossy(&read_head(&mut s).await).into_owned();
        let key = head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
        });
        let Some(key) = key else {
            send(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n").await;
            return;
        };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            wstap::proto::handshake::accept_key(&key)
        );
        send(&mut s, resp.as_bytes()).await;
        let ws = WebSocketStream::from_raw_socket(s, tokio_tungstenite::tungstenite::protocol::Role::Server, Some(echo::unlimited())).await;
        echo::echo(ws).await;
    })
    .await
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "wstap-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA made with rcgen for one test; its leaves are for 127.0.0.0/8
/// servers the test starts.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert: rustls::pki_types::CertificateDer<'static>,
    pub pem: String,
}

/// A leaf certificate and its key, as DER and PEM.
pub struct TestLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: rustls::pki_types::CertificateDer<'static>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> TestLeaf {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A server config serving a leaf for `names`.
    pub fn server_config(&self, names: &[&str]) -> std::sync::Arc<rustls::ServerConfig> {
        let leaf = self.leaf(names);
        std::sync::Arc::new(wstap::tls::server::server_config(vec![leaf.cert], leaf.key).unwrap())
    }

    /// Writes the CA certificate as PEM into `dir`; returns its path.
    pub fn write(&self, dir: &TempDir, name: &str) -> PathBuf {
        let p = dir.path(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A client config that trusts this CA only.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(wstap::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(c)
    }
}

/// Starts the echo upstream behind TLS; returns its address.
pub async fn echo_server_tls(
    tls: std::sync::Arc<rustls::ServerConfig>,
    opts: EchoOptions,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(echo::serve_tls(l, tls, opts));
    addr
}

pub type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;
pub type Wss = WebSocketStream<TlsClientStream>;

/// A TLS connection to `addr`, verifying the server as `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsClientStream> {
    let tcp = within("TCP connect", TcpStream::connect(addr))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
}

/// A tokio-tungstenite client over TLS through `addr` (wss://).
pub async fn wss_client(
    addr: SocketAddr,
    name: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> Wss {
    let stream = tls_connect(addr, name, tls).await.expect("TLS handshake");
    let req = format!("wss://{name}:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    within(
        "WebSocket handshake",
        tokio_tungstenite::client_async_with_config(req, stream, Some(echo::unlimited())),
    )
    .await
    .expect("handshake through the proxy")
    .0
}

/// The RFC 6455 sample key the raw-wire tests upgrade with.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket upgrade request for `path`, keyed with [`WS_KEY`].
pub fn upgrade_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

/// The 101 an upstream answers [`upgrade_request`] with.
pub fn switching() -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        wstap::proto::handshake::accept_key(WS_KEY)
    )
}

/// Opens a raw WebSocket through the proxy; returns the client socket
/// after the 101 head.
pub async fn raw_ws(proxy: SocketAddr, path: &str) -> TcpStream {
    let mut c = within("connect", TcpStream::connect(proxy)).await.unwrap();
    send(&mut c, upgrade_request(path).as_bytes()).await;
    let head = String::from_utf8_lossy(&read_head(&mut c).await).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c
}

/// Sends a WebSocket upgrade request over plain TCP and returns the
/// response status and body (for upgrades wstap answers itself).
pub async fn upgrade_status(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = within("TCP connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    send(&mut s, req.as_bytes()).await;
    let resp = String::from_utf8_lossy(&read_all(&mut s).await).into_owned();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

/// Reads an NDJSON event log; every line must parse.
pub fn read_ndjson(path: &std::path::Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// `len` bytes in a pattern that differs with `seed` and repeats every
/// 256 bytes, so a shifted or swapped chunk shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The next message from `ws` (within [`STEP`]).
pub async fn next_msg(ws: &mut Ws) -> tokio_tungstenite::tungstenite::Message {
    use futures_util::StreamExt;
    within("a message", ws.next())
        .await
        .expect("stream ended")
        .expect("read")
}
