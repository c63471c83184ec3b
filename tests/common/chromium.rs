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
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--metrics-recording-only",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
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
