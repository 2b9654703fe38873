//! Who the client is: the TCP peer, or — when the peer is a trusted proxy — the right-most
//! `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left are whatever
//! the client chose to send, so they are never believed).

use sluice_shared::settings::SettingsError;
use std::net::IpAddr;

/// `http.trusted_proxies`, parsed once at start: addresses and CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

const SETTING: &str = "SLUICE__HTTP__TRUSTED_PROXIES";

fn invalid(reason: String) -> SettingsError {
    SettingsError::Invalid {
        name: SETTING,
        reason,
    }
}

impl TrustedProxies {
    /// Parses `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`; anything else names the setting.
    pub fn parse(entries: &[String]) -> Result<Self, SettingsError> {
        let mut blocks = Vec::with_capacity(entries.len());
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (addr, bits) = match entry.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (entry, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| invalid(format!("{entry:?} is not an IP address or CIDR block")))?;
            let addr = addr.to_canonical();
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| invalid(format!("{entry:?}: prefix length 0..={max}")))?,
            };
            blocks.push((addr, bits));
        }
        Ok(Self(blocks))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0
            .iter()
            .any(|(block, bits)| same_prefix(*block, addr, *bits))
    }

    /// The client behind `peer`, given the `X-Forwarded-For` header values in order.
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
        let mut nearest = peer;
        for entry in entries.iter().rev() {
            // An entry we cannot read ends the trail; the last proxy we trust is the best guess.
            let Ok(addr) = entry.trim().parse::<IpAddr>() else {
                return nearest;
            };
            let addr = addr.to_canonical();
            if !self.contains(addr) {
                return addr;
            }
            nearest = addr;
        }
        nearest
    }
}

fn same_prefix(block: IpAddr, addr: IpAddr, bits: u8) -> bool {
    match (block, addr) {
        (IpAddr::V4(b), IpAddr::V4(a)) => masked(
            u128::from(b.to_bits()) << 96,
            u128::from(a.to_bits()) << 96,
            bits,
        ),
        (IpAddr::V6(b), IpAddr::V6(a)) => masked(b.to_bits(), a.to_bits(), bits),
        _ => false,
    }
}

fn masked(block: u128, addr: u128, bits: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    block & mask == addr & mask
}

/// The key a client address is counted under: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so counting single IPv6 addresses would count nothing).
pub fn bucket(addr: IpAddr) -> String {
    match addr.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from_bits(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap_or_default()
    }

    #[test]
    fn parses_addresses_and_blocks_and_names_the_setting_when_wrong() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8", "0.0.0.0/0"]);
        assert_eq!(trusted.0.len(), 4);
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.1/x", "::/129"] {
            let error = TrustedProxies::parse(&[bad.to_owned()]);
            assert!(
                matches!(&error, Err(SettingsError::Invalid { name, .. }) if *name == SETTING),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn cidr_matching() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(trusted.contains(ip("10.200.3.4")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("192.168.1.7")));
        assert!(!trusted.contains(ip("192.168.1.8")));
        assert!(trusted.contains(ip("fd12::1")));
        assert!(!trusted.contains(ip("fe80::1")));
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address.
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
        assert!(proxies(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        assert!(!proxies(&[]).contains(ip("127.0.0.1")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let xff = |v: &'static str| std::iter::once(v);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            trusted.client(ip("203.0.113.9"), xff("1.2.3.4")),
            ip("203.0.113.9")
        );
        // The right-most untrusted entry wins; what the client prepended is ignored.
        assert_eq!(
            trusted.client(ip("10.0.0.1"), xff("6.6.6.6, 1.2.3.4")),
            ip("1.2.3.4")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.1"), ["6.6.6.6", "1.2.3.4, 10.0.0.2"].into_iter()),
            ip("1.2.3.4")
        );
        // Nothing usable: the nearest trusted hop.
        assert_eq!(
            trusted.client(ip("10.0.0.1"), std::iter::empty()),
            ip("10.0.0.1")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.1"), xff("garbage, 10.0.0.3")),
            ip("10.0.0.3")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.1"), xff("1.2.3.4, garbage")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        assert_eq!(bucket(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(bucket(ip("2001:db8:1:2:bbbb::9")), "2001:db8:1:2::/64");
        assert_eq!(bucket(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(bucket(ip("192.0.2.1")), "192.0.2.1");
    }
}
