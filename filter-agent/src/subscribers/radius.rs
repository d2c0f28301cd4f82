//! RADIUS accounting (RFC 2866) as the agent receives it: the packet format (RFC 2865
//! section 3), the Request Authenticator, the attributes that say who holds which address,
//! and the Accounting-Response. Everything a datagram says is checked before anything of
//! it is believed; a request that fails a check is an error, never a partial result.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use md5::{Digest, Md5};

pub const ACCOUNTING_REQUEST: u8 = 4;
pub const ACCOUNTING_RESPONSE: u8 = 5;
const HEADER: usize = 20;
/// RFC 2865: 4096 octets at most.
pub const MAX_PACKET: usize = 4096;

mod attr {
    pub const USER_NAME: u8 = 1;
    pub const NAS_IP_ADDRESS: u8 = 4;
    pub const FRAMED_IP_ADDRESS: u8 = 8;
    pub const NAS_IDENTIFIER: u8 = 32;
    pub const ACCT_STATUS_TYPE: u8 = 40;
    pub const ACCT_SESSION_ID: u8 = 44;
    pub const NAS_IPV6_ADDRESS: u8 = 95;
    pub const FRAMED_IPV6_PREFIX: u8 = 97;
    pub const DELEGATED_IPV6_PREFIX: u8 = 123;
    pub const FRAMED_IPV6_ADDRESS: u8 = 168;
}

/// Why a datagram is not a RADIUS packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header or than its Length field says.
    Truncated,
    /// A Length field out of range, or attributes that do not fill the packet exactly.
    Malformed(String),
}

/// One packet, borrowed from the datagram (octets past its Length are padding, ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub code: u8,
    pub identifier: u8,
    pub authenticator: [u8; 16],
    /// In packet order: (type, value).
    pub attributes: Vec<(u8, &'a [u8])>,
    /// The packet's octets, up to its Length.
    pub bytes: &'a [u8],
}

pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, DecodeError> {
    if datagram.len() < HEADER {
        return Err(DecodeError::Truncated);
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if !(HEADER..=MAX_PACKET).contains(&length) {
        return Err(DecodeError::Malformed(format!(
            "length {length} is outside {HEADER}..={MAX_PACKET}"
        )));
    }
    if datagram.len() < length {
        return Err(DecodeError::Truncated);
    }
    let bytes = &datagram[..length];
    let mut attributes = Vec::new();
    let mut rest = &bytes[HEADER..];
    while !rest.is_empty() {
        let [kind, len, ..] = *rest else {
            return Err(DecodeError::Malformed("an attribute is cut short".into()));
        };
        let len = usize::from(len);
        if len < 2 || len > rest.len() {
            return Err(DecodeError::Malformed(format!(
                "attribute {kind} has length {len} with {} octets left",
                rest.len()
            )));
        }
        attributes.push((kind, &rest[2..len]));
        rest = &rest[len..];
    }
    Ok(Packet {
        code: bytes[0],
        identifier: bytes[1],
        authenticator: bytes[4..HEADER].try_into().expect("16 octets"),
        attributes,
        bytes,
    })
}

/// RFC 2866 section 3: MD5(Code + Identifier + Length + 16 zero octets + Attributes +
/// Secret) must equal the Request Authenticator.
pub fn request_is_authentic(packet: &Packet<'_>, secret: &[u8]) -> bool {
    let mut md5 = Md5::new();
    md5.update(&packet.bytes[..4]);
    md5.update([0u8; 16]);
    md5.update(&packet.bytes[HEADER..]);
    md5.update(secret);
    let expected: [u8; 16] = md5.finalize().into();
    // Not secret-dependent timing that matters here: the digest is of the whole packet.
    expected == packet.authenticator
}

/// The Request Authenticator for a request whose authenticator octets are still zero;
/// what a BNG computes (the tests sign their requests with it).
pub fn sign_request(packet: &mut [u8], secret: &[u8]) {
    let mut md5 = Md5::new();
    md5.update(&packet[..4]);
    md5.update([0u8; 16]);
    md5.update(&packet[HEADER..]);
    md5.update(secret);
    let digest: [u8; 16] = md5.finalize().into();
    packet[4..HEADER].copy_from_slice(&digest);
}

/// An Accounting-Response without attributes: MD5(Code + Identifier + Length + Request
/// Authenticator + Secret) as its authenticator.
pub fn response(request: &Packet<'_>, secret: &[u8]) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[0] = ACCOUNTING_RESPONSE;
    out[1] = request.identifier;
    out[2..4].copy_from_slice(&(HEADER as u16).to_be_bytes());
    let mut md5 = Md5::new();
    md5.update(&out[..4]);
    md5.update(request.authenticator);
    md5.update(secret);
    let digest: [u8; 16] = md5.finalize().into();
    out[4..].copy_from_slice(&digest);
    out
}

/// Acct-Status-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Start,
    Stop,
    InterimUpdate,
    AccountingOn,
    AccountingOff,
}

impl Status {
    fn from_value(value: u32) -> Option<Status> {
        Some(match value {
            1 => Status::Start,
            2 => Status::Stop,
            3 => Status::InterimUpdate,
            7 => Status::AccountingOn,
            8 => Status::AccountingOff,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Start => "Start",
            Status::Stop => "Stop",
            Status::InterimUpdate => "Interim-Update",
            Status::AccountingOn => "Accounting-On",
            Status::AccountingOff => "Accounting-Off",
        }
    }
}

/// What one Accounting-Request says about a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accounting {
    pub status: Status,
    pub user_name: Option<String>,
    pub session_id: Option<String>,
    /// The BNG: NAS-IP-Address, NAS-IPv6-Address or NAS-Identifier, if sent.
    pub nas: Option<String>,
    /// Framed-IP-Address as a /32, Framed-IPv6-Address as a /128, Framed-IPv6-Prefix and
    /// Delegated-IPv6-Prefix.
    pub addresses: Vec<IpNet>,
}

/// Reads the accounting attributes of an authentic request; an attribute out of range
/// (a wrong length, an unknown status, a prefix longer than 128) is an error naming it.
pub fn accounting(packet: &Packet<'_>) -> Result<Accounting, String> {
    let mut status = None;
    let mut user_name = None;
    let mut session_id = None;
    let mut nas_ip = None;
    let mut nas_id = None;
    let mut addresses = Vec::new();
    for &(kind, value) in &packet.attributes {
        match kind {
            attr::ACCT_STATUS_TYPE => {
                once(status.is_some(), "Acct-Status-Type")?;
                let number = u32::from_be_bytes(fixed(value, "Acct-Status-Type")?);
                status = Some(
                    Status::from_value(number)
                        .ok_or_else(|| format!("Acct-Status-Type {number} is not handled"))?,
                );
            }
            attr::USER_NAME => {
                once(user_name.is_some(), "User-Name")?;
                user_name = Some(text(value, "User-Name")?);
            }
            attr::ACCT_SESSION_ID => {
                once(session_id.is_some(), "Acct-Session-Id")?;
                session_id = Some(text(value, "Acct-Session-Id")?);
            }
            attr::NAS_IP_ADDRESS => {
                once(nas_ip.is_some(), "NAS-IP-Address")?;
                nas_ip = Some(IpAddr::V4(Ipv4Addr::from(fixed::<4>(
                    value,
                    "NAS-IP-Address",
                )?)));
            }
            attr::NAS_IPV6_ADDRESS => {
                once(nas_ip.is_some(), "NAS-IPv6-Address")?;
                nas_ip = Some(IpAddr::V6(Ipv6Addr::from(fixed::<16>(
                    value,
                    "NAS-IPv6-Address",
                )?)));
            }
            attr::NAS_IDENTIFIER => {
                once(nas_id.is_some(), "NAS-Identifier")?;
                nas_id = Some(text(value, "NAS-Identifier")?);
            }
            attr::FRAMED_IP_ADDRESS => {
                let address = Ipv4Addr::from(fixed::<4>(value, "Framed-IP-Address")?);
                addresses.push(IpNet::from(IpAddr::V4(address)));
            }
            attr::FRAMED_IPV6_ADDRESS => {
                let address = Ipv6Addr::from(fixed::<16>(value, "Framed-IPv6-Address")?);
                addresses.push(IpNet::from(IpAddr::V6(address)));
            }
            attr::FRAMED_IPV6_PREFIX => addresses.push(prefix(value, "Framed-IPv6-Prefix")?),
            attr::DELEGATED_IPV6_PREFIX => addresses.push(prefix(value, "Delegated-IPv6-Prefix")?),
            _ => {}
        }
    }
    let status = status.ok_or("Acct-Status-Type is missing")?;
    Ok(Accounting {
        status,
        user_name,
        session_id,
        nas: nas_ip.map(|a| a.to_string()).or(nas_id),
        addresses,
    })
}

fn once(given: bool, name: &str) -> Result<(), String> {
    if given {
        return Err(format!("{name} is given twice"));
    }
    Ok(())
}

fn fixed<const N: usize>(value: &[u8], name: &str) -> Result<[u8; N], String> {
    value
        .try_into()
        .map_err(|_| format!("{name} has {} octets, not {N}", value.len()))
}

/// A text attribute: UTF-8 without control characters (it goes into logs and files).
fn text(value: &[u8], name: &str) -> Result<String, String> {
    let text = std::str::from_utf8(value).map_err(|_| format!("{name} is not UTF-8"))?;
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(format!("{name} is empty or holds control characters"));
    }
    Ok(text.to_string())
}

/// RFC 3162 / 4818: a reserved octet, the prefix length (0..=128), then as many octets of
/// the prefix as the length needs (at most 16). Bits past the length are cleared.
fn prefix(value: &[u8], name: &str) -> Result<IpNet, String> {
    let [_reserved, length, bits @ ..] = value else {
        return Err(format!(
            "{name} has {} octets, at least 2 needed",
            value.len()
        ));
    };
    if *length > 128 {
        return Err(format!("{name} has prefix length {length}, above 128"));
    }
    let needed = usize::from(*length).div_ceil(8);
    if bits.len() < needed || bits.len() > 16 {
        return Err(format!(
            "{name} /{length} comes with {} octets of prefix",
            bits.len()
        ));
    }
    let mut octets = [0u8; 16];
    octets[..bits.len()].copy_from_slice(bits);
    let net = Ipv6Net::new(Ipv6Addr::from(octets), *length).map_err(|e| format!("{name}: {e}"))?;
    Ok(IpNet::V6(net.trunc()))
}

/// Builds an Accounting-Request as a BNG would, for tests: attributes given as (type,
/// value), signed with `secret`.
pub fn build_request(identifier: u8, attributes: &[(u8, Vec<u8>)], secret: &[u8]) -> Vec<u8> {
    let mut packet = vec![ACCOUNTING_REQUEST, identifier, 0, 0];
    packet.extend([0u8; 16]);
    for (kind, value) in attributes {
        packet.push(*kind);
        packet.push(u8::try_from(value.len() + 2).expect("an attribute fits 255 octets"));
        packet.extend(value);
    }
    let length = u16::try_from(packet.len()).expect("a packet fits 4096 octets");
    packet[2..4].copy_from_slice(&length.to_be_bytes());
    sign_request(&mut packet, secret);
    packet
}

/// Attribute values as [`build_request`] takes them.
pub mod build {
    use super::attr;

    pub fn status(value: u32) -> (u8, Vec<u8>) {
        (attr::ACCT_STATUS_TYPE, value.to_be_bytes().to_vec())
    }
    pub fn user_name(name: &str) -> (u8, Vec<u8>) {
        (attr::USER_NAME, name.as_bytes().to_vec())
    }
    pub fn session_id(id: &str) -> (u8, Vec<u8>) {
        (attr::ACCT_SESSION_ID, id.as_bytes().to_vec())
    }
    pub fn nas_ip(a: std::net::Ipv4Addr) -> (u8, Vec<u8>) {
        (attr::NAS_IP_ADDRESS, a.octets().to_vec())
    }
    pub fn framed_ip(a: std::net::Ipv4Addr) -> (u8, Vec<u8>) {
        (attr::FRAMED_IP_ADDRESS, a.octets().to_vec())
    }
    /// Framed-IPv6-Prefix (97) or Delegated-IPv6-Prefix (123) with the octets the length
    /// needs.
    pub fn ipv6_prefix(kind: u8, net: ipnet::Ipv6Net) -> (u8, Vec<u8>) {
        let needed = usize::from(net.prefix_len()).div_ceil(8);
        let mut value = vec![0, net.prefix_len()];
        value.extend(&net.network().octets()[..needed]);
        (kind, value)
    }
    pub const FRAMED_IPV6_PREFIX: u8 = attr::FRAMED_IPV6_PREFIX;
    pub const DELEGATED_IPV6_PREFIX: u8 = attr::DELEGATED_IPV6_PREFIX;
}

#[cfg(test)]
mod tests {
    use super::{build::*, *};

    const SECRET: &[u8] = b"s3cret";

    fn start() -> Vec<u8> {
        build_request(
            7,
            &[
                status(1),
                user_name("alice"),
                session_id("0000001a"),
                nas_ip(Ipv4Addr::new(192, 0, 2, 1)),
                framed_ip(Ipv4Addr::new(100, 64, 0, 20)),
                ipv6_prefix(FRAMED_IPV6_PREFIX, "2001:db8:1000:20::/64".parse().unwrap()),
                ipv6_prefix(
                    DELEGATED_IPV6_PREFIX,
                    "2001:db8:1100:2000::/56".parse().unwrap(),
                ),
            ],
            SECRET,
        )
    }

    #[test]
    fn a_signed_start_decodes_and_is_authentic() {
        let bytes = start();
        let packet = decode(&bytes).unwrap();
        assert_eq!(packet.code, ACCOUNTING_REQUEST);
        assert_eq!(packet.identifier, 7);
        assert!(request_is_authentic(&packet, SECRET));
        assert!(!request_is_authentic(&packet, b"wrong"));
        let acct = accounting(&packet).unwrap();
        assert_eq!(acct.status, Status::Start);
        assert_eq!(acct.user_name.as_deref(), Some("alice"));
        assert_eq!(acct.session_id.as_deref(), Some("0000001a"));
        assert_eq!(acct.nas.as_deref(), Some("192.0.2.1"));
        let want: Vec<IpNet> = [
            "100.64.0.20/32",
            "2001:db8:1000:20::/64",
            "2001:db8:1100:2000::/56",
        ]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
        assert_eq!(acct.addresses, want);
        // Padding past the Length is not part of the packet.
        let mut padded = bytes.clone();
        padded.extend([0xff; 9]);
        assert_eq!(decode(&padded).unwrap().bytes, &bytes[..]);
    }

    #[test]
    fn the_response_authenticator_is_the_rfc_one() {
        let bytes = start();
        let packet = decode(&bytes).unwrap();
        let reply = response(&packet, SECRET);
        assert_eq!(&reply[..4], &[ACCOUNTING_RESPONSE, 7, 0, 20]);
        let mut md5 = Md5::new();
        md5.update([5, 7, 0, 20]);
        md5.update(packet.authenticator);
        md5.update(SECRET);
        assert_eq!(&reply[4..], &md5.finalize()[..]);
    }

    #[test]
    fn malformed_packets_and_attributes_are_named() {
        assert_eq!(decode(&[4, 1, 0]), Err(DecodeError::Truncated));
        let mut bytes = start();
        bytes[3] = bytes[3].wrapping_add(1);
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated));
        let mut bytes = start();
        bytes[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
        // An attribute whose length runs past the packet.
        let mut bytes = start();
        bytes[21] = 200;
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));

        let attrs = |extra: (u8, Vec<u8>)| {
            let bytes = build_request(1, &[status(1), extra], SECRET);
            accounting(&decode(&bytes).unwrap())
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(
            attrs((8, vec![1, 2, 3])),
            "Framed-IP-Address has 3 octets, not 4"
        );
        assert_eq!(
            attrs((97, vec![0, 129, 0])),
            "Framed-IPv6-Prefix has prefix length 129, above 128"
        );
        assert_eq!(
            attrs((97, vec![0, 64, 0x20, 0x01])),
            "Framed-IPv6-Prefix /64 comes with 2 octets of prefix"
        );
        assert_eq!(
            attrs((123, vec![0])),
            "Delegated-IPv6-Prefix has 1 octets, at least 2 needed"
        );
        assert_eq!(
            attrs((1, vec![b'a', 0, b'b'])),
            "User-Name is empty or holds control characters"
        );
        assert_eq!(attrs((1, vec![0xff, 0xfe])), "User-Name is not UTF-8");
        assert_eq!(attrs(status(1)), "Acct-Status-Type is given twice");
        let bytes = build_request(1, &[status(9)], SECRET);
        assert_eq!(
            accounting(&decode(&bytes).unwrap()).unwrap_err(),
            "Acct-Status-Type 9 is not handled"
        );
        let bytes = build_request(1, &[user_name("a")], SECRET);
        assert_eq!(
            accounting(&decode(&bytes).unwrap()).unwrap_err(),
            "Acct-Status-Type is missing"
        );
    }

    #[test]
    fn prefix_bits_past_the_length_are_cleared() {
        let bytes = build_request(
            1,
            &[
                status(1),
                (97, vec![0, 60, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0x1f]),
            ],
            SECRET,
        );
        let acct = accounting(&decode(&bytes).unwrap()).unwrap();
        assert_eq!(
            acct.addresses,
            ["2001:db8:0:10::/60".parse::<IpNet>().unwrap()]
        );
    }
}
