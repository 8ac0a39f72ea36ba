//! `flotilla demo http`: a tiny HTTP server to put behind the mesh, so
//! that the dev stack and the tests need nothing but this binary.
//!
//! It listens on `--port` (default: `$PORT`, which the agent sets to the
//! node port of the task's first target port) and answers every request,
//! keep-alive included, with one line naming the task: its slot, ID and
//! node, and the client's address. A connection that starts with a PROXY
//! protocol header (v1 or v2, as the mesh sends with `--proxy-protocol`)
//! has its client address taken from there, and each request is logged
//! with it, as a real service behind the mesh would log its callers.
//! `--delay` holds each answer back, as a slow service would: requests are
//! then in flight whenever the task is stopped (it ends on SIGTERM at
//! once, as a naive server does).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `flotilla demo udp`: answers every datagram on `--port` (default
/// `$PORT`) with `slot S task T node N: <the datagram>`.
pub async fn udp(port: Option<u16>) -> Result<()> {
    let port = port_or_env(port)?;
    let socket = tokio::net::UdpSocket::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot listen on udp port {port}"))?;
    let who = Who::from_env();
    println!("demo udp server of {} listening on port {port}", who.line());
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("receive failed: {e}");
                continue;
            }
        };
        let mut answer = format!("{}: ", who.line()).into_bytes();
        answer.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&answer, from).await {
            eprintln!("answer to {from} failed: {e}");
        }
    }
}

/// Longest a request's headers may be, and how long a client may take
/// to send them: a slow client cannot pin the server's memory.
const MAX_HEAD: usize = 16 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `--port`, else `$PORT` (the node port the agent gave the task).
fn port_or_env(port: Option<u16>) -> Result<u16> {
    match port {
        Some(p) => Ok(p),
        None => std::env::var("PORT")
            .context("no --port given and PORT is not set")?
            .parse()
            .context("PORT is not a port number"),
    }
}

/// Serves until the process is stopped.
pub async fn http(port: Option<u16>, delay: Duration) -> Result<()> {
    let port = port_or_env(port)?;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    let who = Who::from_env();
    println!(
        "demo http server of {} listening on port {port}",
        who.line()
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let who = who.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, peer, &who, delay).await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[derive(Clone)]
struct Who {
    slot: String,
    task: String,
    node: String,
}

impl Who {
    fn from_env() -> Who {
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
        Who {
            slot: var("FLOTILLA_TASK_SLOT"),
            task: var("FLOTILLA_TASK_ID"),
            node: var("FLOTILLA_NODE_ID"),
        }
    }

    fn line(&self) -> String {
        format!("slot {} task {} node {}", self.slot, self.task, self.node)
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, who: &Who, delay: Duration) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut client = peer.to_string();
    let mut first = true;
    loop {
        let Some(end) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        if first {
            first = false;
            if let Some((addr, used)) = proxy_header(&buf)? {
                client = addr;
                buf.drain(..used);
                // The header may have come alone; read the request after it.
                continue;
            }
        }
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let request_line = head.lines().next().unwrap_or_default().to_string();
        let close = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("connection:")
                && l.to_ascii_lowercase().contains("close")
        }) || request_line.ends_with("HTTP/1.0");
        println!("{client} {request_line}");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let body = format!("{} client {client}\n", who.line());
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        stream.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads until `buf` holds a request head (or a PROXY header at the
/// start); the offset just past it, or `None` when the client closed.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<usize>> {
    loop {
        if buf.starts_with(b"PROXY ") || buf.starts_with(&V2_SIGNATURE) {
            if let Some(n) = proxy_len(buf) {
                return Ok(Some(n));
            }
        } else if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .context("client too slow")??;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The length of a complete PROXY header at the start of `buf`.
fn proxy_len(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"PROXY ") {
        return buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
    }
    if !buf.starts_with(&V2_SIGNATURE) || buf.len() < 16 {
        return None;
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    (buf.len() >= len).then_some(len)
}

/// The client's address from a PROXY header at the start of `buf`, and
/// the header's length; `None` when there is none.
fn proxy_header(buf: &[u8]) -> Result<Option<(String, usize)>> {
    let Some(len) = proxy_len(buf) else {
        return Ok(None);
    };
    if buf.starts_with(b"PROXY ") {
        let line = String::from_utf8_lossy(&buf[..len - 2]).into_owned();
        let parts: Vec<&str> = line.split(' ').collect();
        return match parts.as_slice() {
            ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
                let ip: std::net::IpAddr = src.parse().context("bad PROXY source")?;
                let port: u16 = sport.parse().context("bad PROXY source port")?;
                Ok(Some((SocketAddr::new(ip, port).to_string(), len)))
            }
            ["PROXY", "UNKNOWN", ..] => Ok(Some(("unknown".into(), len))),
            _ => bail!("bad PROXY v1 header {line:?}"),
        };
    }
    let family = buf[13];
    let addr = match family {
        0x11 if len >= 16 + 12 => {
            let ip = std::net::Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
            let port = u16::from_be_bytes([buf[24], buf[25]]);
            SocketAddr::from((ip, port)).to_string()
        }
        0x21 if len >= 16 + 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&buf[16..32]);
            let port = u16::from_be_bytes([buf[48], buf[49]]);
            SocketAddr::from((std::net::Ipv6Addr::from(octets), port)).to_string()
        }
        _ => "unknown".into(),
    };
    Ok(Some((addr, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_give_the_client() {
        let v1 = b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n\r\n";
        let (addr, len) = proxy_header(v1).expect("v1").expect("header");
        assert_eq!(addr, "10.1.2.3:5555");
        assert_eq!(&v1[len..len + 3], b"GET");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 10, 1, 2, 3, 10, 0, 0, 1, 0x15, 0xb3, 0, 80,
        ]);
        let (addr, len) = proxy_header(&v2).expect("v2").expect("header");
        assert_eq!((addr.as_str(), len), ("10.1.2.3:5555", 28));
        assert_eq!(proxy_header(b"GET / HTTP/1.1\r\n\r\n").expect("none"), None);
    }
}
