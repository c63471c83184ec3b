//! The human log on stderr: a block per handshake, a line per frame and per
//! HTTP request, findings highlighted when found, and a one-line verdict
//! when a WebSocket closes. Colour only on a terminal.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::time::SystemTime;

use super::Sink;
use crate::proto::close_code;
use crate::proto::event::{
    ConnId, Dir, Encoding, Event, EventKind, Finding, FrameEvent, Handshake, RequestView,
    ResponseView, Severity,
};
use crate::proto::frame::Opcode;

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn severity(&self, sev: Severity, s: &str) -> String {
        match sev {
            Severity::Error => self.paint("1;31", s),
            Severity::Warning => self.paint("1;33", s),
            Severity::Info => self.paint("1;34", s),
        }
    }
    fn dir(&self, d: Dir, s: &str) -> String {
        match d {
            Dir::ClientToServer => self.paint("36", s),
            Dir::ServerToClient => self.paint("35", s),
        }
    }
}

pub struct TerminalSink {
    out: BufWriter<Box<dyn Write + Send>>,
    style: Style,
    /// The most severe finding per open connection, for the verdict.
    /// Keyed by id so the oldest connections (ids only grow) go first
    /// when it is full: see [`MAX_WORST`].
    worst: BTreeMap<ConnId, Finding>,
}

/// Connections whose worst finding is remembered at once. An entry leaves
/// when its connection's `Close` arrives, but `--lossy-log` can drop that
/// event, and ids are never reused, so without a cap the map grows for the
/// whole run (about 380 bytes a connection). 4096 is far more connections
/// with findings than are open at once in practice, and costs at most a
/// couple of MiB; past it the oldest connection loses its entry, and its
/// verdict (if its close ever comes) reads as if it had no finding.
const MAX_WORST: usize = 4096;

impl TerminalSink {
    /// Writes to stderr, with colour when stderr is a terminal.
    pub fn stderr() -> Self {
        let color = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self::new(Box::new(io::stderr()), color)
    }

    pub fn new(w: Box<dyn Write + Send>, color: bool) -> Self {
        TerminalSink {
            out: BufWriter::with_capacity(32 * 1024, w),
            style: Style { on: color },
            worst: BTreeMap::new(),
        }
    }
}

fn clock(ts: SystemTime) -> String {
    // HH:MM:SS.mmm in UTC, cut from the RFC 3339 form
    let s = humantime::format_rfc3339_millis(ts).to_string();
    s.get(11..23).unwrap_or(&s).to_string()
}

fn size(n: u64) -> String {
    if n < 10 * 1024 {
        format!("{n} B")
    } else if n < 10 * 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// A preview on one line: text quoted with escapes, bytes as hex.
pub fn show_preview(f: &FrameEvent) -> String {
    if f.preview.is_empty() {
        return String::new();
    }
    let mut s = match f.encoding {
        Encoding::Utf8 => format!("{:?}", f.preview),
        Encoding::Hex => format!("hex:{}", f.preview),
    };
    if f.truncated {
        s.push('…');
    }
    s
}

fn write_request(out: &mut Vec<String>, label: &str, v: &RequestView, st: &Style) {
    out.push(format!(
        "    {}  {} {} {}",
        st.dim(label),
        v.method,
        v.target,
        v.version
    ));
    for (n, val) in &v.headers {
        out.push(format!(
            "    {:width$}  {n}: {val}",
            "",
            width = label.chars().count()
        ));
    }
}

fn write_response(out: &mut Vec<String>, label: &str, v: &ResponseView, st: &Style) {
    out.push(format!(
        "    {}  {} {} {}",
        st.dim(label),
        v.version,
        v.status,
        v.reason
    ));
    let pad = label.chars().count();
    for (n, val) in &v.headers {
        out.push(format!("    {:pad$}  {n}: {val}", ""));
    }
    if let Some(b) = &v.body_preview {
        out.push(format!("    {:pad$}  body: {:?}", "", b));
    }
}

fn handshake_block(h: &Handshake, st: &Style) -> (String, Vec<String>) {
    let target = h
        .client_request
        .as_ref()
        .map(|r| format!("{} {}", r.method, r.target))
        .unwrap_or_default();
    let outcome = match (&h.upstream_response, &h.client_response) {
        (Some(r), _) => format!("{} {}", r.status, r.reason),
        (None, Some(r)) => format!("{} {} (from wstap: no upstream answer)", r.status, r.reason),
        (None, None) => "no answer".into(),
    };
    let mut lines = Vec::new();
    if let Some(r) = &h.client_request {
        write_request(&mut lines, "client → wstap ", r, st);
    }
    match (&h.upstream_request, &h.client_request) {
        (Some(u), Some(c)) if u == c => lines.push(format!(
            "    {}  (forwarded unchanged)",
            st.dim("wstap → server ")
        )),
        (Some(u), _) => write_request(&mut lines, "wstap → server ", u, st),
        (None, _) => lines.push(format!("    {}  (not sent)", st.dim("wstap → server "))),
    }
    match &h.upstream_response {
        Some(r) => write_response(&mut lines, "server → wstap ", r, st),
        None => lines.push(format!("    {}  (no response)", st.dim("server → wstap "))),
    }
    match (&h.client_response, &h.upstream_response) {
        (Some(c), Some(u)) if c == u => lines.push(format!(
            "    {}  (passed back unchanged)",
            st.dim("wstap → client ")
        )),
        (Some(c), _) => write_response(&mut lines, "wstap → client ", c, st),
        (None, _) => {}
    }
    (format!("handshake {target} → {outcome}"), lines)
}

fn frame_line(f: &FrameEvent, st: &Style) -> String {
    let arrow = match f.from {
        Dir::ClientToServer => "→",
        Dir::ServerToClient => "←",
    };
    let mut flags = Vec::new();
    if !f.fin {
        flags.push("more");
    }
    if f.rsv1 {
        flags.push("rsv1");
    }
    if f.rsv2 {
        flags.push("rsv2");
    }
    if f.rsv3 {
        flags.push("rsv3");
    }
    if f.compressed {
        flags.push("deflate");
    }
    if f.injected {
        flags.push("injected");
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(" "))
    };
    let body = if f.opcode == Opcode::Close && f.close_code.is_none() && f.len == 0 {
        "no status code (APIs report 1005 No Status Rcvd)".to_string()
    } else if let Some(code) = f.close_code {
        let reason = f.close_reason.as_deref().unwrap_or("");
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(" {reason:?}")
        };
        format!(
            "{code} {}{reason}: {}",
            close_code::name(code),
            close_code::meaning(code)
        )
    } else {
        show_preview(f)
    };
    let note = f
        .note
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    format!(
        "{} {:<12} {:>9}{flags}  {body}{note}",
        st.dir(f.from, arrow),
        f.opcode.name(),
        size(f.len)
    )
}

impl TerminalSink {
    fn line(&mut self, ts: SystemTime, conn: Option<ConnId>, text: &str) -> io::Result<()> {
        let c = conn.map(|c| c.to_string()).unwrap_or_default();
        writeln!(self.out, "{} {:>4} {text}", self.style.dim(&clock(ts)), c)
    }

    fn finding(&mut self, ts: SystemTime, conn: Option<ConnId>, f: &Finding) -> io::Result<()> {
        let head = self
            .style
            .severity(f.severity, &format!("! {} {}", f.severity, f.code));
        self.line(ts, conn, &format!("{head}: {}", f.message))?;
        if let Some(o) = &f.observed {
            writeln!(self.out, "{:>18}  seen: {o}", "")?;
        }
        if !f.hint.is_empty() {
            writeln!(self.out, "{:>18}  fix:  {}", "", f.hint)?;
        }
        if let Some(c) = conn {
            let worse = self.worst.get(&c).is_none_or(|w| f.severity > w.severity);
            if worse {
                self.worst.insert(c, f.clone());
                while self.worst.len() > MAX_WORST {
                    self.worst.pop_first();
                }
            }
        }
        Ok(())
    }
}

impl Sink for TerminalSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let (ts, conn) = (ev.ts, ev.conn);
        match &ev.kind {
            // the CLI prints the listening line itself, before any event
            EventKind::Listening(_) => Ok(()),
            EventKind::Handshake(h) => {
                let (title, lines) = handshake_block(h, &self.style);
                let title = self.style.bold(&title);
                self.line(ts, conn, &title)?;
                for l in lines {
                    writeln!(self.out, "{l}")?;
                }
                Ok(())
            }
            EventKind::Frame(f) => {
                let text = frame_line(f, &self.style);
                self.line(ts, conn, &text)
            }
            EventKind::Finding(f) => self.finding(ts, conn, f),
            EventKind::Http(h) => {
                let text = format!(
                    "http {} {} → {} ({:.1} ms, {})",
                    h.method,
                    h.target,
                    h.status,
                    h.duration_ms,
                    size(h.response_bytes)
                );
                self.line(ts, conn, &text)
            }
            EventKind::Error(e) => {
                let text = self
                    .style
                    .severity(Severity::Error, &format!("error: {}", e.message));
                self.line(ts, conn, &text)
            }
            EventKind::Dropped(d) if d.count == 0 => Ok(()),
            EventKind::Dropped(d) => {
                let text = self.style.severity(
                    Severity::Warning,
                    &format!(
                        "{} events dropped (--lossy-log: the outputs could not keep up; {} so far)",
                        d.count, d.total
                    ),
                );
                self.line(ts, conn, &text)
            }
            EventKind::Close(c) => {
                let worst = conn.and_then(|c| self.worst.remove(&c));
                if !c.websocket && worst.is_none() {
                    return Ok(());
                }
                let verdict = match worst {
                    Some(w) if w.severity > Severity::Info => self
                        .style
                        .severity(w.severity, &format!("{}: {}", w.code, w.message)),
                    _ => self.style.paint("1;32", "healthy"),
                };
                let text = format!(
                    "closed ({}) after {:.1} s: {} frames →, {} frames ←; {}; verdict: {verdict}",
                    c.reason,
                    c.duration_ms / 1000.0,
                    c.frames_from_client,
                    c.frames_from_server,
                    c.detail,
                );
                self.line(ts, conn, &text)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self, dropped: u64) -> io::Result<()> {
        if dropped > 0 {
            writeln!(
                self.out,
                "wstap: {dropped} events were dropped because the outputs could not keep up (--lossy-log)"
            )?;
        }
        self.out.flush()
    }

    fn name(&self) -> &str {
        "terminal log"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::CloseSummary;
    use crate::proto::frame::Opcode;
    use crate::sink::memory::Memory as Buf;

    #[test]
    fn frame_lines_show_direction_opcode_length_and_preview() {
        let buf = Buf::default();
        let mut t = TerminalSink::new(Box::new(buf.clone()), false);
        let f = FrameEvent {
            preview: "03e8627965".into(),
            encoding: Encoding::Hex,
            close_code: Some(1000),
            close_name: Some("Normal Closure".into()),
            close_reason: Some("bye".into()),
            ..FrameEvent::new(Dir::ServerToClient, Opcode::Close, 5)
        };
        t.event(&Event::conn(
            SystemTime::UNIX_EPOCH,
            ConnId(7),
            EventKind::Frame(f),
        ))
        .unwrap();
        t.flush().unwrap();
        let s = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(s.starts_with("00:00:00.000   #7 ← close"), "{s}");
        assert!(s.contains("5 B"), "{s}");
        assert!(s.contains("1000 Normal Closure \"bye\""), "{s}");
        assert!(!s.contains('\x1b'));
    }

    fn finding(t: &mut TerminalSink, conn: u64, code: &str, sev: Severity) {
        let f = Finding::new(code, sev, format!("{code} on #{conn}"), "");
        t.event(&Event::conn(
            SystemTime::UNIX_EPOCH,
            ConnId(conn),
            EventKind::Finding(f),
        ))
        .unwrap();
    }

    fn close(t: &mut TerminalSink, conn: u64) {
        let c = CloseSummary {
            websocket: true,
            ..CloseSummary::without_traffic("client-closed", "the client closed", 1.0)
        };
        t.event(&Event::conn(
            SystemTime::UNIX_EPOCH,
            ConnId(conn),
            EventKind::Close(c),
        ))
        .unwrap();
    }

    #[test]
    fn verdicts_stay_bounded_when_closes_are_dropped() {
        let buf = Buf::default();
        let mut t = TerminalSink::new(Box::new(buf.clone()), false);
        // as under --lossy-log when every close is dropped
        let n = 3 * MAX_WORST as u64;
        for id in 1..=n {
            finding(&mut t, id, "bad-thing", Severity::Warning);
        }
        assert_eq!(t.worst.len(), MAX_WORST);
        // the newest are kept, the oldest went first
        let first_kept = n - MAX_WORST as u64 + 1;
        assert_eq!(t.worst.keys().next(), Some(&ConnId(first_kept)));
        assert!(!t.worst.contains_key(&ConnId(first_kept - 1)));

        // a kept connection still gets its worst finding as its verdict
        finding(&mut t, n, "worse-thing", Severity::Error);
        finding(&mut t, n, "mild-thing", Severity::Info);
        buf.0.lock().unwrap().clear();
        close(&mut t, n);
        t.flush().unwrap();
        let s = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            s.contains(&format!("verdict: worse-thing: worse-thing on #{n}")),
            "{s}"
        );
        assert!(!t.worst.contains_key(&ConnId(n)));
        assert_eq!(t.worst.len(), MAX_WORST - 1);

        // and one without findings is healthy
        buf.0.lock().unwrap().clear();
        close(&mut t, n + 1);
        t.flush().unwrap();
        let s = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(s.contains("verdict: healthy"), "{s}");
    }
}
