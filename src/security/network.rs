//! Client addresses and IP blocks. `X-Forwarded-For` is believed only from `trusted_proxies`;
//! blocks are CIDRs (a single address is a /32 or /128) with an optional expiry, loaded from the
//! database and checked on every request of every port.

use std::net::IpAddr;
use std::sync::RwLock;

use ipnet::IpNet;

use crate::storage::security::IpBlockRecord;

/// "10.0.0.0/8, 192.168.1.5" → networks; a bare address is a host network.
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_cidr)
        .collect()
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// The address a request came from: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read right to left, as each proxy appends).
pub fn client_ip(peer: Option<IpAddr>, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[derive(Debug, Clone)]
struct Block {
    net: IpNet,
    expires_at: Option<i64>,
}

#[derive(Default)]
pub struct Blocklist {
    blocks: RwLock<Vec<Block>>,
}

impl Blocklist {
    pub fn load(&self, records: &[IpBlockRecord]) {
        let blocks = records
            .iter()
            .filter_map(|r| {
                Some(Block {
                    net: parse_cidr(&r.cidr).ok()?,
                    expires_at: r.expires_at,
                })
            })
            .collect();
        if let Ok(mut b) = self.blocks.write() {
            *b = blocks;
        }
    }

    pub fn contains(&self, ip: IpAddr, now_ms: i64) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.blocks.read().is_ok_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.net.contains(&ip) && b.expires_at.is_none_or(|t| t > now_ms))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, expires_at: Option<i64>) -> IpBlockRecord {
        IpBlockRecord {
            id: "b".into(),
            cidr: cidr.into(),
            reason: "test".into(),
            expires_at,
            created_by: None,
            created_at: 0,
        }
    }

    #[test]
    fn single_addresses_cidrs_and_expiry() {
        let list = Blocklist::default();
        list.load(&[
            block("203.0.113.7", None),
            block("198.51.100.0/24", Some(1000)),
            block("2001:db8::/32", None),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(list.contains(ip("203.0.113.7"), 0));
        assert!(!list.contains(ip("203.0.113.8"), 0));
        assert!(list.contains(ip("198.51.100.200"), 999));
        assert!(!list.contains(ip("198.51.100.200"), 1000), "expired");
        assert!(list.contains(ip("2001:db8::1"), 0));
        assert!(
            list.contains(ip("::ffff:203.0.113.7"), 0),
            "IPv4-mapped IPv6"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = parse_networks("10.0.0.0/8, 127.0.0.1").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // From an untrusted peer, the header is ignored (spoofing).
        assert_eq!(
            client_ip(Some(ip("198.51.100.9")), Some("1.2.3.4"), &trusted),
            ip("198.51.100.9")
        );
        // From a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            client_ip(
                Some(ip("127.0.0.1")),
                Some("1.2.3.4, 203.0.113.5, 10.0.0.2"),
                &trusted
            ),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), None, &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), Some("garbage"), &trusted),
            ip("127.0.0.1")
        );
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("").unwrap().is_empty());
    }
}
