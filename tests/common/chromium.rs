//! Headless Chromium (the Debian package) as a test peer: a fresh profile
//! in a temp dir, no background networking (this machine's network is
//! closed), optionally through wstap as its HTTP proxy and trusting a CA
//! by its SPKI hash. Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::e2e_peer;

pub struct Chromium {
    child: Option<Child>,
    pub profile: tempfile::TempDir,
    pub stderr: PathBuf,
}

/// How to start Chromium.
#[derive(Default)]
pub struct Launch {
    /// `http://127.0.0.1:PORT` to use wstap as the proxy (loopback included).
    pub proxy: Option<String>,
    /// Trust certificates chaining to keys with these SPKI hashes.
    pub trust_spki: Vec<String>,
    /// Extra flags, e.g. `--remote-debugging-port=0` or `--screenshot=...`.
    pub extra: Vec<String>,
    /// The page to open.
    pub url: String,
}

impl Chromium {
    /// Starts headless Chromium; `None` when it is not installed (skipped
    /// loudly, or a failure under WSTAP_E2E=require).
    pub fn start(l: Launch) -> Option<Chromium> {
        let bin = e2e_peer(
            "chromium",
            &["/usr/bin/chromium", "chromium", "chromium-browser"],
        )?;
        let profile = tempfile::tempdir().unwrap();
        let stderr = profile.path().join("chromium.stderr");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-features=Translate,MediaRouter,OptimizationHints,NetworkTimeServiceQuerying",
            "--metrics-recording-only",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // its singleton socket goes in a fresh dir under TMPDIR, which a
        // killed Chromium never removes: keep it inside the profile
        .env("TMPDIR", profile.path());
        if let Some(p) = &l.proxy {
            // Chromium never proxies loopback unless told (field notes)
            cmd.arg(format!("--proxy-server={p}"))
                .arg("--proxy-bypass-list=<-loopback>");
        }
        if !l.trust_spki.is_empty() {
            cmd.arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                l.trust_spki.join(",")
            ));
        }
        cmd.args(&l.extra).arg(&l.url);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start chromium");
        Some(Chromium {
            child: Some(child),
            profile,
            stderr,
        })
    }

    /// What Chromium printed so far (for failure messages, and the DevTools
    /// address with `--remote-debugging-port=0`).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A proxy hop for browser tests, between Chromium and wstap: it passes
/// `CONNECT` to loopback addresses on, byte for byte, and answers anything
/// else with 403 itself. Chromium sends some requests no flag turns off
/// (the sign-in account list to accounts.google.com, on-demand component
/// updates); through wstap alone they would make wstap look up and connect
/// to outside hosts. Point Chromium's `--proxy-server` here.
pub struct LoopbackGate {
    pub addr: std::net::SocketAddr,
    /// The request lines it refused.
    pub refused: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts a gate in front of the proxy at `proxy`.
pub async fn loopback_gate(proxy: std::net::SocketAddr) -> LoopbackGate {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                // the head, and whatever came with it (a ClientHello sent early)
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    let read = tokio::time::timeout(super::STEP, client.read(&mut chunk)).await;
                    match read {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let mut parts = line.split_whitespace();
                let loopback = match (parts.next(), parts.next()) {
                    (Some("CONNECT"), Some(target)) => target
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| a.ip().is_loopback()),
                    _ => false,
                };
                if !loopback {
                    log.lock().unwrap().push(line);
                    let _ = client
                        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(proxy).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = client.set_nodelay(true);
                if upstream.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    LoopbackGate { addr, refused }
}
