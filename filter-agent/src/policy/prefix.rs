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

impl PrefixError {
    /// What is wrong with `text`, worded to follow what the text is (`prefix`, `relay`).
    pub fn problem(&self, text: &str) -> String {
        match self {
            PrefixError::NotAddress => format!("\"{text}\" is not an IP address or prefix"),
            PrefixError::Length { .. } => format!("\"{text}\" has an invalid length"),
            PrefixError::HostBits(_) => format!("{text} has host bits set"),
        }
    }

    /// What to write instead, where the error tells.
    pub fn hint(&self) -> Option<String> {
        match self {
            PrefixError::NotAddress => None,
            PrefixError::Length { max } => Some(format!(
                "an IPv{} prefix length is 0 to {max}",
                if *max == 32 { 4 } else { 6 }
            )),
            PrefixError::HostBits(network) => Some(format!("did you mean {network}?")),
        }
    }

    /// Problem and hint in one line, as the CLI's refusals say it.
    pub fn sentence(&self, text: &str) -> String {
        let hint = self
            .hint()
            .unwrap_or_else(|| "expected ADDRESS/LENGTH, e.g. 100.64.0.10/32".into());
        format!("{} ({hint})", self.problem(text))
    }
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
