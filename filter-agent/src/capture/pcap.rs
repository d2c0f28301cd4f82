//! Reading and writing captures of Ethernet frames.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, Endianness, TsResolution};

/// 2024-01-01T00:00:00Z; frame `i` is stamped `i` milliseconds later, so a capture's
/// bytes depend only on its frames.
const EPOCH: Duration = Duration::from_secs(1_704_067_200);

/// Writes a classic little-endian pcap (LINKTYPE_ETHERNET, microseconds).
pub fn write_pcap_to<W: Write>(out: W, frames: &[Vec<u8>]) -> io::Result<()> {
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
    let mut writer = PcapWriter::with_header(out, header).map_err(io::Error::other)?;
    for (i, frame) in frames.iter().enumerate() {
        let timestamp = EPOCH + Duration::from_millis(i as u64);
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        writer
            .write_packet(&PcapPacket::new(timestamp, len, frame))
            .map_err(io::Error::other)?;
    }
    Ok(())
}

/// Reads every frame of a pcap or pcapng capture of Ethernet frames.
pub fn read_frames(path: impl AsRef<Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = path.as_ref();
    let mut file = BufReader::new(File::open(path).with_context(|| format!("{}", path.display()))?);
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .with_context(|| format!("{}: too short for a capture", path.display()))?;
    let input = magic.as_slice().chain(file);
    let frames = match u32::from_be_bytes(magic) {
        0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => read_pcap(input),
        0x0a0d_0d0a => read_pcapng(input),
        other => bail!("not a pcap or pcapng file (magic number {other:#010x})"),
    };
    frames.with_context(|| format!("{}", path.display()))
}

fn read_pcap(input: impl Read) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut reader = PcapReader::new(input).context("bad pcap header")?;
    let datalink = reader.header().datalink;
    if datalink != DataLink::ETHERNET {
        bail!("link type {datalink:?} is not Ethernet (LINKTYPE_ETHERNET, 1)");
    }
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.with_context(|| format!("bad packet record {}", frames.len() + 1))?;
        frames.push(packet.data.into_owned());
    }
    Ok(frames)
}

fn read_pcapng(input: impl Read) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut reader = PcapNgReader::new(input).context("bad pcapng section header")?;
    let mut frames = Vec::new();
    loop {
        let (interface, data) = match reader.next_block() {
            None => break,
            Some(Err(e)) => {
                return Err(e).with_context(|| format!("bad block after {} packets", frames.len()));
            }
            Some(Ok(Block::EnhancedPacket(p))) => (p.interface_id, p.data.into_owned()),
            Some(Ok(Block::Packet(p))) => (u32::from(p.interface_id), p.data.into_owned()),
            // A simple packet block belongs to the section's first interface.
            Some(Ok(Block::SimplePacket(p))) => (0, p.data.into_owned()),
            Some(Ok(_)) => continue,
        };
        let Some(description) = reader.interfaces().get(interface as usize) else {
            bail!(
                "packet {} names interface {interface}, which is not described",
                frames.len() + 1
            );
        };
        if description.linktype != DataLink::ETHERNET {
            bail!(
                "packet {} is on interface {interface} with link type {:?}, not Ethernet",
                frames.len() + 1,
                description.linktype
            );
        }
        frames.push(data);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use std::borrow::Cow;

    fn sample_frames() -> Vec<Vec<u8>> {
        vec![
            vec![0xaa; 14],
            (0..=255).collect(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 0, 0x45],
        ]
    }

    #[test]
    fn pcap_round_trip() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path();
        let mut bytes = Vec::new();
        write_pcap_to(&mut bytes, &sample_frames()).unwrap();
        std::fs::write(path, bytes).unwrap();
        assert_eq!(read_frames(path).unwrap(), sample_frames());
    }

    fn pcapng_bytes(linktype: DataLink, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(linktype, 65535))
            .unwrap();
        for (i, frame) in frames.iter().enumerate() {
            let block = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_micros(i as u64),
                original_len: frame.len() as u32,
                data: Cow::Borrowed(frame),
                options: vec![],
            };
            writer.write_pcapng_block(block).unwrap();
        }
        writer.into_inner()
    }

    #[test]
    fn pcapng_round_trip() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path();
        std::fs::write(path, pcapng_bytes(DataLink::ETHERNET, &sample_frames())).unwrap();
        assert_eq!(read_frames(path).unwrap(), sample_frames());
    }

    #[test]
    fn rejects_other_link_types_and_formats() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path();
        std::fs::write(path, pcapng_bytes(DataLink::RAW, &sample_frames())).unwrap();
        let error = format!("{:#}", read_frames(path).unwrap_err());
        assert!(error.contains("not Ethernet"), "{error}");

        let header = PcapHeader {
            datalink: DataLink::LINUX_SLL,
            ..PcapHeader::default()
        };
        let mut pcap = PcapWriter::with_header(Vec::new(), header).unwrap();
        pcap.write_packet(&PcapPacket::new(Duration::ZERO, 3, &[1, 2, 3]))
            .unwrap();
        std::fs::write(path, pcap.into_writer()).unwrap();
        let error = format!("{:#}", read_frames(path).unwrap_err());
        assert!(error.contains("not Ethernet"), "{error}");

        std::fs::write(path, b"N VERDICT REASON\n").unwrap();
        let error = format!("{:#}", read_frames(path).unwrap_err());
        assert!(error.contains("not a pcap or pcapng"), "{error}");
    }
}
