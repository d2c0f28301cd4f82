//! Reading prefixes strictly: `ipnet` would silently accept `10.0.0.1/8` as a network.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, PartialEq)]
pub enum PrefixError {
    NotAddress,
    /// The length is not a number in 0..=max.
    Length {
        max: u8,
    },
    /// The network the operator most likely meant.
    HostBits(IpNet),
}

/// `ADDRESS/LENGTH` with the host bits clear, or a bare address as a /32 or /128.
pub fn parse_prefix(text: &str) -> Result<IpNet, PrefixError> {
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| PrefixError::NotAddress)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let length = match length {
        None => max,
        Some(length) => length.parse().map_err(|_| PrefixError::Length { max })?,
    };
    let net = IpNet::new(address, length).map_err(|_| PrefixError::Length { max })?;
    if net.addr() == net.network() {
        Ok(net)
    } else {
        Err(PrefixError::HostBits(net.trunc()))
    }
}
