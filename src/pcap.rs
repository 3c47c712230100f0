//! `--pcap FILE`: every frame that crosses the tap, in both directions, written in the
//! classic pcap format (LINKTYPE_ETHERNET, microsecond timestamps) that tcpdump, tshark and
//! wireshark read.
//!
//! A capture is a debugging aid, so it must never put the network at risk: the file is
//! bounded (`--pcap-size`, [`DEFAULT_SIZE_LIMIT`] by default) and capture stops, with one
//! info line, at the first frame that would not fit; a write error (disk full) stops it
//! with one warning. Neither stops the traffic. Writes go through a buffer; the event loop
//! calls [`PcapWriter::flush`] before it sleeps, so a file read while rslirp runs holds
//! every frame up to the loop's last wake-up, and one read after exit holds them all.
//!
//! The file is created at start-up, before `--enable-sandbox` hides the file system, with
//! mode 0600: it holds the container's traffic in clear.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The size bound when `--pcap-size` is not given: enough for minutes of busy traffic,
/// small enough that a forgotten `--pcap` cannot fill a disk.
pub const DEFAULT_SIZE_LIMIT: u64 = 100 * 1024 * 1024;
/// The pcap file header; a bound below this cannot hold a valid file.
pub const FILE_HEADER_LEN: u64 = 24;
/// Each frame's record header (timestamp, captured and original length).
pub const RECORD_HEADER_LEN: u64 = 16;

/// The magic of the microsecond-timestamp format, written in our byte order; readers
/// detect the order from it.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
const LINKTYPE_ETHERNET: u32 = 1;
/// libpcap's largest snap length. Our largest frame (65554 bytes) is below it, so frames
/// are never cut and the captured length is always the original length.
const SNAPLEN: u32 = 262_144;
/// Enough for a few hundred small frames, or several at the largest MTU, per write(2).
const BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot create pcap file {path}: {source}")]
pub struct PcapError {
    path: String,
    source: io::Error,
}

/// An open capture. Once capture stops (bound reached, write error) every further frame is
/// ignored at the cost of one check.
pub struct PcapWriter<W: Write = File> {
    /// `None` once capture has stopped; dropping the buffer there flushed it.
    out: Option<BufWriter<W>>,
    /// The file's name, for log lines.
    name: String,
    /// Bytes in the file so far, header included.
    written: u64,
    /// The file never grows beyond this many bytes.
    limit: u64,
    frames: u64,
}

impl PcapWriter<File> {
    /// Creates (or truncates) `path` and writes the pcap header, so that a path we cannot
    /// write to fails at start-up, not at the first frame. `limit` is the file's size bound,
    /// header included; it must be at least [`FILE_HEADER_LEN`].
    pub fn create(path: &Path, limit: u64) -> Result<PcapWriter<File>, PcapError> {
        let error = |source| PcapError {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(error)?;
        let writer = PcapWriter::new(file, path.display().to_string(), limit).map_err(error)?;
        log::info!(
            "pcap: capturing every tap frame to {} (up to {limit} bytes)",
            path.display()
        );
        Ok(writer)
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header to `out` at once (unbuffered), then buffers the frames.
    fn new(mut out: W, name: String, limit: u64) -> io::Result<PcapWriter<W>> {
        debug_assert!(limit >= FILE_HEADER_LEN);
        out.write_all(&file_header())?;
        out.flush()?;
        Ok(PcapWriter {
            out: Some(BufWriter::with_capacity(BUFFER_BYTES, out)),
            name,
            written: FILE_HEADER_LEN,
            limit,
            frames: 0,
        })
    }

    /// Records one frame that crossed the tap, stamped with the wall clock (pcap readers
    /// show absolute times).
    pub fn frame(&mut self, frame: &[u8]) {
        if self.out.is_some() {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.frame_at(since_epoch, frame);
        }
    }

    fn frame_at(&mut self, since_epoch: Duration, frame: &[u8]) {
        let Some(out) = &mut self.out else {
            return;
        };
        let record_len = RECORD_HEADER_LEN + frame.len() as u64;
        if self.written + record_len > self.limit {
            log::info!(
                "pcap: {} reached its size limit of {} bytes after {} frames; capture \
                 stopped, traffic continues",
                self.name,
                self.limit,
                self.frames
            );
            self.stop();
            return;
        }
        match write_record(out, since_epoch, frame) {
            Ok(()) => {
                self.written += record_len;
                self.frames += 1;
            }
            Err(err) => {
                log::warn!("pcap: writing {} failed: {err}; capture stopped", self.name);
                self.stop();
            }
        }
    }

    /// Writes out what is buffered (nothing to do, and no system call, when the buffer is
    /// empty).
    pub fn flush(&mut self) {
        let Some(out) = &mut self.out else {
            return;
        };
        if out.buffer().is_empty() {
            return;
        }
        if let Err(err) = out.flush() {
            log::warn!("pcap: writing {} failed: {err}; capture stopped", self.name);
            self.out = None;
        }
    }

    /// Whether frames are still being recorded.
    pub fn is_capturing(&self) -> bool {
        self.out.is_some()
    }

    /// Bytes in the file so far, header included.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Flushes and closes the output; later frames are ignored.
    fn stop(&mut self) {
        self.flush();
        self.out = None;
    }
}

impl<W: Write> Drop for PcapWriter<W> {
    fn drop(&mut self) {
        self.stop();
        log::info!(
            "pcap: {} frames ({} bytes) written to {}",
            self.frames,
            self.written,
            self.name
        );
    }
}

/// The 24-byte global header: magic, version 2.4, UTC offset 0, accuracy 0, snap length,
/// link type.
fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    header[0..4].copy_from_slice(&MAGIC_MICROS.to_ne_bytes());
    header[4..6].copy_from_slice(&VERSION_MAJOR.to_ne_bytes());
    header[6..8].copy_from_slice(&VERSION_MINOR.to_ne_bytes());
    // thiszone (8..12) and sigfigs (12..16) stay 0, as every modern writer leaves them.
    header[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
    header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    header
}

fn write_record(out: &mut impl Write, since_epoch: Duration, frame: &[u8]) -> io::Result<()> {
    // Seconds wrap in 2106, as in every classic pcap file; frames are at most 65554 bytes.
    let seconds = since_epoch.as_secs() as u32;
    let length = frame.len() as u32;
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    header[0..4].copy_from_slice(&seconds.to_ne_bytes());
    header[4..8].copy_from_slice(&since_epoch.subsec_micros().to_ne_bytes());
    header[8..12].copy_from_slice(&length.to_ne_bytes());
    header[12..16].copy_from_slice(&length.to_ne_bytes());
    out.write_all(&header)?;
    out.write_all(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A writer whose bytes the test can still read after the capture took it, and which
    /// can be told to fail.
    #[derive(Clone, Default)]
    struct Shared {
        bytes: Rc<RefCell<Vec<u8>>>,
        failing: Rc<RefCell<bool>>,
    }

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if *self.failing.borrow() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.bytes.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    fn capture(limit: u64) -> (PcapWriter<Shared>, Shared) {
        let shared = Shared::default();
        let writer = PcapWriter::new(shared.clone(), "test.pcap".into(), limit).expect("header");
        (writer, shared)
    }

    #[test]
    fn header_is_written_at_once() {
        let (_writer, shared) = capture(DEFAULT_SIZE_LIMIT);
        let bytes = shared.bytes.borrow();
        assert_eq!(bytes.len(), 24);
        assert_eq!(u32_at(&bytes, 0), 0xa1b2_c3d4);
        assert_eq!(
            &bytes[4..8],
            &[2u16.to_ne_bytes(), 4u16.to_ne_bytes()].concat()[..]
        );
        assert_eq!(u32_at(&bytes, 8), 0);
        assert_eq!(u32_at(&bytes, 12), 0);
        assert_eq!(u32_at(&bytes, 16), 262_144);
        assert_eq!(u32_at(&bytes, 20), 1, "LINKTYPE_ETHERNET");
    }

    #[test]
    fn records_carry_time_and_length_and_reach_the_file_on_flush() {
        let (mut writer, shared) = capture(DEFAULT_SIZE_LIMIT);
        let frame = [0xabu8; 60];
        writer.frame_at(Duration::new(1_700_000_000, 123_456_789), &frame);
        assert_eq!(shared.bytes.borrow().len(), 24, "buffered until flushed");
        writer.flush();
        let bytes = shared.bytes.borrow();
        assert_eq!(bytes.len(), 24 + 16 + 60);
        assert_eq!(u32_at(&bytes, 24), 1_700_000_000);
        assert_eq!(u32_at(&bytes, 28), 123_456, "microseconds");
        assert_eq!(u32_at(&bytes, 32), 60, "captured length");
        assert_eq!(u32_at(&bytes, 36), 60, "original length");
        assert_eq!(&bytes[40..], &frame[..]);
        assert_eq!(writer.bytes_written(), 100);
    }

    #[test]
    fn capture_stops_at_the_first_frame_that_would_pass_the_bound() {
        // Room for the header and exactly two 100-byte frames.
        let limit = 24 + 2 * (16 + 100);
        let (mut writer, shared) = capture(limit);
        for _ in 0..2 {
            writer.frame_at(Duration::ZERO, &[1u8; 100]);
        }
        assert!(writer.is_capturing());
        writer.frame_at(Duration::ZERO, &[2u8; 1]);
        assert!(!writer.is_capturing());
        // A smaller frame that would still fit is not taken either: the capture has ended.
        writer.frame_at(Duration::ZERO, &[]);
        assert_eq!(shared.bytes.borrow().len() as u64, limit, "flushed on stop");
        assert_eq!(writer.bytes_written(), limit);
    }

    #[test]
    fn write_error_stops_capture_without_panicking() {
        let (mut writer, shared) = capture(DEFAULT_SIZE_LIMIT);
        writer.frame_at(Duration::ZERO, &[1u8; 10]);
        *shared.failing.borrow_mut() = true;
        writer.flush();
        assert!(!writer.is_capturing());
        writer.frame_at(Duration::ZERO, &[1u8; 10]);
        writer.flush();
        assert_eq!(shared.bytes.borrow().len(), 24);
    }

    #[test]
    fn drop_flushes() {
        let (mut writer, shared) = capture(DEFAULT_SIZE_LIMIT);
        writer.frame_at(Duration::ZERO, &[7u8; 42]);
        drop(writer);
        assert_eq!(shared.bytes.borrow().len(), 24 + 16 + 42);
    }

    #[test]
    fn create_writes_a_private_file_and_fails_with_one_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rslirp-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("capture.pcap");
        let writer = PcapWriter::create(&path, DEFAULT_SIZE_LIMIT).expect("create");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 24);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        drop(writer);

        let missing = dir.join("no/such/dir/capture.pcap");
        let err = PcapWriter::create(&missing, DEFAULT_SIZE_LIMIT)
            .err()
            .expect("a missing directory must fail");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot create pcap file {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        // /dev/full opens but refuses the header: also a start-up error, not a later one.
        assert!(PcapWriter::create(Path::new("/dev/full"), DEFAULT_SIZE_LIMIT).is_err());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
