//! Capture files byte by byte, the way other tools write them (either byte order,
//! nanosecond stamps, snap lengths, pcapng options and blocks replay must skip), including
//! the odd ones a real collection holds. Only for tests: real captures come from tcpdump.

/// LINKTYPE_* numbers the tests use.
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const RAW: u32 = 101;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

/// A classic pcap file.
pub struct Pcap {
    big_endian: bool,
    nanoseconds: bool,
    snaplen: u32,
    linktype: u32,
    records: Vec<u8>,
}

impl Pcap {
    /// Little-endian, microseconds, snap length 65535.
    pub fn new(linktype: u32) -> Self {
        Pcap {
            big_endian: false,
            nanoseconds: false,
            snaplen: 65535,
            linktype,
            records: Vec::new(),
        }
    }

    pub fn big_endian(mut self) -> Self {
        self.big_endian = true;
        self
    }

    pub fn nanoseconds(mut self) -> Self {
        self.nanoseconds = true;
        self
    }

    /// The header's snap length; records are written as given, whatever it says.
    pub fn snaplen(mut self, snaplen: u32) -> Self {
        self.snaplen = snaplen;
        self
    }

    fn word(&self, value: u32) -> [u8; 4] {
        if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        }
    }

    /// A record of `data` as captured, `orig_len` bytes on the wire.
    pub fn record(mut self, data: &[u8], orig_len: u32) -> Self {
        let index = (self.records.len() as u32) + 1;
        let header = [
            self.word(1_704_067_200),
            // The fraction: microseconds or nanoseconds, below one second either way.
            self.word(index * 1000),
            self.word(data.len() as u32),
            self.word(orig_len),
        ];
        self.records.extend(header.concat());
        self.records.extend_from_slice(data);
        self
    }

    /// A whole record, as long as it is on the wire.
    pub fn frame(self, data: &[u8]) -> Self {
        let len = data.len() as u32;
        self.record(data, len)
    }

    pub fn bytes(&self) -> Vec<u8> {
        let magic: u32 = if self.nanoseconds {
            0xa1b2_3c4d
        } else {
            0xa1b2_c3d4
        };
        let half = |value: u16| {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        };
        let mut bytes = Vec::new();
        bytes.extend(self.word(magic));
        bytes.extend(half(2));
        bytes.extend(half(4));
        bytes.extend(self.word(0));
        bytes.extend(self.word(0));
        bytes.extend(self.word(self.snaplen));
        bytes.extend(self.word(self.linktype));
        bytes.extend(&self.records);
        bytes
    }
}

/// A pcapng file, block by block, in one byte order.
pub struct PcapNg {
    big_endian: bool,
    bytes: Vec<u8>,
}

/// One pcapng option: code and value (padded when written).
pub type PcapNgOption<'a> = (u16, &'a [u8]);

/// opt_comment, and codes no reader knows (in the local-use range 2988 and beyond).
pub const OPT_COMMENT: u16 = 1;
pub const OPT_CUSTOM_UNKNOWN: u16 = 0x4bad;

impl PcapNg {
    /// A section header block with `options` starts the file.
    pub fn new(big_endian: bool, options: &[PcapNgOption<'_>]) -> Self {
        let mut file = PcapNg {
            big_endian,
            bytes: Vec::new(),
        };
        file.section(options);
        file
    }

    fn word(&self, value: u32) -> [u8; 4] {
        if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        }
    }

    fn half(&self, value: u16) -> [u8; 2] {
        if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        }
    }

    fn options(&self, options: &[PcapNgOption<'_>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        if options.is_empty() {
            return bytes;
        }
        for (code, value) in options {
            bytes.extend(self.half(*code));
            bytes.extend(self.half(value.len() as u16));
            bytes.extend_from_slice(value);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        bytes.extend([0; 4]); // opt_endofopt
        bytes
    }

    /// Any block: type, body (padded to 32 bits), lengths around it.
    pub fn block(mut self, block_type: u32, body: &[u8]) -> Self {
        self.push_block(block_type, body);
        self
    }

    fn push_block(&mut self, block_type: u32, body: &[u8]) {
        let mut body = body.to_vec();
        body.resize(body.len().next_multiple_of(4), 0);
        let total = (body.len() + 12) as u32;
        let header = [self.word(block_type), self.word(total)].concat();
        self.bytes.extend(header);
        self.bytes.extend(body);
        let trailer = self.word(total);
        self.bytes.extend(trailer);
    }

    /// Another section header block: interface ids start again from 0.
    pub fn section(&mut self, options: &[PcapNgOption<'_>]) {
        let mut body = Vec::new();
        body.extend(self.word(0x1a2b_3c4d));
        body.extend(self.half(1));
        body.extend(self.half(0));
        body.extend((-1i64).to_le_bytes()); // section length unknown
        body.extend(self.options(options));
        self.push_block(0x0a0d_0d0a, &body);
    }

    /// An interface description block.
    pub fn interface(mut self, linktype: u16, snaplen: u32, options: &[PcapNgOption<'_>]) -> Self {
        let mut body = Vec::new();
        body.extend(self.half(linktype));
        body.extend(self.half(0));
        body.extend(self.word(snaplen));
        body.extend(self.options(options));
        self.push_block(1, &body);
        self
    }

    /// An enhanced packet block on `interface`.
    pub fn packet(
        mut self,
        interface: u32,
        data: &[u8],
        orig_len: u32,
        options: &[PcapNgOption<'_>],
    ) -> Self {
        let mut body = Vec::new();
        body.extend(self.word(interface));
        body.extend(self.word(0x0005_f000));
        body.extend(self.word(0x1234_5678));
        body.extend(self.word(data.len() as u32));
        body.extend(self.word(orig_len));
        body.extend_from_slice(data);
        body.resize(body.len().next_multiple_of(4), 0);
        body.extend(self.options(options));
        self.push_block(6, &body);
        self
    }

    /// A simple packet block (the first interface's).
    pub fn simple_packet(mut self, data: &[u8]) -> Self {
        let mut body = Vec::new();
        body.extend(self.word(data.len() as u32));
        body.extend_from_slice(data);
        self.push_block(3, &body);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// A Linux cooked (SLL) header for a packet of `ethertype` received from a host.
pub fn sll_header(ethertype: u16) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend(0u16.to_be_bytes()); // to us
    header.extend(1u16.to_be_bytes()); // ARPHRD_ETHER
    header.extend(6u16.to_be_bytes());
    header.extend([0x02, 0, 0, 0, 0, 0x01, 0, 0]);
    header.extend(ethertype.to_be_bytes());
    header
}

/// A Linux cooked v2 (SLL2) header for a packet of `ethertype` on interface 2.
pub fn sll2_header(ethertype: u16) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend(ethertype.to_be_bytes());
    header.extend([0, 0]);
    header.extend(2u32.to_be_bytes());
    header.extend(1u16.to_be_bytes()); // ARPHRD_ETHER
    header.extend([0, 6]); // to us, 6-byte address
    header.extend([0x02, 0, 0, 0, 0, 0x01, 0, 0]);
    header
}
