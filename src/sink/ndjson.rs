//! The canonical record: one JSON object per line, gathered in a large
//! buffer (a syscall per frame would cost the relay) and flushed when the
//! dispatcher says so. `diff` reads these files back.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::frame_json::FrameEncoder;
use super::Sink;
use crate::proto::event::Event;

/// Bytes gathered before they are written out.
const BUF: usize = 64 * 1024;

pub struct NdjsonSink {
    out: Box<dyn Write + Send>,
    /// Lines not yet written: each event is encoded straight in here (a
    /// `BufWriter` would take every line through one more copy).
    buf: Vec<u8>,
    name: String,
    frames: FrameEncoder,
}

impl NdjsonSink {
    /// Writes to `path`, or to stdout when it is `-`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let (w, name): (Box<dyn Write + Send>, String) = if path == Path::new("-") {
            (Box::new(io::stdout()), "JSON log (stdout)".into())
        } else {
            (
                Box::new(File::create(path)?),
                format!("JSON log {}", path.display()),
            )
        };
        Ok(Self::new(w, &name))
    }

    pub fn new(w: Box<dyn Write + Send>, name: &str) -> Self {
        NdjsonSink {
            out: w,
            buf: Vec::with_capacity(BUF + 4096),
            name: name.to_string(),
            frames: FrameEncoder::new(),
        }
    }

    /// Hands the gathered lines to the file (or stdout).
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.out.write_all(&self.buf);
        self.buf.clear();
        r
    }
}

impl Sink for NdjsonSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let start = self.buf.len();
        // frames come at wire speed: they take the hand-written encoder
        if !self.frames.encode(&mut self.buf, ev) {
            if let Err(e) = serde_json::to_writer(&mut self.buf, ev) {
                // no half line in the log
                self.buf.truncate(start);
                return Err(io::Error::other(e));
            }
        }
        self.buf.push(b'\n');
        if self.buf.len() >= BUF {
            self.write_out()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.write_out().and_then(|()| self.out.flush()) {
            // a closed stdout pipe (`| head`) is a reader that left, not a failure
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NdjsonSink {
    /// What is still gathered goes out, as a `BufWriter` would write it.
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}
