//! `baton serve --capture FILE.pcap`: every DHCP and TFTP datagram Baton receives and
//! sends, written as a raw-IP pcap that tcpdump and tshark read.

use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::pcap::PcapWriter;

/// A shared capture file; cheap to clone.
#[derive(Clone)]
pub struct Capture(Arc<Mutex<PcapWriter<BufWriter<File>>>>);

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Capture")
    }
}

impl Capture {
    /// Creates (truncates) `path` and writes the pcap header.
    pub fn create(path: &Path) -> std::io::Result<Capture> {
        let w = PcapWriter::new(BufWriter::new(File::create(path)?))?;
        Ok(Capture(Arc::new(Mutex::new(w))))
    }

    /// Records one datagram; a write error is logged once per call, never fatal.
    pub fn record(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write_udp(src, dst, payload) {
            tracing::warn!(error = %e, "cannot write to the capture file");
        }
    }

    /// Records a packet given as header + payload (a TFTP DATA block).
    pub fn record_parts(&self, src: SocketAddr, dst: SocketAddr, head: &[u8], body: &[u8]) {
        let mut v = Vec::with_capacity(head.len() + body.len());
        v.extend_from_slice(head);
        v.extend_from_slice(body);
        self.record(src, dst, &v);
    }

    /// Flushes buffered records to the file.
    pub fn flush(&self) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.flush();
    }
}
