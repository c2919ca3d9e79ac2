//! Local servers for the checkers' tests, everything on loopback, and a
//! program that records its arguments, for every runner of configured
//! commands (script checks, `track_script`, notify scripts).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
    pub head: String,
}

impl Seen {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// What the test server does with each connection.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers with this status and body.
    With(u16, &'static str),
    /// Reads the request and never answers.
    Silent,
    /// Answers 200 with this body, head and body in separate writes, and
    /// keeps the connection open, as a server ignoring `Connection: close`.
    KeepOpen(&'static str),
}

/// A one-route HTTP/1.1 server, plain or TLS, that records each request head.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpServer {
    pub async fn plain(reply: Reply) -> Self {
        Self::start("127.0.0.1:0", reply, None).await
    }

    pub async fn plain_on(bind: &str, reply: Reply) -> Self {
        Self::start(bind, reply, None).await
    }

    pub async fn tls(reply: Reply, acceptor: TlsAcceptor) -> Self {
        Self::start("127.0.0.1:0", reply, Some(acceptor)).await
    }

    async fn start(bind: &str, reply: Reply, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (reply, log, tls) = (reply.clone(), log.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, peer, reply, log).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, peer, reply, log).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn serve<S>(mut stream: S, peer: SocketAddr, reply: Reply, log: Arc<Mutex<Vec<Seen>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    log.lock().expect("lock").push(Seen {
        peer,
        head: String::from_utf8_lossy(&head).into_owned(),
    });
    match reply {
        Reply::With(status, body) => {
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::Silent => std::future::pending::<()>().await,
        Reply::KeepOpen(body) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.flush().await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let _ = stream.write_all(body.as_bytes()).await;
            std::future::pending::<()>().await
        }
    }
}

/// A self-signed certificate for `localhost` and a TLS acceptor serving it; also returns the
/// certificate as PEM, for a test that trusts it as a CA.
pub fn self_signed() -> (TlsAcceptor, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key.into())
    .expect("server config");
    (TlsAcceptor::from(Arc::new(config)), cert.pem())
}

/// A program that writes the arguments it gets to a file, and arguments a
/// shell would expand or split, each of which would create a file in the
/// probe's directory if anything ran it.
pub struct ArgvProbe {
    dir: crate::admin::testutil::TempDir,
    pub hostile: Vec<String>,
}

/// Writes its argument count then each argument on its own line to `$1`.
const RECORD: &str = "out=$1; shift; printf '%s\\n' \"$#\" \"$@\" > \"$out\"\n";

impl ArgvProbe {
    pub fn new(tag: &str) -> ArgvProbe {
        let dir = crate::admin::testutil::TempDir::new(tag);
        std::fs::write(dir.0.join("record.sh"), RECORD).expect("write record.sh");
        let d = dir.0.display();
        let hostile = vec![
            format!("$(touch {d}/dollar)"),
            format!("`touch {d}/backtick`"),
            format!("; touch {d}/semicolon"),
            format!("x && touch {d}/and | cat > {d}/pipe"),
            "*".into(),
            "$HOME".into(),
            "two words".into(),
            String::new(),
        ];
        ArgvProbe { dir, hostile }
    }

    /// The command to configure, arguments still to append. `sh` reads the
    /// script as a file (no exec of a file just written, so no ETXTBSY), and
    /// only the script's own quoted `"$@"` touches the arguments.
    pub fn command(&self) -> Vec<String> {
        [
            "/bin/sh".into(),
            self.dir.0.join("record.sh").display().to_string(),
            self.dir.0.join("args").display().to_string(),
        ]
        .into()
    }

    /// The arguments the program got, once it has written them all.
    pub fn recorded(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.dir.0.join("args")).ok()?;
        // A file caught mid-write ends without its newline or lacks lines.
        if !text.ends_with('\n') {
            return None;
        }
        let mut lines = text.lines();
        let n: usize = lines.next()?.parse().ok()?;
        let args: Vec<String> = lines.map(str::to_owned).collect();
        (args.len() == n).then_some(args)
    }

    /// Waits up to 5 s for the program to have run.
    pub async fn wait_recorded(&self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(args) = self.recorded() {
                return args;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the program never wrote its arguments"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Panics if anything but the script and its output appeared in the
    /// directory: one of the hostile arguments ran.
    pub fn assert_nothing_ran(&self) {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir.0)
            .expect("list the probe directory")
            .map(|e| e.expect("entry").file_name())
            .collect();
        files.sort();
        assert_eq!(files, ["args", "record.sh"], "an argument was run");
    }
}
