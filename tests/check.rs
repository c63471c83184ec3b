//! `wstap check` through the binary against real peers on 127.0.0.1: the
//! echo server, a closed port, plain HTTP servers (200 page, 404), TLS
//! servers with rcgen-made certificates (untrusted, trusted via --ca,
//! --insecure, wrong name, expired, plain ws vs wss), scripted servers
//! (bad accept key, no pong, a greeting, a close at once) and idle cuts,
//! one by a real nginx's `proxy_read_timeout` (skipped with a notice
//! without nginx, failed under WSTAP_E2E=require). Exit codes and the
//! `--json` report are checked field by field.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use wstap::demo::echo::{self, EchoOptions};

/// Runs `wstap check ARGS` off the runtime's threads (the servers it
/// talks to run on them); asserts the exit code.
async fn check(args: &[&str], expect: i32) -> (String, String) {
    let mut all = vec!["check".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let (_, out, err) = within(
        "wstap check",
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_bin(&refs, Some(expect))
        }),
    )
    .await
    .expect("wstap check ran");
    (out, err)
}

/// `wstap check ARGS --json`, parsed.
async fn check_json(args: &[&str], expect: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (out, err) = check(&all, expect).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\n{err}"))
}

fn layer<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["layers"]
        .as_array()
        .expect("layers is a list")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {report:#}"))
}

fn names(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

fn statuses(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["status"].as_str().unwrap().to_string())
        .collect()
}

fn detail(report: &Value, name: &str) -> String {
    layer(report, name)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn hint(report: &Value, name: &str) -> String {
    layer(report, name)["hint"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn finding_codes_of(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_echo_server_passes_every_layer() {
    let echo = echo_server(EchoOptions {
        subprotocols: vec!["chat".into()],
        ..Default::default()
    })
    .await;
    let url = format!("ws://{echo}/echo?room=1");
    let args = [
        url.as_str(),
        "--send",
        "hello wstap",
        "--subprotocol",
        "chat",
        "--origin",
        "http://127.0.0.1:3000",
        "--header",
        "X-Debug: 1",
    ];
    let (out, _) = check(&args, 0).await;
    for want in [
        "✓ dns",
        "✓ tcp",
        "· tls",
        "✓ http-upgrade  101 Switching Protocols",
        "Sec-WebSocket-Accept matches the key",
        "subprotocol chat",
        "✓ websocket",
        "pong in ",
        "reply \"hello wstap\"",
        "closed cleanly",
        "all layers passed",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("hint:"), "{out}");

    let r = check_json(&args, 0).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["failed"], Value::Null);
    assert_eq!(r["url"], url);
    assert_eq!(
        names(&r),
        ["dns", "tcp", "tls", "http-upgrade", "websocket"]
    );
    assert_eq!(
        statuses(&r),
        ["pass", "pass", "not-applicable", "pass", "pass"]
    );
    for l in r["layers"].as_array().unwrap() {
        assert_eq!(l["ok"], true, "{l}");
        assert!(l.get("hint").is_some_and(Value::is_null), "{l}");
        assert!(l["detail"].as_str().is_some_and(|d| !d.is_empty()), "{l}");
    }
    assert_eq!(r["addresses"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(r["connected_to"], echo.to_string());
    assert!(detail(&r, "tcp").contains(&echo.to_string()));
    // what went on the wire: the path with its query, the flags' headers
    let req = &r["handshake"]["request"];
    assert_eq!(req["target"], "/echo?room=1");
    let headers: Vec<(String, String)> = serde_json::from_value(req["headers"].clone()).unwrap();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("Origin").as_deref(), Some("http://127.0.0.1:3000"));
    assert_eq!(get("Sec-WebSocket-Protocol").as_deref(), Some("chat"));
    assert_eq!(get("X-Debug").as_deref(), Some("1"));
    assert_eq!(get("Host"), Some(echo.to_string()));
    let key = get("Sec-WebSocket-Key").unwrap();
    assert_eq!(key.len(), 24, "16 random bytes in base64: {key}");
    let res = &r["handshake"]["response"];
    assert_eq!(res["status"], 101);
    let ws = &r["websocket"];
    assert!(ws["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{ws}");
    assert_eq!(ws["sent"], "hello wstap");
    assert_eq!(ws["reply"], "hello wstap");
    assert!(
        ws["close"].as_str().unwrap().contains("answered 1000"),
        "{ws}"
    );
    assert!(finding_codes_of(&r).is_empty(), "{r:#}");
    assert_eq!(r["idle"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_uses_a_fresh_key() {
    let echo = echo_server(EchoOptions::default()).await;
    let url = format!("ws://{echo}/");
    let key = |r: &Value| {
        r["handshake"]["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "Sec-WebSocket-Key")
            .unwrap()[1]
            .clone()
    };
    let a = check_json(&[&url], 0).await;
    let b = check_json(&[&url], 0).await;
    assert_ne!(key(&a), key(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_at_tcp_with_a_hint() {
    let (_hold, port) = closed_port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (out, _) = check(&[&url], 1).await;
    assert!(out.contains("✓ dns"), "{out}");
    assert!(out.contains("✗ tcp"), "{out}");
    assert!(out.contains("refused: nothing is listening there"), "{out}");
    assert!(out.contains("hint: Is the server running"), "{out}");
    for skipped in ["- tls", "- http-upgrade", "- websocket"] {
        assert!(out.contains(skipped), "{skipped} in:\n{out}");
    }
    assert!(out.trim_end().ends_with("failed at tcp"), "{out}");

    let r = check_json(&[&url], 1).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["failed"], "tcp");
    assert_eq!(
        statuses(&r),
        ["pass", "fail", "skipped", "skipped", "skipped"]
    );
    let tcp = layer(&r, "tcp");
    assert_eq!(tcp["ok"], false);
    assert!(tcp["detail"].as_str().unwrap().contains("refused"), "{tcp}");
    assert!(hint(&r, "tcp").contains("nc -zv"), "{tcp}");
    assert_eq!(layer(&r, "websocket")["ok"], false);
    assert!(layer(&r, "websocket")["hint"].is_null());
    assert_eq!(r["handshake"], Value::Null);
}

/// A web server without WebSocket support: a page at `/`, 404 elsewhere.
async fn plain_http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/" {
                        (
                            200,
                            "<!doctype html><html><body><h1>My app</h1></body></html>",
                        )
                    } else {
                        (404, "Not Found")
                    };
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/html")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_server_fails_the_upgrade_and_200_and_404_are_explained() {
    let web = plain_http_server().await;
    let page = format!("ws://{web}/");
    let (out, _) = check(&[&page], 1).await;
    assert!(out.contains("✗ http-upgrade  200 OK"), "{out}");
    assert!(out.contains("page handler"), "{out}");
    assert!(out.contains("hint: Wrong path"), "{out}");
    assert!(out.contains("- websocket"), "{out}");
    // the failing finding is the failed line; it is not listed again
    assert!(!out.contains("findings:"), "{out}");

    let r = check_json(&[&page], 1).await;
    assert_eq!(r["failed"], "http-upgrade");
    assert_eq!(
        statuses(&r),
        ["pass", "pass", "not-applicable", "fail", "skipped"]
    );
    assert_eq!(r["handshake"]["response"]["status"], 200);
    assert!(r["handshake"]["response"]["body_preview"]
        .as_str()
        .unwrap()
        .starts_with("<!doctype html>"));
    assert_eq!(finding_codes_of(&r), ["upgrade-not-accepted"]);
    assert!(detail(&r, "http-upgrade").contains("200 OK"), "{r:#}");

    let missing = format!("ws://{web}/socket");
    let r = check_json(&[&missing], 1).await;
    assert_eq!(r["failed"], "http-upgrade");
    let d = detail(&r, "http-upgrade");
    assert!(d.starts_with("404 Not Found"), "{d}");
    assert!(d.contains("no WebSocket endpoint at this path"), "{d}");
    assert!(hint(&r, "http-upgrade").contains("Check the URL path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_accept_key_fails_the_upgrade() {
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(
            &mut s,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let r = check_json(&[&format!("ws://{up}/")], 1).await;
    assert_eq!(r["failed"], "http-upgrade");
    assert!(
        detail(&r, "http-upgrade").contains("not derived from the request's key"),
        "{r:#}"
    );
    assert_eq!(finding_codes_of(&r), ["accept-key-mismatch"]);
}

/// Reads an upgrade request and answers it with a correct 101.
async fn answer_upgrade(s: &mut tokio::net::TcpStream) {
    let head = String::from_utf8_lossy(&read_head(s).await).into_owned();
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or_default()
        .to_string();
    let res = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        wstap::proto::handshake::accept_key(&key)
    );
    send(s, res.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_pongs_fails_the_websocket_layer() {
    // a correct 101, then silence: reads and ignores everything
    let up = scripted_upstream(|mut s| async move {
        answer_upgrade(&mut s).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), read_all(&mut s)).await;
    })
    .await;
    let r = check_json(&[&format!("ws://{up}/"), "--timeout", "1s"], 1).await;
    assert_eq!(r["failed"], "websocket");
    assert_eq!(layer(&r, "http-upgrade")["ok"], true);
    assert_eq!(detail(&r, "websocket"), "no pong within 1s");
    assert!(hint(&r, "websocket").contains("§5.5.2"));
}

// ---- TLS ----------------------------------------------------------------

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "wstap check test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server config with a leaf for `names`, valid `from`..`until` (years).
    fn server(&self, names: &[&str], years: (i32, i32)) -> Arc<rustls::ServerConfig> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "wstap check test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(wstap::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }

    fn write(&self, dir: &tempfile::TempDir) -> PathBuf {
        let p = dir.path().join("test-ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

/// A TLS WebSocket echo server.
async fn tls_echo(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                if let Ok(ws) = tokio_tungstenite::accept_async(tls).await {
                    echo::echo(ws).await;
                }
            });
        }
    });
    addr
}

const VALID: (i32, i32) = (2020, 2999);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_tls_and_passes_with_ca_or_insecure() {
    let ca = Ca::new();
    let server = tls_echo(ca.server(&["127.0.0.1"], VALID)).await;
    let url = format!("wss://{server}/echo");

    let (out, _) = check(&[&url], 1).await;
    assert!(out.contains("✗ tls"), "{out}");
    assert!(out.contains("is not trusted"), "{out}");
    assert!(
        out.contains("hint: Trust the issuing CA with --ca FILE"),
        "{out}"
    );
    let r = check_json(&[&url], 1).await;
    assert_eq!(r["failed"], "tls");
    assert_eq!(statuses(&r), ["pass", "pass", "fail", "skipped", "skipped"]);
    let d = detail(&r, "tls");
    // whose certificate it was, though it failed
    assert!(d.contains("issued by CN=wstap check test CA"), "{d}");
    assert!(d.contains("IP:127.0.0.1"), "{d}");
    assert_eq!(r["tls"]["verified"], false);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(&dir);
    let trusted = check_json(
        &[
            &url,
            "--ca",
            ca_file.to_str().unwrap(),
            "--send",
            "over tls",
        ],
        0,
    )
    .await;
    assert_eq!(statuses(&trusted), ["pass", "pass", "pass", "pass", "pass"]);
    let t = &trusted["tls"];
    assert_eq!(t["verified"], true);
    assert_eq!(
        t["alpn"],
        Value::Null,
        "tungstenite's server offers no ALPN"
    );
    assert!(t["version"].as_str().unwrap().starts_with("TLS 1."), "{t}");
    let c = &t["certificate"];
    assert_eq!(c["subject"], "CN=wstap check test server");
    assert_eq!(c["issuer"], "CN=wstap check test CA");
    assert_eq!(c["sans"], serde_json::json!(["IP:127.0.0.1"]));
    assert_eq!(c["not_after"], "2999-01-01T00:00:00Z");
    assert_eq!(c["self_signed"], false);
    assert!(c["expires_in_days"].as_i64().unwrap() > 300_000);
    assert!(detail(&trusted, "tls").contains("valid until 2999-01-01T00:00:00Z"));
    assert_eq!(trusted["websocket"]["reply"], "over tls");
    assert!(finding_codes_of(&trusted).is_empty());

    let insecure = check_json(&[&url, "--insecure"], 0).await;
    assert_eq!(insecure["ok"], true);
    assert_eq!(insecure["tls"]["verified"], false);
    assert!(detail(&insecure, "tls").contains("NOT verified (--insecure)"));
    assert_eq!(finding_codes_of(&insecure), ["tls-verification-disabled"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_and_expired_certificates_are_named() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(&dir);
    let ca_arg = ca_file.to_str().unwrap();

    let other_name = tls_echo(ca.server(&["ws.example.test"], VALID)).await;
    let r = check_json(&[&format!("wss://{other_name}/"), "--ca", ca_arg], 1).await;
    assert_eq!(r["failed"], "tls");
    let d = detail(&r, "tls");
    assert!(d.contains("is not valid for that name"), "{d}");
    assert!(d.contains("SANs DNS:ws.example.test"), "{d}");
    assert!(hint(&r, "tls").contains("SAN"));

    let expired = tls_echo(ca.server(&["127.0.0.1"], (2001, 2002))).await;
    let r = check_json(&[&format!("wss://{expired}/"), "--ca", ca_arg], 1).await;
    assert_eq!(r["failed"], "tls");
    let d = detail(&r, "tls");
    assert!(d.contains("has expired"), "{d}");
    assert!(d.contains("expired 2002-01-01T00:00:00Z"), "{d}");
    assert!(hint(&r, "tls").contains("Renew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_to_a_plain_server_says_not_tls() {
    let echo = echo_server(EchoOptions::default()).await;
    let r = check_json(&[&format!("wss://{echo}/")], 1).await;
    assert_eq!(r["failed"], "tls");
    let d = detail(&r, "tls");
    assert!(d.contains("not speaking TLS (ws:// vs wss://?)"), "{d}");
    assert!(hint(&r, "tls").contains("use ws://"), "{r:#}");
}

// ---- idle ---------------------------------------------------------------

/// A WebSocket echo that drops a connection (no close frame) after `limit`
/// without a frame from the client, as a hop's idle timeout does.
async fn idle_cutting_echo(limit: Duration) -> SocketAddr {
    scripted_upstream(move |s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        // pings are answered by tungstenite as it reads
        while let Ok(Some(Ok(m))) = tokio::time::timeout(limit, ws.next()).await {
            if m.is_text() && ws.send(m).await.is_err() {
                break;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cut_after_one_second_is_reported_with_its_time() {
    let up = idle_cutting_echo(Duration::from_secs(1)).await;
    let url = format!("ws://{up}/");
    let (out, _) = check(&[&url, "--idle", "2s"], 1).await;
    assert!(out.contains("✓ websocket"), "{out}");
    assert!(out.contains("✗ idle"), "{out}");
    assert!(out.contains("cut after 1"), "{out}");
    assert!(out.contains("without a close frame"), "{out}");

    let r = check_json(&[&url, "--idle", "2s"], 1).await;
    assert_eq!(r["failed"], "idle");
    assert_eq!(
        names(&r),
        ["dns", "tcp", "tls", "http-upgrade", "websocket", "idle"]
    );
    assert_eq!(
        statuses(&r),
        ["pass", "pass", "not-applicable", "pass", "pass", "fail"]
    );
    let idle = &r["idle"];
    assert_eq!(idle["cut"], true);
    assert_eq!(idle["requested_ms"], 2000.0);
    let silence = idle["silence_ms"].as_f64().unwrap();
    assert!((900.0..1900.0).contains(&silence), "cut after {silence} ms");
    assert!(hint(&r, "idle").contains("proxy_read_timeout"), "{r:#}");
    assert!(r["websocket"]["close"]
        .as_str()
        .unwrap()
        .contains("cut during the idle hold"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cut_by_a_real_nginx_read_timeout_is_reported() {
    // check -> nginx (standard WebSocket location, proxy_read_timeout 1s) -> echo
    let echo = echo_server(EchoOptions::default()).await;
    let Some(nginx) = common::nginx::Nginx::start(&common::nginx::websocket_config(
        echo,
        "proxy_read_timeout 1s;",
    ))
    .await
    else {
        return;
    };
    let r = check_json(
        &[
            &format!("ws://{}/echo", nginx.addr),
            "--idle",
            "3s",
            "--send",
            "x",
        ],
        1,
    )
    .await;
    assert_eq!(r["failed"], "idle", "{r:#}");
    assert_eq!(layer(&r, "websocket")["ok"], true);
    assert_eq!(r["websocket"]["reply"], "x");
    let silence = r["idle"]["silence_ms"].as_f64().unwrap();
    assert!((900.0..2500.0).contains(&silence), "cut after {silence} ms");
    // nginx ends the tunnel with no close frame
    assert!(
        detail(&r, "idle").contains("without a close frame"),
        "{}",
        detail(&r, "idle")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stays_open_passes_the_idle_hold() {
    let up = idle_cutting_echo(Duration::from_secs(30)).await;
    let r = check_json(&[&format!("ws://{up}/"), "--idle", "2s"], 0).await;
    assert_eq!(r["ok"], true);
    assert_eq!(layer(&r, "idle")["status"], "pass");
    assert_eq!(detail(&r, "idle"), "stayed open through 2s of silence");
    assert_eq!(r["idle"]["cut"], false);
    assert!(r["idle"]["silence_ms"].as_f64().unwrap() >= 1900.0);
    // the close came after the hold
    assert!(r["websocket"]["close"]
        .as_str()
        .unwrap()
        .contains("closed cleanly"));
}

// ---- usage --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let (_, err) = check(&["127.0.0.1:80"], 2).await;
    assert!(err.contains("expected ws://"), "{err}");
    let (_, err) = check(&["ws://127.0.0.1:1/", "--header", "no colon"], 2).await;
    assert!(err.contains("--header"), "{err}");
    let (_, err) = check(&["ws://127.0.0.1:1/", "--header", "Bad Name: x"], 2).await;
    assert!(err.contains("Bad Name"), "{err}");
    let (_, err) = check(&["ws://127.0.0.1:1/", "--ca", "/nonexistent/ca.pem"], 2).await;
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let (_, err) = check(&["ws://127.0.0.1:1/", "--timeout", "soon"], 2).await;
    assert!(err.contains("--timeout"), "{err}");
    let (_, err) = check(&["ws://127.0.0.1:1/", "--timeout", "0s"], 2).await;
    assert!(err.contains("more than zero"), "{err}");
    check(&[], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_to_a_tls_server_says_it_answered_in_tls() {
    let ca = Ca::new();
    let server = tls_echo(ca.server(&["127.0.0.1"], VALID)).await;
    let r = check_json(&[&format!("ws://{server}/")], 1).await;
    assert_eq!(r["failed"], "http-upgrade");
    // rustls answers the plain request with a TLS alert record
    assert_eq!(
        detail(&r, "http-upgrade"),
        "the server answered in TLS, not plain HTTP (ws:// vs wss://?)"
    );
    assert!(hint(&r, "http-upgrade").contains("use wss://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_gets_no_answer_times_out_and_is_told_from_refused() {
    // a listener that never accepts, its queue full: the kernel drops
    // further SYNs, as a firewall does
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        // later ones hang in SYN-SENT; that is the point
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let r = check_json(&[&format!("ws://{addr}/"), "--timeout", "1s"], 1).await;
    assert_eq!(r["failed"], "tcp", "{r:#}");
    let d = detail(&r, "tcp");
    assert!(d.contains("timed out"), "{d}");
    assert!(hint(&r, "tcp").contains("firewall"), "{r:#}");
    let ms = layer(&r, "tcp")["ms"].as_f64().unwrap();
    assert!((900.0..5000.0).contains(&ms), "gave up after {ms} ms");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_server_greeting_and_pinging_still_passes() {
    use tokio_tungstenite::tungstenite::Message;
    let up = scripted_upstream(|s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        if ws.send(Message::text("welcome")).await.is_err() {
            return;
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
                Ok(Some(Ok(m))) if m.is_text() => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => break,
                // keepalive pings the client must answer
                Err(_) => {
                    if ws.send(Message::Ping("keepalive".into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let r = check_json(&[&format!("ws://{up}/"), "--send", "hi", "--idle", "1s"], 0).await;
    let ws = &r["websocket"];
    assert_eq!(
        ws["unsolicited"],
        serde_json::json!(["text \"welcome\""]),
        "{r:#}"
    );
    assert_eq!(ws["unsolicited_total"], 1);
    assert_eq!(ws["reply"], "hi");
    let d = detail(&r, "websocket");
    assert!(d.contains("the server also sent text \"welcome\""), "{d}");
    assert!(d.contains("ping(s) from the server"), "{d}");
    assert_eq!(r["idle"]["cut"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_at_once_fails_the_websocket_layer() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let up = scripted_upstream(|s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "login first".into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let r = check_json(&[&format!("ws://{up}/")], 1).await;
    assert_eq!(r["failed"], "websocket");
    assert_eq!(
        detail(&r, "websocket"),
        "the server closed with 1008 (Policy Violation) \"login first\" instead of answering the ping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_explained_with_its_location() {
    let up = scripted_upstream(|mut s| async move {
        read_head(&mut s).await;
        send(
            &mut s,
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: wss://ws.example.test/socket\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
    })
    .await;
    let r = check_json(&[&format!("ws://{up}/socket")], 1).await;
    assert_eq!(r["failed"], "http-upgrade");
    assert_eq!(
        detail(&r, "http-upgrade"),
        "301 Moved Permanently: the server redirected the upgrade (301) (Location: wss://ws.example.test/socket)"
    );
    assert!(hint(&r, "http-upgrade").contains("do not follow redirects"));
}

/// A raw WebSocket server that answers pings and ignores close frames.
async fn never_closing_server() -> SocketAddr {
    use wstap::proto::frame::{apply_mask, encode_frame, parse_header, Opcode, Parsed};
    scripted_upstream(|mut s| async move {
        answer_upgrade(&mut s).await;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = match tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read(&mut s, &mut chunk),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Parsed::Done(h, used) = parse_header(&buf) {
                let end = used + h.len as usize;
                if buf.len() < end {
                    break;
                }
                let mut payload = buf[used..end].to_vec();
                if let Some(m) = h.mask {
                    apply_mask(&mut payload, m, 0);
                }
                buf.drain(..end);
                if h.opcode == Opcode::Ping {
                    let mut pong = Vec::new();
                    encode_frame(&mut pong, true, false, Opcode::Pong, None, &payload);
                    send(&mut s, &pong).await;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_close_fails_the_websocket_layer_even_after_the_idle_hold() {
    let up = never_closing_server().await;
    let url = format!("ws://{up}/");
    let r = check_json(&[&url, "--timeout", "1s"], 1).await;
    assert_eq!(r["failed"], "websocket");
    assert_eq!(
        detail(&r, "websocket"),
        "the server did not answer the close frame within 1s"
    );
    assert!(hint(&r, "websocket").contains("§5.5.1"));
    // the hold runs before the close: it passed, and is reported so
    let r = check_json(&[&url, "--timeout", "1s", "--idle", "1s"], 1).await;
    assert_eq!(r["failed"], "websocket");
    assert_eq!(
        statuses(&r),
        ["pass", "pass", "not-applicable", "pass", "fail", "pass"]
    );
    assert_eq!(r["idle"]["cut"], false);
}

// ---- bounds -------------------------------------------------------------

/// `wstap check ARGS` that is killed if it outlives `limit`: its exit code
/// (None when killed), how long it ran, stdout and stderr.
async fn check_bounded(args: &[&str], limit: Duration) -> (Option<i32>, Duration, String, String) {
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new(bin_path())
        .arg("check")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run wstap");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("wstap check ran");
            (
                out.status.code(),
                started.elapsed(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        // dropping the future kills the child
        Err(_) => (None, started.elapsed(), String::new(), String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_flooding_pings_without_reading_cannot_outlast_the_timeout() {
    // a correct 101, then 125-byte pings as fast as the socket takes
    // them, never reading: wstap's pongs fill the buffers
    let up = scripted_upstream(|mut s| async move {
        answer_upgrade(&mut s).await;
        let mut ping = vec![0x89, 125];
        ping.extend_from_slice(&[b'p'; 125]);
        let burst = ping.repeat(64);
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < until {
            let w = tokio::io::AsyncWriteExt::write_all(&mut s, &burst);
            match tokio::time::timeout_at(until, w).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    })
    .await;
    let (code, took, out, err) = check_bounded(
        &[&format!("ws://{up}/"), "--timeout", "1s", "--json"],
        Duration::from_secs(8),
    )
    .await;
    assert_eq!(code, Some(1), "ran {took:?}\n{out}\n{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let r: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\n{err}"));
    assert_eq!(r["failed"], "websocket", "{r:#}");
    assert_eq!(layer(&r, "http-upgrade")["ok"], true);
    assert_eq!(detail(&r, "websocket"), "no pong within 1s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_durations_are_usage_errors_not_panics() {
    for flag in ["--timeout", "--idle"] {
        let (_, err) = check(&["ws://127.0.0.1:1/", flag, "18446744073709551615s"], 2).await;
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(flag), "{err}");
        assert!(err.contains("at most 365 days"), "{err}");
        let (_, err) = check(&["ws://127.0.0.1:1/", flag, "366days"], 2).await;
        assert!(err.contains("at most 365 days"), "{err}");
    }
    // a year is still taken (nothing listens on port 1: exit 1)
    let r = check_json(&["ws://127.0.0.1:1/", "--timeout", "365days"], 1).await;
    assert_eq!(r["failed"], "tcp", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_subprotocols_that_would_break_the_request_are_refused() {
    let (out, err) = check(
        &["ws://127.0.0.1:1/", "--origin", "http://a\r\nX-Injected: 1"],
        2,
    )
    .await;
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("--origin"), "{err}");
    assert!(err.contains("not a valid header value"), "{err}");
    for bad in ["a b", "chat/1", "x\r\nX-Injected: 1"] {
        let (out, err) = check(&["ws://127.0.0.1:1/", "--subprotocol", bad], 2).await;
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("--subprotocol"), "{bad:?}: {err}");
        assert!(err.contains("expected a token"), "{bad:?}: {err}");
    }
    // comma-separated offers and a normal Origin still run (nothing
    // listens on port 1: exit 1 at tcp)
    let r = check_json(
        &[
            "ws://127.0.0.1:1/",
            "--origin",
            "https://app.example.com",
            "--subprotocol",
            "chat, v2.json",
        ],
        1,
    )
    .await;
    assert_eq!(r["failed"], "tcp", "{r:#}");
}
