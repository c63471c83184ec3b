//! A real nginx (the Debian package) as a test peer: started in the
//! foreground with its own prefix, pid file, temp paths and error log in a
//! temp dir, on a loopback listener this process bound and hands over
//! (nginx's `NGINX` inherited-sockets variable), never as a system service.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::e2e_peer;

/// `proxy_pass` alone: nginx's defaults (HTTP/1.0 upstream, `Upgrade`
/// dropped, `Connection: close`).
pub fn default_config(upstream: SocketAddr) -> String {
    format!("proxy_pass http://{upstream};")
}

/// The standard WebSocket location, as every guide gives it.
pub fn websocket_config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n      {extra}"
    )
}

pub struct Nginx {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `location` as the body of `location / { }`.
    /// `None` when nginx is not installed (the test is skipped, loudly,
    /// unless WSTAP_E2E=require).
    pub async fn start(location: &str) -> Option<Nginx> {
        let bin = e2e_peer("nginx", &["/usr/sbin/nginx", "nginx"])?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind nginx's listener");
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["logs", "tmp"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let conf = format!(
            r#"daemon off;
user {user};
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  server {{
    listen {addr};
    location = /__ready {{ return 204; }}
    location / {{
      {location}
    }}
  }}
}}
"#,
            p = p.display()
        );
        let conf_path = p.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let fd: OwnedFd = listener.into();
        let child = Command::new(bin)
            .arg("-p")
            .arg(p)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(p.join("logs/error.log"))
            // the listener is nginx's stdin, inherited as fd 0
            .env("NGINX", "0;")
            .stdin(Stdio::from(fd))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child: Some(child),
            addr,
            dir,
        };
        nginx.wait_ready().await;
        Some(nginx)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(self.addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"GET /__ready HTTP/1.0\r\n\r\n").await;
                let mut buf = [0u8; 32];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
                {
                    if buf[..n].starts_with(b"HTTP/1.1 204") {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "nginx did not become ready; error log:\n{}",
                    self.error_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets the master stop its workers; SIGKILL would orphan them
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
