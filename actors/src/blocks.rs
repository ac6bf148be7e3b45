//! The IP/CIDR block list: parsing, matching, and the in-memory copy every
//! node checks before a validate.

use ringlimit_protocol::pipeline::IpBlock;
use std::net::IpAddr;
use std::sync::Arc;

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address as 128 bits (IPv4 mapped into the low 32 bits).
    net: u128,
    prefix: u8,
    v4: bool,
}

impl Cidr {
    /// `203.0.113.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128).
    /// Host bits must be zero (`10.0.0.1/8` is refused: it is ambiguous).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address or CIDR"))?;
        let (bits, v4, max) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), true, 32u8),
            IpAddr::V6(a) => (u128::from(a), false, 128u8),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max && !p.to_string().is_empty())
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let c = Cidr {
            net: bits,
            prefix,
            v4,
        };
        if bits & !c.mask() != 0 {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                Cidr {
                    net: bits & c.mask(),
                    ..c
                }
            ));
        }
        Ok(c)
    }

    fn mask(&self) -> u128 {
        let width = if self.v4 { 32 } else { 128 };
        if self.prefix == 0 {
            return 0;
        }
        let ones = (!0u128) << (width - u32::from(self.prefix));
        if self.v4 { ones & 0xffff_ffff } else { ones }
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, v4) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), true),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => (u128::from(u32::from(m)), true),
                None => (u128::from(a), false),
            },
        };
        v4 == self.v4 && bits & self.mask() == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v4 {
            write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(self.net as u32),
                self.prefix
            )
        } else {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.net), self.prefix)
        }
    }
}

/// The blocks in force on this node (replaced whole on every change).
#[derive(Debug, Default)]
pub struct BlockList {
    entries: parking_lot::RwLock<Arc<Vec<(Cidr, IpBlock)>>>,
}

impl BlockList {
    /// Replaces the list (entries whose CIDR does not parse are skipped with a log).
    pub fn set(&self, blocks: Vec<IpBlock>) {
        let v = blocks
            .into_iter()
            .filter_map(|b| match Cidr::parse(&b.cidr) {
                Ok(c) => Some((c, b)),
                Err(e) => {
                    tracing::warn!(block_id = %b.id, error = %e, "stored block ignored");
                    None
                }
            })
            .collect();
        *self.entries.write() = Arc::new(v);
    }

    /// The unexpired block that holds `ip`, if any.
    pub fn find(&self, ip: IpAddr, now_ms: u64) -> Option<IpBlock> {
        let entries = Arc::clone(&self.entries.read());
        entries
            .iter()
            .find(|(c, b)| b.expires_at_ms.is_none_or(|t| now_ms < t) && c.contains(ip))
            .map(|(_, b)| b.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }

    pub fn all(&self) -> Vec<IpBlock> {
        self.entries.read().iter().map(|(_, b)| b.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches_v4_and_v6() {
        let c = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(c.contains(ip("203.0.113.7")));
        assert!(c.contains(ip("::ffff:203.0.113.7")));
        assert!(!c.contains(ip("203.0.114.1")));
        assert!(!c.contains(ip("2001:db8::1")));
        assert_eq!(c.to_string(), "203.0.113.0/24");
        let one = Cidr::parse("198.51.100.7").unwrap();
        assert_eq!(one.to_string(), "198.51.100.7/32");
        assert!(one.contains(ip("198.51.100.7")) && !one.contains(ip("198.51.100.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::1")));
    }

    #[test]
    fn refuses_bad_cidrs() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/-1",
            "1.2.3.4/",
            "10.0.0.1/8",
            "::1/129",
            "x/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn expired_blocks_do_not_match() {
        let l = BlockList::default();
        l.set(vec![IpBlock {
            id: "b".into(),
            cidr: "10.0.0.0/8".into(),
            created_at_ms: 0,
            expires_at_ms: Some(1_000),
            reason: None,
            created_by: "admin".into(),
        }]);
        assert!(l.find(ip("10.1.2.3"), 999).is_some());
        assert!(l.find(ip("10.1.2.3"), 1_000).is_none());
    }
}
