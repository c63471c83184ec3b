//! The canonical record: one JSON object per line, written through a large
//! buffer (a syscall per frame would cost the relay) and flushed when the
//! dispatcher says so. `diff` reads these files back.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::frame_json::FrameEncoder;
use super::Sink;
use crate::proto::event::Event;

pub struct NdjsonSink {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
    frames: FrameEncoder,
    line: Vec<u8>,
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
            out: BufWriter::with_capacity(64 * 1024, w),
            name: name.to_string(),
            frames: FrameEncoder::new(),
            line: Vec::with_capacity(512),
        }
    }
}

impl Sink for NdjsonSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.line.clear();
        // frames come at wire speed: they take the hand-written encoder
        if !self.frames.encode(&mut self.line, ev) {
            serde_json::to_writer(&mut self.line, ev).map_err(io::Error::other)?;
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.flush() {
            // a closed stdout pipe (`| head`) is a reader that left, not a failure
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}
