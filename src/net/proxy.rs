//! Which outbound HTTP proxy, if any, upstream connections go through
//! (docs/architecture.md, "Outbound proxy"): `upstream.proxy`, else the proxy variables every
//! SDK and curl read (`https_proxy`, `http_proxy`, `all_proxy`, `no_proxy`, in either case).
//!
//! Decided once per process for the one upstream ([`ProxySetting::route`]); the connection
//! itself (a CONNECT tunnel) is `net::tunnel`. Proxy credentials live only in the
//! `Proxy-Authorization` value built here; everything that prints a proxy prints
//! [`ProxyServer`]'s redacted form.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;

/// An HTTP proxy: where it listens, and the Basic credentials from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyServer {
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// `Basic …` for `Proxy-Authorization`, when the URL has a user.
    authorization: Option<String>,
}

impl ProxyServer {
    /// Parses `http://[user[:password]@]host[:port][/]` (the scheme may be left out, as curl
    /// allows; the port defaults to 80, as the SDKs' HTTP clients do). The user and password
    /// are percent-decoded. Errors never repeat the credentials.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").unwrap_or(("http", text));
        let shown = redact(text);
        match scheme.to_ascii_lowercase().as_str() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "`{shown}`: a proxy reached over TLS (https://) is not supported; give \
                     its http:// address (the upstream's TLS still runs inside the tunnel)"
                ));
            }
            other => {
                return Err(format!(
                    "`{shown}`: `{other}://` proxies are not supported, only HTTP proxies \
                     (http://host:port, which must accept CONNECT)"
                ));
            }
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "`{shown}`: a proxy URL has no path, query or fragment"
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)
            .ok_or_else(|| format!("`{shown}` is not a proxy URL like http://host:port"))?;
        // A bare word ("off", "false", "direct") is a setting mistaken for a host: without a
        // scheme, a port is required (as in `proxy.corp:3128`).
        if !text.contains("://") && port.is_none() {
            return Err(format!(
                "`{shown}` is not a proxy URL like http://host:port (to connect directly, \
                 set upstream.proxy = \"none\")"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            port: port.unwrap_or(80),
            authorization: userinfo.map(basic_authorization),
        })
    }

    /// `Basic …`, for the `Proxy-Authorization` header of a CONNECT.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// `host:port`, bracketed for IPv6, for connect errors.
    pub fn address(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

impl std::fmt::Display for ProxyServer {
    /// `http://host:port`, or `http://***@host:port` when it carries credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credentials = if self.authorization.is_some() {
            "***@"
        } else {
            ""
        };
        write!(f, "http://{credentials}{}", self.address())
    }
}

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyServer({self})")
    }
}

/// `user:password` (percent-encoded, as in a URL) → `Basic base64(user:password)`.
fn basic_authorization(userinfo: &str) -> String {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut plain: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
    plain.push(b':');
    plain.extend(percent_encoding::percent_decode_str(password));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(plain)
    )
}

/// `text` with whatever sits between `://` (or the start) and the last `@` replaced by `***`.
pub fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    match rest.rsplit_once('@') {
        Some((_, hostport)) => format!("{scheme}***@{hostport}"),
        None => text.to_owned(),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets, port). `None` when the
/// host is empty or the port is not a number.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else if text.parse::<IpAddr>().is_ok() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(port) => Some(port.parse().ok()?),
        None => None,
    };
    (!host.is_empty()).then_some((host, port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `NO_PROXY` as curl reads it: a list of names, IP addresses and CIDR ranges separated by
/// commas (or spaces), each with an optional `:port`; a name matches itself and every name
/// under it (`example.com` and `.example.com` both cover `api.example.com`); `*` alone
/// matches every host. Case and a trailing dot do not matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// The list as written, for the start-up log.
    pub text: String,
    all: bool,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    target: Target,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Network { address: IpAddr, prefix: u8 },
}

impl NoProxy {
    pub fn parse(text: &str) -> Self {
        let mut list = Self {
            text: text.trim().to_owned(),
            ..Self::default()
        };
        for entry in text.split([',', ' ', '\t']).map(str::trim) {
            if entry == "*" {
                list.all = true;
            } else if let Some(rule) = Rule::parse(entry) {
                list.rules.push(rule);
            }
        }
        list
    }

    /// True when connections to `host:port` must not use the proxy.
    pub fn bypasses(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.rules.iter().any(|rule| {
            rule.port.is_none_or(|only| only == port)
                && match (&rule.target, ip) {
                    (Target::Network { address, prefix }, Some(ip)) => {
                        in_network(ip, *address, *prefix)
                    }
                    (Target::Name(name), None) => {
                        host == *name
                            || host
                                .strip_suffix(name.as_str())
                                .is_some_and(|under| under.ends_with('.'))
                    }
                    _ => false,
                }
        })
    }
}

impl Rule {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.to_ascii_lowercase();
        let (network, prefix) = match entry.split_once('/') {
            Some((network, prefix)) => (network, Some(prefix.parse::<u8>().ok()?)),
            None => (entry.as_str(), None),
        };
        let (host, port) = split_host_port(network)?;
        let target = match host.parse::<IpAddr>() {
            Ok(address) => {
                let full = if address.is_ipv4() { 32 } else { 128 };
                let prefix = prefix.unwrap_or(full);
                if prefix > full {
                    return None;
                }
                Target::Network { address, prefix }
            }
            Err(_) if prefix.is_some() => return None,
            Err(_) => {
                let name = host.trim_start_matches("*.").trim_start_matches('.');
                let name = name.trim_end_matches('.');
                if name.is_empty() {
                    return None;
                }
                Target::Name(name.to_owned())
            }
        };
        Some(Self { target, port })
    }
}

/// True when `ip` is in `address/prefix` (an IPv4 address never matches an IPv6 range).
fn in_network(ip: IpAddr, address: IpAddr, prefix: u8) -> bool {
    let (ip, address, width) = match (ip, address) {
        (IpAddr::V4(ip), IpAddr::V4(address)) => {
            (u128::from(ip.to_bits()), u128::from(address.to_bits()), 32)
        }
        (IpAddr::V6(ip), IpAddr::V6(address)) => (ip.to_bits(), address.to_bits(), 128),
        _ => return false,
    };
    let ignored = u32::from(width - prefix);
    ip.checked_shr(ignored).unwrap_or(0) == address.checked_shr(ignored).unwrap_or(0)
}

/// A proxy and where it was set (`upstream.proxy` or the variable's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySource {
    pub server: Arc<ProxyServer>,
    pub from: &'static str,
}

/// `upstream.proxy`, resolved at load time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// `"none"`, or no proxy variable set: connect directly.
    #[default]
    Direct,
    /// `upstream.proxy = "http://…"`: every upstream connection, whatever the variables say.
    Fixed(ProxySource),
    /// From the environment: the proxy for `https://` upstreams, the one for `http://`, and
    /// the hosts that bypass both.
    Environment {
        https: Option<ProxySource>,
        http: Option<ProxySource>,
        no_proxy: Option<(&'static str, NoProxy)>,
    },
}

/// How connections to the upstream are made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Route {
    #[default]
    Direct,
    /// Through an HTTP CONNECT tunnel opened by this proxy.
    Tunnel(Arc<ProxyServer>),
}

/// The variables read for each kind of upstream, first set (and not empty) wins: lower case
/// first, as curl reads them.
const HTTPS_VARIABLES: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
const HTTP_VARIABLES: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];
const NO_PROXY_VARIABLES: [&str; 2] = ["no_proxy", "NO_PROXY"];

impl ProxySetting {
    /// `upstream.proxy`: empty reads the environment `env`, `none` is no proxy, anything else
    /// is a proxy URL. An unusable proxy URL (from the key or a variable) is an error that
    /// names its origin and never repeats its credentials. Only the variables for the
    /// upstream's scheme (`secure`: https) are read: a machine's `ALL_PROXY=socks5://…` or
    /// `http_proxy` that an https upstream never uses must not stop the start.
    pub fn resolve(
        configured: &str,
        env: &[(String, String)],
        secure: bool,
    ) -> Result<Self, String> {
        match configured.trim() {
            "" => {}
            text if text.eq_ignore_ascii_case("none") => return Ok(Self::Direct),
            text => {
                let server = ProxyServer::parse(text)?;
                return Ok(Self::Fixed(ProxySource {
                    server: Arc::new(server),
                    from: "upstream.proxy",
                }));
            }
        }
        let lookup = |names: &[&'static str]| {
            names.iter().find_map(|name| {
                let value = env.iter().rev().find(|(key, _)| key == name)?.1.trim();
                (!value.is_empty()).then_some((*name, value))
            })
        };
        let source = |names: &[&'static str]| match lookup(names) {
            None => Ok(None),
            Some((from, value)) => ProxyServer::parse(value)
                .map(|server| {
                    Some(ProxySource {
                        server: Arc::new(server),
                        from,
                    })
                })
                .map_err(|why| {
                    format!(
                        "it is empty, so the proxy variables are read, and {from} = {why}; set \
                         upstream.proxy = \"none\" to connect directly"
                    )
                }),
        };
        let (https, http) = if secure {
            (source(&HTTPS_VARIABLES)?, None)
        } else {
            (None, source(&HTTP_VARIABLES)?)
        };
        if https.is_none() && http.is_none() {
            return Ok(Self::Direct);
        }
        let no_proxy = lookup(&NO_PROXY_VARIABLES).map(|(from, text)| (from, NoProxy::parse(text)));
        Ok(Self::Environment {
            https,
            http,
            no_proxy,
        })
    }

    /// The route to an upstream at `host:port` (`secure`: `https://` / `wss://`).
    pub fn route(&self, secure: bool, host: &str, port: u16) -> Route {
        match self {
            Self::Direct => Route::Direct,
            Self::Fixed(source) => Route::Tunnel(source.server.clone()),
            Self::Environment {
                https,
                http,
                no_proxy,
            } => {
                let source = if secure { https } else { http };
                let bypassed = no_proxy
                    .as_ref()
                    .is_some_and(|(_, list)| list.bypasses(host, port));
                match source {
                    Some(source) if !bypassed => Route::Tunnel(source.server.clone()),
                    _ => Route::Direct,
                }
            }
        }
    }

    /// The proxy an upstream of this kind would use before `NO_PROXY` is applied, for the
    /// start-up log.
    pub fn candidate(&self, secure: bool) -> Option<&ProxySource> {
        match self {
            Self::Direct => None,
            Self::Fixed(source) => Some(source),
            Self::Environment { https, http, .. } => if secure { https } else { http }.as_ref(),
        }
    }

    /// The bypass list in force and its variable, for the start-up log.
    pub fn no_proxy(&self) -> Option<(&'static str, &NoProxy)> {
        match self {
            Self::Environment {
                no_proxy: Some((from, list)),
                ..
            } => Some((from, list)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
