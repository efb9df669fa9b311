//! Where a browser request comes from. A request whose `Origin` (or `Sec-Fetch-Site`) names
//! another site may not open a WebSocket or change anything: cookies ride along with
//! cross-site requests, so without this check any page could act as its visitor.
//!
//! Origins are compared as origins (scheme, host and port), never as strings with a prefix:
//! `https://host` is not `http://host`, `http://host.evil.example` is not `http://host`.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::{HeaderMap, header};

/// An origin: scheme, lower-case host and port (the scheme's default when absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    host: Host,
    port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn parse(text: &str) -> Option<Scheme> {
        if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// A DNS name, lower-cased; a trailing dot is kept (browsers treat `host.` as another
    /// origin than `host`, and so do we).
    Name(String),
    Ip(IpAddr),
}

impl Origin {
    /// Parses an `Origin` header value (`scheme://host[:port]`, nothing else). `null`, other
    /// schemes, user info, paths and malformed hosts or ports give `None`.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        Origin::of_host(Scheme::parse(scheme)?, authority)
    }

    /// The origin a browser shows for a page served by this request's `Host`, reached with
    /// `scheme`; `None` without a valid `Host`.
    pub fn of_host(scheme: Scheme, host: &str) -> Option<Origin> {
        let (host, port) = parse_authority(host)?;
        Some(Origin {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
        })
    }
}

/// `host[:port]` with a bracketed IPv6 literal; no user info, path, query or fragment.
fn parse_authority(text: &str) -> Option<(Host, Option<u16>)> {
    if text.is_empty() || text.contains(['@', '/', '?', '#', '\\', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, rest) = rest.split_once(']')?;
        let ip: Ipv6Addr = literal.parse().ok()?;
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':')?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return None;
        }
        let host = match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => Host::Name(host.to_ascii_lowercase()),
        };
        (host, port)
    };
    let port = match port {
        None => None,
        // A port is 1 to 5 digits; `:` with nothing after it is refused like junk.
        Some(digits) if !digits.is_empty() && digits.len() <= 5 => {
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// How this server is reached, as the deployment sees it, and which other origins may use it.
pub struct OriginPolicy<'a> {
    /// The scheme clients use: `https` behind TLS (`--cookie-secure`, or a trusted balancer's
    /// `X-Forwarded-Proto`), else `http`.
    pub scheme: Scheme,
    /// Origins configured as allowed besides the server's own, already parsed.
    pub allowed: &'a [Origin],
}

impl OriginPolicy<'_> {
    /// Whether the `Origin` header value is this server's own origin or an allowed one.
    pub fn allows(&self, origin: &str, headers: &HeaderMap) -> bool {
        let Some(origin) = Origin::parse(origin) else {
            return false;
        };
        let own = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| Origin::of_host(self.scheme, host));
        own.as_ref() == Some(&origin) || self.allowed.contains(&origin)
    }

    /// Whether a browser says this request comes from another site: a foreign or opaque
    /// `Origin`, or without one a `Sec-Fetch-Site` other than `same-origin` or `none`. A
    /// request with neither (not a browser, or an old one on a same-origin GET) passes.
    pub fn is_cross_site(&self, headers: &HeaderMap) -> bool {
        if let Some(origin) = headers.get(header::ORIGIN) {
            return !origin
                .to_str()
                .is_ok_and(|origin| self.allows(origin, headers));
        }
        match headers.get("sec-fetch-site").map(|site| site.to_str()) {
            None => false,
            Some(Ok(site)) => !(site.eq_ignore_ascii_case("same-origin") || site == "none"),
            Some(Err(_)) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn policy(scheme: Scheme, allowed: &[Origin]) -> OriginPolicy<'_> {
        OriginPolicy { scheme, allowed }
    }

    #[test]
    fn an_origin_is_its_scheme_host_and_port() {
        let plain = policy(Scheme::Http, &[]);
        let host = headers(&[("host", "chat.example:8080")]);
        assert!(plain.allows("http://chat.example:8080", &host));
        assert!(plain.allows("HTTP://Chat.Example:8080", &host), "case");
        for foreign in [
            "https://chat.example:8080",
            "http://chat.example",
            "http://chat.example:8081",
            "http://chat.example:08080x",
            "http://chat.example.:8080",
            "http://evil.chat.example:8080",
            "http://chat.example.evil:8080",
            "http://chat.example:8080.evil",
            "http://chat.example:8080@evil.example",
            "http://user@chat.example:8080",
            "http://chat.example:8080/",
            "http://chat.example:",
            "http://chat.example:99999",
            "ws://chat.example:8080",
            "null",
            "",
            "chat.example:8080",
            "http://",
        ] {
            assert!(!plain.allows(foreign, &host), "{foreign:?} must be refused");
        }
    }

    #[test]
    fn default_ports_and_the_deployments_scheme_count() {
        let tls = policy(Scheme::Https, &[]);
        let host = headers(&[("host", "chat.example")]);
        assert!(tls.allows("https://chat.example", &host));
        assert!(tls.allows("https://chat.example:443", &host));
        assert!(!tls.allows("http://chat.example", &host));
        let plain = policy(Scheme::Http, &[]);
        assert!(plain.allows("http://chat.example:80", &host));
        assert!(!plain.allows("https://chat.example", &host));
    }

    #[test]
    fn ip_literals_compare_as_addresses() {
        let plain = policy(Scheme::Http, &[]);
        let v6 = headers(&[("host", "[::1]:8080")]);
        assert!(plain.allows("http://[::1]:8080", &v6));
        assert!(plain.allows("http://[0:0::1]:8080", &v6));
        assert!(!plain.allows("http://[::2]:8080", &v6));
        assert!(!plain.allows("http://[::1]", &v6));
        assert!(!plain.allows("http://::1:8080", &v6));
        let v4 = headers(&[("host", "127.0.0.1:8080")]);
        assert!(plain.allows("http://127.0.0.1:8080", &v4));
        assert!(!plain.allows("http://127.0.0.2:8080", &v4));
        assert!(!plain.allows("http://localhost:8080", &v4));
    }

    #[test]
    fn configured_origins_are_exact_origins() {
        let allowed = [Origin::parse("https://app.example").unwrap()];
        let plain = policy(Scheme::Http, &allowed);
        let host = headers(&[("host", "api.example:8080")]);
        assert!(plain.allows("https://app.example", &host));
        assert!(plain.allows("https://app.example:443", &host));
        assert!(!plain.allows("http://app.example", &host));
        assert!(!plain.allows("https://app.example.evil", &host));
        assert!(!plain.allows("https://evil.app.example", &host));
        assert!(!plain.allows("https://app.example:444", &host));
    }

    #[test]
    fn without_a_host_only_configured_origins_pass() {
        let plain = policy(Scheme::Http, &[]);
        assert!(!plain.allows("http://chat.example", &HeaderMap::new()));
    }

    #[test]
    fn cross_site_requests_are_told_by_origin_or_fetch_metadata() {
        let plain = policy(Scheme::Http, &[]);
        let own = [("host", "chat.example:8080")];
        let with = |extra: &[(&'static str, &str)]| {
            let mut all = own.to_vec();
            all.extend_from_slice(extra);
            plain.is_cross_site(&headers(&all))
        };
        assert!(!with(&[]), "no browser metadata: not a browser");
        assert!(!with(&[("origin", "http://chat.example:8080")]));
        assert!(with(&[("origin", "http://evil.example")]));
        assert!(with(&[("origin", "null")]));
        assert!(with(&[("origin", "http://chat.example:8081")]));
        assert!(!with(&[("sec-fetch-site", "same-origin")]));
        assert!(!with(&[("sec-fetch-site", "none")]));
        assert!(with(&[("sec-fetch-site", "cross-site")]));
        assert!(with(&[("sec-fetch-site", "same-site")]));
        // A same-origin `Origin` wins over nothing; a foreign one is never excused.
        assert!(with(&[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "same-origin")
        ]));
    }
}
