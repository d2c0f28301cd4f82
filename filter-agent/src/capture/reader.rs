//! Reading captures as users hand them over, one record at a time in constant memory:
//! classic pcap (either byte order, micro- or nanosecond stamps), pcapng (any number of
//! sections and interfaces, any options, unknown blocks skipped), parsed by rusticata's
//! `pcap-parser`, which like libpcap accepts truncated records and included lengths above
//! the snap length. Cooked (Linux SLL, SLL2) and raw-IP packets are given to the
//! program behind an Ethernet header with zero MACs; other link types cannot be judged.

use std::fmt;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError, create_reader};

use filter_common::wire::{ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// Read buffer; grown for bigger records up to `MAX_RECORD`.
const BUFFER: usize = 1 << 20;
/// Larger than any record a capture tool writes (libpcap's own limit is 256 KiB): a record
/// claiming more is taken as damage.
const MAX_RECORD: usize = 64 << 20;
const ETHERNET_HEADER_LEN: usize = 14;
const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
/// The pcapng block type of the obsolete Packet Block, still written by old tools.
const OBSOLETE_PACKET_BLOCK: u32 = 2;

/// The link layer of a capture's records, as the file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    LinuxSll,
    LinuxSll2,
    /// LINKTYPE_RAW (and DLT_RAW's 12, which old files carry): IPv4 or IPv6 by version.
    Raw,
    Ipv4,
    Ipv6,
    /// Any other: its records are reported, not judged.
    Other(i32),
}

impl LinkType {
    fn from_number(number: i32) -> Self {
        match Linktype(number) {
            Linktype::ETHERNET => LinkType::Ethernet,
            Linktype::LINUX_SLL => LinkType::LinuxSll,
            Linktype::LINUX_SLL2 => LinkType::LinuxSll2,
            Linktype::RAW | Linktype(12) => LinkType::Raw,
            Linktype::IPV4 => LinkType::Ipv4,
            Linktype::IPV6 => LinkType::Ipv6,
            _ => LinkType::Other(number),
        }
    }

    /// The number in the file (LINKTYPE_*).
    pub fn number(self) -> i32 {
        match self {
            LinkType::Ethernet => Linktype::ETHERNET.0,
            LinkType::LinuxSll => Linktype::LINUX_SLL.0,
            LinkType::LinuxSll2 => Linktype::LINUX_SLL2.0,
            LinkType::Raw => Linktype::RAW.0,
            LinkType::Ipv4 => Linktype::IPV4.0,
            LinkType::Ipv6 => Linktype::IPV6.0,
            LinkType::Other(number) => number,
        }
    }

    /// Whether its records can be turned into frames the program judges.
    pub fn is_supported(self) -> bool {
        !matches!(self, LinkType::Other(_))
    }

    /// Bytes of link-layer header replaced by the Ethernet header (negative: added).
    fn header_len(self) -> usize {
        match self {
            LinkType::Ethernet => ETHERNET_HEADER_LEN,
            LinkType::LinuxSll => SLL_HEADER_LEN,
            LinkType::LinuxSll2 => SLL2_HEADER_LEN,
            LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 | LinkType::Other(_) => 0,
        }
    }
}

/// The tcpdump.org registry name without its `LINKTYPE_` prefix, lower case
/// (`ethernet`, `linux_sll`, `raw`...); the number for unnamed ones.
impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkType::Ethernet => f.write_str("ethernet"),
            LinkType::LinuxSll => f.write_str("linux_sll"),
            LinkType::LinuxSll2 => f.write_str("linux_sll2"),
            LinkType::Raw => f.write_str("raw"),
            LinkType::Ipv4 => f.write_str("ipv4"),
            LinkType::Ipv6 => f.write_str("ipv6"),
            LinkType::Other(number) => match Linktype(*number).to_string() {
                // pcap-parser names the ones it knows, upper case (others as
                // "Linktype(147 / 0x93)"): those by name, the rest by number.
                name if name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
                {
                    f.write_str(&name.to_ascii_lowercase())
                }
                _ => write!(f, "{number}"),
            },
        }
    }
}

/// One record of a capture.
pub struct Record<'a> {
    /// 1-based within its capture.
    pub index: usize,
    pub linktype: LinkType,
    /// What the program is given: the Ethernet frame (for cooked and raw-IP records one
    /// built in front of the packet). `None` when the record cannot be judged; `skip` says
    /// why.
    pub frame: Option<&'a [u8]>,
    pub skip: Option<&'static str>,
    /// Bytes captured: `frame`'s length, or the record's for a skipped one.
    pub len: usize,
    /// The record's length on the wire, counted as `frame` is (an Ethernet header in
    /// place of a cooked one).
    pub orig_len: usize,
    /// The capture holds fewer bytes than were on the wire (a snap length cut it).
    pub truncated: bool,
    /// The record holds more bytes than the capture's snap length allows (libpcap reads
    /// those; so does replay), with that snap length.
    pub over_snaplen: Option<u32>,
}

/// How a capture ended.
#[derive(Debug, Default)]
pub struct CaptureEnd {
    pub records: usize,
    /// Why reading stopped before the end of the file, if it did.
    pub early: Option<String>,
}

/// The link type and snap length of a pcapng interface (or a classic pcap file).
#[derive(Clone, Copy)]
struct Interface {
    linktype: LinkType,
    snaplen: u32,
}

/// Reads the capture at `path` record by record, in file order, calling `each` with every
/// one; a record cut by the end of the file (or one claiming an impossible size) ends
/// it, said in the returned `CaptureEnd`. Errors: unreadable or unrecognized files, and
/// whatever `each` returns.
pub fn for_each_record(
    path: &Path,
    mut each: impl FnMut(Record<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<CaptureEnd> {
    let file = File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut reader = match create_reader(BUFFER, file) {
        Ok(reader) => reader,
        Err(PcapError::Eof) => bail!("{}: empty file, not a capture", path.display()),
        Err(PcapError::HeaderNotRecognized) => bail!(
            "{}: not a pcap or pcapng file (unknown magic number)",
            path.display()
        ),
        Err(e) => bail!("{}: bad capture header: {e:?}", path.display()),
    };
    let mut state = ReadState::default();
    let mut scratch = Vec::new();
    let mut capacity = BUFFER;
    loop {
        let early = match reader.next() {
            Ok((consumed, block)) => {
                state.handle(block, &mut scratch, &mut each)?;
                reader.consume(consumed);
                continue;
            }
            Err(PcapError::Eof) => None,
            Err(PcapError::Incomplete(_)) => {
                if let Err(e) = reader.refill() {
                    bail!("{}: read error: {e:?}", path.display());
                }
                continue;
            }
            Err(PcapError::BufferTooSmall) => {
                capacity *= 2;
                if capacity <= MAX_RECORD && reader.grow(capacity) {
                    continue;
                }
                Some(format!(
                    "record {} claims more than {} MiB: the file is damaged from there on",
                    state.records + 1,
                    MAX_RECORD >> 20
                ))
            }
            Err(PcapError::UnexpectedEof) => Some(format!(
                "the file ends inside record {} (cut short while being written or copied?)",
                state.records + 1
            )),
            Err(PcapError::ReadError) => bail!("{}: read error", path.display()),
            Err(e) => Some(format!(
                "unreadable data after record {}: {e:?}",
                state.records
            )),
        };
        return Ok(CaptureEnd {
            records: state.records,
            early,
        });
    }
}

#[derive(Default)]
struct ReadState {
    /// The interfaces of the current pcapng section, or the one of a classic pcap.
    interfaces: Vec<Interface>,
    big_endian: bool,
    records: usize,
}

impl ReadState {
    fn handle(
        &mut self,
        block: PcapBlockOwned<'_>,
        scratch: &mut Vec<u8>,
        each: &mut impl FnMut(Record<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let (interface, data, orig_len) = match block {
            PcapBlockOwned::LegacyHeader(header) => {
                // The upper bits may say whether frames end in an FCS: the link type is
                // the lower 16.
                self.interfaces = vec![Interface {
                    linktype: LinkType::from_number(header.network.0 & 0xffff),
                    snaplen: header.snaplen,
                }];
                return Ok(());
            }
            PcapBlockOwned::Legacy(record) => (0, record.data, record.origlen),
            PcapBlockOwned::NG(Block::SectionHeader(section)) => {
                // Interface ids count from zero again in every section.
                self.interfaces.clear();
                self.big_endian = section.big_endian();
                return Ok(());
            }
            PcapBlockOwned::NG(Block::InterfaceDescription(description)) => {
                self.interfaces.push(Interface {
                    linktype: LinkType::from_number(description.linktype.0),
                    snaplen: description.snaplen,
                });
                return Ok(());
            }
            // The block's data is padded to 32 bits: the captured length says how much is
            // the packet.
            PcapBlockOwned::NG(Block::EnhancedPacket(packet)) => {
                let data = packet.data;
                let len = data.len().min(packet.caplen as usize);
                (packet.if_id, &data[..len], packet.origlen)
            }
            // A simple packet block belongs to the section's first interface, and holds
            // at most its snap length.
            PcapBlockOwned::NG(Block::SimplePacket(packet)) => {
                let snaplen = match self.interface(0)?.snaplen {
                    0 => usize::MAX,
                    n => n as usize,
                };
                let data = packet.data;
                let len = data.len().min(packet.origlen as usize).min(snaplen);
                let data = &data[..len];
                (0, data, packet.origlen)
            }
            PcapBlockOwned::NG(Block::Unknown(block))
                if block.block_type == OBSOLETE_PACKET_BLOCK
                    || block.block_type == OBSOLETE_PACKET_BLOCK.swap_bytes() =>
            {
                self.obsolete_packet(block.data)?
            }
            // Statistics, name resolution, secrets, custom and unknown blocks.
            PcapBlockOwned::NG(_) => return Ok(()),
        };
        let Interface { linktype, snaplen } = self.interface(interface)?;
        self.records += 1;
        let truncated = (orig_len as usize) > data.len();
        let over_snaplen = (snaplen != 0 && data.len() > snaplen as usize).then_some(snaplen);
        // The original length as the frame counts it: our Ethernet header for theirs.
        let orig_len = (orig_len as usize).max(data.len());
        let frame_orig_len = |header: usize| orig_len.saturating_sub(header) + ETHERNET_HEADER_LEN;
        let (frame, skip) = match ethernet_frame(linktype, data, scratch) {
            Ok(frame) => (Some(frame), None),
            Err(why) => (None, Some(why)),
        };
        let len = frame.map_or(data.len(), <[u8]>::len);
        let orig_len = match (linktype, frame) {
            (LinkType::Ethernet, _) | (_, None) => orig_len,
            (other, Some(_)) => frame_orig_len(other.header_len()),
        };
        each(Record {
            index: self.records,
            linktype,
            frame,
            skip,
            len,
            orig_len,
            truncated,
            over_snaplen,
        })
    }

    fn interface(&self, id: u32) -> anyhow::Result<Interface> {
        match self.interfaces.get(id as usize) {
            Some(interface) => Ok(*interface),
            None => bail!(
                "record {} names interface {id}, which no interface description block \
                 of its section describes",
                self.records + 1
            ),
        }
    }

    /// Interface, data and original length of an obsolete Packet Block's body.
    fn obsolete_packet<'d>(&self, body: &'d [u8]) -> anyhow::Result<(u32, &'d [u8], u32)> {
        let u16_at = |at: usize| -> Option<u16> {
            let bytes = body.get(at..at + 2)?.try_into().ok()?;
            Some(if self.big_endian {
                u16::from_be_bytes(bytes)
            } else {
                u16::from_le_bytes(bytes)
            })
        };
        let u32_at = |at: usize| -> Option<u32> {
            let bytes = body.get(at..at + 4)?.try_into().ok()?;
            Some(if self.big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            })
        };
        let parsed = (|| {
            let (interface, caplen, orig_len) = (u16_at(0)?, u32_at(12)?, u32_at(16)?);
            let data = body.get(20..20usize.checked_add(caplen as usize)?)?;
            Some((u32::from(interface), data, orig_len))
        })();
        parsed.with_context(|| {
            format!(
                "record {}: a packet block shorter than its lengths say",
                self.records + 1
            )
        })
    }
}

/// The Ethernet frame the program is given for a record of `linktype`: the record itself
/// for Ethernet, else built in `scratch`. Err: why it cannot be judged.
fn ethernet_frame<'a>(
    linktype: LinkType,
    data: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], &'static str> {
    let (ethertype, packet) = match linktype {
        LinkType::Ethernet => return Ok(data),
        // The protocol field is the EtherType (values below 0x0600 name non-Ethernet
        // payloads; the program passes those as not IP, as it would any such frame).
        LinkType::LinuxSll => match data.get(14..16) {
            Some(protocol) => ([protocol[0], protocol[1]], &data[SLL_HEADER_LEN..]),
            None => return Err("record shorter than its Linux cooked (SLL) header"),
        },
        LinkType::LinuxSll2 => match data.get(..SLL2_HEADER_LEN) {
            Some(header) => ([header[0], header[1]], &data[SLL2_HEADER_LEN..]),
            None => return Err("record shorter than its Linux cooked (SLL2) header"),
        },
        LinkType::Raw => match data.first().map(|b| b >> 4) {
            Some(4) => (ETHERTYPE_IPV4.to_be_bytes(), data),
            Some(6) => (ETHERTYPE_IPV6.to_be_bytes(), data),
            _ => return Err("raw packet that is neither IPv4 nor IPv6 (version nibble)"),
        },
        LinkType::Ipv4 => (ETHERTYPE_IPV4.to_be_bytes(), data),
        LinkType::Ipv6 => (ETHERTYPE_IPV6.to_be_bytes(), data),
        LinkType::Other(_) => return Err("link type not supported: not judged"),
    };
    scratch.clear();
    scratch.extend_from_slice(&[0; 12]);
    scratch.extend_from_slice(&ethertype);
    scratch.extend_from_slice(packet);
    Ok(scratch)
}

/// Every judgeable frame of the capture at `path` as the program is given it, in file
/// order (for tests and tools; `replay` streams). Fails on records it cannot judge and on
/// a file that ends early.
pub fn read_frames(path: impl AsRef<Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = path.as_ref();
    let mut frames = Vec::new();
    let end = for_each_record(path, |record| {
        match (record.frame, record.skip) {
            (Some(frame), _) => frames.push(frame.to_vec()),
            (None, why) => bail!(
                "{}: record {} ({}): {}",
                path.display(),
                record.index,
                record.linktype,
                why.unwrap_or_default()
            ),
        }
        Ok(())
    })?;
    if let Some(early) = end.early {
        bail!("{}: {early}", path.display());
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types_are_named_as_the_registry_names_them() {
        let names: Vec<String> = [1, 113, 276, 101, 12, 228, 229, 0, 108, 147]
            .into_iter()
            .map(|number| LinkType::from_number(number).to_string())
            .collect();
        assert_eq!(
            names,
            [
                "ethernet",
                "linux_sll",
                "linux_sll2",
                "raw",
                "raw",
                "ipv4",
                "ipv6",
                "null",
                "loop",
                "147"
            ]
        );
        assert!(!LinkType::from_number(0).is_supported());
        assert_eq!(LinkType::from_number(12).number(), 101);
    }
}
