//! A private CA made at test time (rcgen) and a TLS terminator in front of a plain server
//! (tokio-rustls), so the proxy can be pointed at `https://localhost:PORT/v1`. The terminator
//! offers `h2` and `http/1.1` through ALPN, as api.openai.com does, and keeps what each
//! connection negotiated and the first line it carried (`PRI * HTTP/2.0` for HTTP/2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, pki_types::PrivatePkcs8KeyDer};

/// A fresh CA and a leaf it signed for `localhost`, `upstream.test` and 127.0.0.1.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate as a PEM file (what `upstream.ca_file` or `SSL_CERT_FILE` names).
    pub ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// Generates the CA and the leaf; the CA's PEM goes to a file of its own under the
    /// system's temporary directory (`name` keeps parallel tests apart).
    pub fn new(name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wsbridge test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "upstream.test".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let dir = std::env::temp_dir().join(format!("wsbridge-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            ca_file,
            server: Arc::new(server),
        }
    }
}

/// A TLS listener on 127.0.0.1 that forwards each connection's plaintext to `backend`.
#[derive(Debug)]
pub struct Terminator {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<Connection>>>,
}

/// One TLS connection the terminator served.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The protocol ALPN settled on (`h2`, `http/1.1`), if the client offered any.
    pub alpn: Option<String>,
    /// The first line of plaintext: a request line, or `PRI * HTTP/2.0` for HTTP/2.
    pub first_line: String,
}

impl Terminator {
    /// Starts the listener; it runs until the test's runtime ends.
    pub async fn start(pki: &Pki, backend: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(pki.server.clone());
        let handshakes = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (done, failed, seen) = (handshakes.clone(), refused.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (done, failed, seen) = (done.clone(), failed.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    let alpn = tls.get_ref().1.alpn_protocol();
                    let alpn = alpn.map(|name| String::from_utf8_lossy(name).into_owned());
                    let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                    // The client speaks first (a request line or the HTTP/2 preface).
                    let mut first = vec![0u8; 4096];
                    let Ok(read) = tls.read(&mut first).await else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&first[..read]);
                    let first_line = text.split("\r\n").next().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(Connection { alpn, first_line });
                    if plain.write_all(&first[..read]).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Self {
            addr,
            handshakes,
            refused,
            connections,
        }
    }

    /// The connections served so far, once their first bytes arrived.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// `https://localhost:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}/v1", self.addr.port())
    }

    /// TLS handshakes that completed.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed (the client refused the certificate, or spoke plain text).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}
