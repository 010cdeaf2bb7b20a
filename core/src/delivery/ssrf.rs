//! Which callback URLs and addresses a delivery may reach: the credential's host allow-list, the
//! scheme, and the resolved address (pure: no sockets here).
//!
//! A URL is checked when the caller sends it (a refusal is a 400 before anything reaches the bot)
//! and again at every delivery attempt; the address is checked after resolution, every time, and
//! the delivery connects to exactly the address that passed (see `send`), so a name that resolves
//! somewhere else later (DNS rebinding) is refused at that attempt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a callback URL or address was refused: the bounded label set of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an absolute `http(s)://host/…` URL, or it carries credentials.
    BadUrl,
    /// `http://` for a credential that allows only https.
    Scheme,
    /// The host is not on the credential's `callback_hosts`.
    HostNotAllowed,
    /// The credential has no callback allow-list at all.
    NotEnabled,
    /// The name resolves to a loopback, private, link-local, multicast or metadata address.
    ForbiddenAddress,
    /// The name does not resolve.
    Unresolvable,
}

impl Refusal {
    /// Every refusal, for pre-registering metric series.
    pub const ALL: [Refusal; 6] = [
        Refusal::BadUrl,
        Refusal::Scheme,
        Refusal::HostNotAllowed,
        Refusal::NotEnabled,
        Refusal::ForbiddenAddress,
        Refusal::Unresolvable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadUrl => "bad_url",
            Refusal::Scheme => "scheme",
            Refusal::HostNotAllowed => "host_not_allowed",
            Refusal::NotEnabled => "not_enabled",
            Refusal::ForbiddenAddress => "forbidden_address",
            Refusal::Unresolvable => "unresolvable",
        }
    }

    /// What the caller is told (fixed words: the URL itself is never repeated).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadUrl => "invalid field `callback_url`: not an absolute http(s) URL",
            Refusal::Scheme => "invalid field `callback_url`: must be an https URL",
            Refusal::HostNotAllowed => {
                "invalid field `callback_url`: this host is not allowed for this credential"
            }
            Refusal::NotEnabled => "invalid field `callback_url`: this credential may not use callbacks",
            Refusal::ForbiddenAddress => {
                "invalid field `callback_url`: the host resolves to an address callbacks may not reach"
            }
            Refusal::Unresolvable => "invalid field `callback_url`: the host does not resolve",
        }
    }
}

/// One `callback_hosts` entry: an exact host name or IP, or `*.suffix` (any name below the suffix,
/// not the suffix itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    AnyBelow(String),
}

impl HostPattern {
    /// Reads one entry; `None` when it is empty or has a `*` anywhere but a leading `*.`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        match s.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                Some(HostPattern::AnyBelow(format!(".{rest}")))
            }
            None if !s.is_empty() && !s.contains('*') => Some(HostPattern::Exact(s)),
            _ => None,
        }
    }

    /// Whether `host` (lowercase, no trailing dot) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::AnyBelow(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// Where a callback goes: a URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl {
    pub tls: bool,
    /// Lowercase, without brackets for IPv6 and without a trailing dot.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl CallbackUrl {
    /// Parses an absolute `http(s)://` URL without credentials.
    pub fn parse(url: &str) -> Result<Self, Refusal> {
        let uri: http::Uri = url.parse().map_err(|_| Refusal::BadUrl)?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Refusal::BadUrl),
        };
        let authority = uri.authority().ok_or(Refusal::BadUrl)?.as_str();
        if authority.contains('@') || !authority.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refusal::BadUrl);
        }
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(Refusal::BadUrl);
        }
        Ok(CallbackUrl {
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            authority: authority.to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }

    /// The URL again, as text.
    pub fn to_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path)
    }

    /// The URL without its query (which may carry a receiver's token), for logs.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let path = self.path.split('?').next().unwrap_or("/");
        format!("{scheme}://{}{path}", self.authority)
    }
}

/// What one credential's callbacks may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// `callback_hosts`; empty means no caller-chosen URL is accepted.
    pub hosts: Vec<HostPattern>,
    /// `allow_http_callbacks`
    pub allow_http: bool,
    /// `allow_private_callbacks`: loopback, private and link-local addresses too.
    pub allow_private: bool,
}

impl Reach {
    /// Checks a caller's URL against the scheme rule and the allow-list.
    pub fn check_url(&self, url: &str) -> Result<CallbackUrl, Refusal> {
        if self.hosts.is_empty() {
            return Err(Refusal::NotEnabled);
        }
        let u = CallbackUrl::parse(url)?;
        self.check_parsed(&u)?;
        Ok(u)
    }

    /// The scheme rule and the allow-list for a parsed URL.
    pub fn check_parsed(&self, u: &CallbackUrl) -> Result<(), Refusal> {
        if !u.tls && !self.allow_http {
            return Err(Refusal::Scheme);
        }
        if !self.hosts.iter().any(|p| p.matches(&u.host)) {
            return Err(Refusal::HostNotAllowed);
        }
        Ok(())
    }

    /// Checks every address a name resolved to: one forbidden address refuses them all (a name
    /// that mixes public and private answers is not one to trust).
    pub fn check_addrs(&self, addrs: &[IpAddr]) -> Result<(), Refusal> {
        if addrs.is_empty() {
            return Err(Refusal::Unresolvable);
        }
        match addrs.iter().all(|a| self.address_allowed(*a)) {
            true => Ok(()),
            false => Err(Refusal::ForbiddenAddress),
        }
    }

    /// Whether a delivery may connect to `ip`. Multicast, unspecified, broadcast and cloud metadata
    /// addresses are never allowed (no callback receiver lives there); loopback, private,
    /// shared (CGNAT) and link-local ones only with `allow_private_callbacks`. An IPv6 address that
    /// carries an IPv4 address (see [`embedded_v4`]) is refused when that IPv4 address would be.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        let allowed =
            |ip: IpAddr| !is_never_allowed(ip) && (self.allow_private || !is_internal(ip));
        match ip {
            IpAddr::V4(_) => allowed(ip),
            IpAddr::V6(v6) => {
                allowed(ip)
                    && embedded_v4(v6)
                        .into_iter()
                        .all(|v4| allowed(IpAddr::V4(v4)))
            }
        }
    }
}

/// Every IPv4 address an IPv6 address may reach through, by the standard ways of writing one
/// inside the other: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated, RFC
/// 4291), IPv4-translated `::ffff:0:a.b.c.d` (RFC 2765), NAT64's well-known prefix `64:ff9b::/96`
/// (RFC 6052) and its local-use `64:ff9b:1::/48` (RFC 8215), 6to4 `2002::/16` (bits 16..48) and
/// Teredo `2001::/32` (the server in bits 32..64, the client in the last 32 bits, inverted).
///
/// Inside the local-use prefix the site picks the prefix length, so the IPv4 address is read at
/// every RFC 6052 position (/48, /56, /64, /96); the unused positions are zero padding, so a
/// reading of `0.0.0.0` there is skipped (the prefix is internal anyway, see [`is_internal`]).
fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let v4 = |x: u128| Ipv4Addr::from((x & 0xffff_ffff) as u32);
    match v6.segments() {
        [0, 0, 0, 0, 0, 0 | 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => vec![v4(bits)],
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => vec![v4(bits)],
        [0x64, 0xff9b, 1, ..] => [
            v4((bits >> 64 & 0xffff) << 16 | bits >> 40 & 0xffff),
            v4((bits >> 64 & 0xff) << 24 | bits >> 32 & 0xff_ffff),
            v4(bits >> 24),
            v4(bits),
        ]
        .into_iter()
        .filter(|a| !a.is_unspecified())
        .collect(),
        [0x2002, ..] => vec![v4(bits >> 80)],
        [0x2001, 0, ..] => vec![v4(bits >> 64), v4(!bits)],
        _ => Vec::new(),
    }
}

/// Cloud metadata services: AWS, GCP, Azure, OpenStack (169.254.169.254), Alibaba
/// (100.100.100.200), AWS over IPv6 (fd00:ec2::254).
const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn is_never_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || METADATA_V4.contains(&v4)
        }
        IpAddr::V6(v6) => v6.is_multicast() || v6.is_unspecified() || v6 == METADATA_V6,
    }
}

/// Loopback, private (RFC 1918, IPv6 unique local), shared address space (RFC 6598), link-local,
/// `0.0.0.0/8` ("this network"), and the local-use NAT64 prefix (RFC 8215: it reaches whatever the
/// site's translator reaches).
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || (first & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || v6.segments()[..3] == [0x64, 0xff9b, 1] // 64:ff9b:1::/48 local-use NAT64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(hosts: &[&str]) -> Reach {
        Reach {
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            allow_http: false,
            allow_private: false,
        }
    }

    #[test]
    fn allow_list_matches_exact_names_and_subdomains_only() {
        let r = reach(&["hooks.example.com", "*.example.org"]);
        assert!(r.check_url("https://hooks.example.com/cb").is_ok());
        assert!(r.check_url("https://HOOKS.example.com./cb?x=1").is_ok());
        assert!(r.check_url("https://a.b.example.org/").is_ok());
        assert_eq!(
            r.check_url("https://example.org/"),
            Err(Refusal::HostNotAllowed)
        );
        assert_eq!(
            r.check_url("https://evilexample.org/"),
            Err(Refusal::HostNotAllowed)
        );
        assert_eq!(
            r.check_url("https://hooks.example.com.evil.test/"),
            Err(Refusal::HostNotAllowed)
        );
        assert_eq!(
            r.check_url("http://hooks.example.com/"),
            Err(Refusal::Scheme)
        );
        assert_eq!(
            r.check_url("https://user:pw@hooks.example.com/"),
            Err(Refusal::BadUrl)
        );
        assert_eq!(
            r.check_url("ftp://hooks.example.com/"),
            Err(Refusal::BadUrl)
        );
        assert_eq!(r.check_url("/relative"), Err(Refusal::BadUrl));
        assert_eq!(
            Reach::default().check_url("https://hooks.example.com/"),
            Err(Refusal::NotEnabled)
        );
        assert_eq!(HostPattern::parse("a.*.com"), None);
        assert_eq!(HostPattern::parse("*."), None);
    }

    #[test]
    fn internal_and_metadata_addresses_are_refused() {
        let r = reach(&["x"]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!r.address_allowed(ip), "{ip}");
            assert_eq!(r.check_addrs(&[ip]), Err(Refusal::ForbiddenAddress));
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "100.128.0.1"] {
            assert!(r.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        let mixed = [
            "93.184.216.34".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        assert_eq!(r.check_addrs(&mixed), Err(Refusal::ForbiddenAddress));
        assert_eq!(r.check_addrs(&[]), Err(Refusal::Unresolvable));
    }

    #[test]
    fn an_ipv6_address_carrying_a_refused_ipv4_address_is_refused() {
        let r = reach(&["x"]);
        for ip in [
            "::127.0.0.1",                 // IPv4-compatible
            "::10.0.0.1",                  // IPv4-compatible
            "::ffff:0:127.0.0.1",          // IPv4-translated
            "::ffff:0:a9fe:a9fe",          // IPv4-translated metadata
            "64:ff9b::7f00:1",             // NAT64 well-known prefix
            "64:ff9b::a9fe:a9fe",          // NAT64 metadata
            "64:ff9b:1::7f00:1",           // local-use NAT64, a /96 prefix
            "64:ff9b:1:5db8:d8:2200::",    // local-use NAT64 is internal however it reads
            "2002:7f00:1::1",              // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::1",           // 6to4 of the metadata address
            "2002:c0a8:101::",             // 6to4 of 192.168.1.1
            "2001:0:5db8:d822::80ff:fffe", // Teredo, client 127.0.0.1
            "2001:0:7f00:1::a247:27dd",    // Teredo, server 127.0.0.1
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!r.address_allowed(ip), "{ip}");
        }
        for ip in [
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:0:5db8:d822::a247:27dd",
        ] {
            assert!(r.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        // With private addresses allowed, what is never allowed stays refused in every form.
        let private = Reach {
            allow_private: true,
            ..r
        };
        for ip in ["::ffff:0:127.0.0.1", "2002:7f00:1::1", "64:ff9b:1::7f00:1"] {
            assert!(private.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "64:ff9b::a9fe:a9fe",
            "::169.254.169.254",
            "2002:a9fe:a9fe::",
            "2001:0:5db8:d822::5601:5601", // Teredo, client 169.254.169.254
            "64:ff9b:1::a9fe:a9fe",        // local-use NAT64, a /96 prefix
            "64:ff9b:1:a9fe:a9:fe00::",    // local-use NAT64, a /48 prefix
            "2002:e000:1::",               // 6to4 of multicast 224.0.0.1
        ] {
            assert!(!private.address_allowed(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_private_opens_internal_but_never_metadata_or_multicast() {
        let r = Reach {
            allow_private: true,
            ..reach(&["x"])
        };
        assert!(r.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(r.address_allowed("10.0.0.1".parse().unwrap()));
        assert!(!r.address_allowed("169.254.169.254".parse().unwrap()));
        assert!(!r.address_allowed("224.0.0.1".parse().unwrap()));
    }

    #[test]
    fn redacted_urls_drop_the_query() {
        let u = CallbackUrl::parse("https://h.test:8443/cb?token=s3cret").unwrap();
        assert_eq!(u.redacted(), "https://h.test:8443/cb");
        assert_eq!(u.port, 8443);
        assert_eq!(u.path, "/cb?token=s3cret");
        let u = CallbackUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!(u.host, "::1");
    }
}
