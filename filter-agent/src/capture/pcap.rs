//! Writing captures of Ethernet frames (replies, corpora), with pcap-file's writer.

use std::io::{self, Write};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

/// 2024-01-01T00:00:00Z; frame `i` is stamped `i` milliseconds later, so a capture's
/// bytes depend only on its frames.
const EPOCH: Duration = Duration::from_secs(1_704_067_200);

/// Writes a classic little-endian pcap (LINKTYPE_ETHERNET, microseconds).
pub fn write_pcap_to<W: Write>(out: W, frames: &[Vec<u8>]) -> io::Result<()> {
    let mut writer = FrameWriter::new(out)?;
    for frame in frames {
        writer.write(frame)?;
    }
    Ok(())
}

/// A classic little-endian pcap (LINKTYPE_ETHERNET, microseconds) written frame by frame;
/// frame `i` (from 0) is stamped `i` ms after [`EPOCH`].
pub struct FrameWriter<W: Write> {
    writer: PcapWriter<W>,
    written: usize,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(out: W) -> io::Result<Self> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: 65535,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::Little,
        };
        let writer = PcapWriter::with_header(out, header).map_err(io::Error::other)?;
        Ok(FrameWriter { writer, written: 0 })
    }

    pub fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        let timestamp = EPOCH + Duration::from_millis(self.written as u64);
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        self.writer
            .write_packet(&PcapPacket::new(timestamp, len, frame))
            .map_err(io::Error::other)?;
        self.written += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    pub fn into_inner(self) -> W {
        self.writer.into_writer()
    }
}
