//! HTTPS per worker with rustls: the counterpart of fasthttp prefork's `ListenAndServeTLS`
//! (certificate files) and `ListenAndServeTLSEmbed` (certificate bytes held in memory).
//! The TLS code lives here, in the application; the crate only hands each worker a listener.
//!
//! ```text
//! # certificate and key from files
//! cargo run --example tls -- --cert cert.pem --key key.pem --addr 127.0.0.1:8443 --workers 2
//! # certificate and key as bytes, e.g. embedded with include_bytes! (here: read from the
//! # environment variables TLS_CERT_PEM and TLS_KEY_PEM before the workers start)
//! TLS_CERT_PEM="$(cat cert.pem)" TLS_KEY_PEM="$(cat key.pem)" cargo run --example tls -- --embedded
//! curl --cacert cert.pem https://localhost:8443/
//! ```
//!
//! The configuration is built once in the master, before the fork, so every worker shares it
//! copy-on-write; each worker then runs its own accept loop with its own TLS sessions.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn main() -> ExitCode {
    let mut workers = 2;
    let mut addr = "127.0.0.1:8443".to_owned();
    let (mut cert_file, mut key_file, mut embedded) = (None, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" => workers = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--addr" => addr = args.next().unwrap_or_default(),
            "--cert" => cert_file = args.next(),
            "--key" => key_file = args.next(),
            "--embedded" => embedded = true,
            other => return fail(&format!("unknown argument {other:?}")),
        }
    }
    // Load the certificate before forking: from files, or from bytes already in memory.
    let (cert_pem, key_pem) = if embedded {
        match (std::env::var("TLS_CERT_PEM"), std::env::var("TLS_KEY_PEM")) {
            (Ok(c), Ok(k)) => (c.into_bytes(), k.into_bytes()),
            _ => return fail("--embedded needs TLS_CERT_PEM and TLS_KEY_PEM"),
        }
    } else {
        let (Some(c), Some(k)) = (cert_file, key_file) else {
            return fail("give --cert FILE --key FILE, or --embedded");
        };
        match (std::fs::read(&c), std::fs::read(&k)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return fail(&format!("cannot read certificate: {e}")),
        }
    };
    let config = match server_config(&cert_pem, &key_pem) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(&format!("bad certificate or key: {e}")),
    };

    let result = prefork::Prefork::new().workers(workers).listen_and_serve(
        &addr,
        |listener, worker| -> io::Result<()> {
            println!(
                "worker {} serving https://{}",
                worker.id(),
                listener.local_addr()?
            );
            io::stdout().flush()?;
            for stream in listener.incoming() {
                let stream = stream?;
                if let Err(e) = serve_tls(stream, config.clone(), worker) {
                    eprintln!("worker {}: {e}", worker.id());
                }
            }
            Ok(())
        },
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("tls: {msg}");
    ExitCode::from(1)
}

fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ServerConfig, Box<dyn std::error::Error>> {
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// One HTTPS request per connection: read the request head, answer, close.
fn serve_tls(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    worker: prefork::Worker,
) -> io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, &mut tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
    let body = format!(
        "Hello over TLS from worker {} (pid {})\n",
        worker.id(),
        worker.pid()
    );
    write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()
}
