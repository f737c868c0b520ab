//! `wsbridge health`: a dependency-free HTTP probe for container health checks (the runtime
//! image has no curl). Exit status 0 when `GET URL` answers 200. With no URL it probes
//! `server.listen` from the same configuration `serve` reads, so a changed port is followed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `http://ADDR/healthz` for a proxy listening on `listen`. An unspecified address (`0.0.0.0`,
/// `[::]`, as in a container) is probed on the matching loopback address.
pub fn url_for(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// Sends `GET` to an `http://host:port/path` URL and succeeds on a 200.
pub fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = authority
        .to_socket_addrs()
        .map_err(|error| format!("{authority}: {error}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|error| format!("{addr}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| error.to_string())?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|error| format!("{addr}: {error}"))?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => Err(format!(
            "{url} answered {}",
            String::from_utf8_lossy(status)
        )),
    }
}
