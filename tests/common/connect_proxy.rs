//! A small HTTP CONNECT proxy, as a corporate network has: it opens a tunnel to the target a
//! client names, after checking Basic credentials when it requires some, and keeps every
//! tunnel's target and every refusal. Names listed in `names` resolve only here (the test's
//! upstream is `upstream.test`, which nothing else can resolve), so a connection that
//! skipped the proxy cannot reach the upstream at all.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The name only this proxy resolves (to 127.0.0.1).
pub const UPSTREAM_NAME: &str = "upstream.test";

#[derive(Debug, Default)]
struct Seen {
    /// Targets of the tunnels opened (`host:port` as the client wrote it).
    tunnels: Vec<String>,
    /// Targets of the CONNECTs refused for their credentials.
    refused: Vec<String>,
}

#[derive(Debug)]
pub struct ConnectProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl ConnectProxy {
    /// Starts the proxy on 127.0.0.1; `credentials` (user, password) are required when set.
    pub async fn start(credentials: Option<(&str, &str)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = credentials.map(|(user, password)| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, expected.clone(), kept.clone()));
            }
        });
        Self { addr, seen }
    }

    /// `http://[user:password@]127.0.0.1:PORT`.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("http://{user}:{password}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn tunnels(&self) -> Vec<String> {
        self.seen.lock().unwrap().tunnels.clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.seen.lock().unwrap().refused.clone()
    }
}

/// One client connection: its CONNECT head, the credentials check, the tunnel.
async fn serve(mut client: TcpStream, expected: Option<String>, seen: Arc<Mutex<Seen>>) {
    let Some(head) = read_head(&mut client).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut words = request_line.split(' ');
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    if expected.is_some() && authorization != expected {
        seen.lock().unwrap().refused.push(target.to_owned());
        let _ = client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  proxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
        return;
    }
    let Some(upstream) = resolve(target) else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(upstream).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    seen.lock().unwrap().tunnels.push(target.to_owned());
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// The request head, up to its blank line (a CONNECT has no body, and the client waits for
/// the answer before it sends anything else).
async fn read_head(client: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return None;
        }
        let mut byte = [0u8; 1];
        if client.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// `host:port` → an address: [`UPSTREAM_NAME`] and `localhost` are 127.0.0.1, IP literals are
/// themselves; no other name resolves.
fn resolve(target: &str) -> Option<SocketAddr> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match host {
        UPSTREAM_NAME | "localhost" => [127, 0, 0, 1].into(),
        literal => literal.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}
