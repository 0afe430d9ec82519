//! A minimal HTTP/1.1 client for one keep-alive connection: write a
//! request that is already serialized, read one whole response, return its
//! status. No pipelining, no redirects, no TLS.
//!
//! It is this small on purpose. The load generator shares two cores with
//! the server it measures, so every microsecond the client spends is one the
//! server does not get. The harness measures the client's CPU per request
//! against `/livez` and reports it next to the server's.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to the server.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(8 * 1024) })
    }

    /// Sends `request` and reads the whole response. Returns the status and
    /// whether the server will keep the connection open.
    pub async fn roundtrip(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        let (head, _) = self.read_response().await?;
        Ok((head.status, head.keep_alive))
    }

    /// Sends `request` and returns the status and the body, for probes
    /// such as `/metrics` (the load phases never look at a body).
    pub async fn fetch(&mut self, request: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        let (head, head_end) = self.read_response().await?;
        let body = &self.buf[head_end..];
        let body = match head.body {
            Body::None => Vec::new(),
            Body::Length(n) => body[..n].to_vec(),
            Body::Chunked => dechunk(body).ok_or_else(|| bad("chunked body"))?,
        };
        Ok((head.status, body))
    }

    /// Reads one whole response into `buf`; returns its head and where
    /// its body starts.
    async fn read_response(&mut self) -> io::Result<(Head, usize)> {
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = Head::parse(&self.buf[..head_end])?;
        match head.body {
            Body::None => {}
            Body::Length(n) => {
                while self.buf.len() < head_end + n {
                    self.fill().await?;
                }
            }
            Body::Chunked => self.skip_chunked(head_end).await?,
        }
        Ok((head, head_end))
    }

    /// Reads until the chunked body that starts at `at` has ended.
    async fn skip_chunked(&mut self, mut at: usize) -> io::Result<()> {
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[at..], b"\r\n") {
                    break at + i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[at..line_end]).map_err(|_| bad("chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            at = line_end + 2;
            if size == 0 {
                // No trailers from streamcap: the final CRLF follows.
                while self.buf.len() < at + 2 {
                    self.fill().await?;
                }
                return Ok(());
            }
            while self.buf.len() < at + size + 2 {
                self.fill().await?;
            }
            at += size + 2;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        if self.buf.len() > 1 << 20 {
            return Err(bad("response over 1 MiB"));
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
            _ => Ok(()),
        }
    }
}

enum Body {
    None,
    Length(usize),
    Chunked,
}

struct Head {
    status: u16,
    keep_alive: bool,
    body: Body,
}

impl Head {
    fn parse(head: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(head).map_err(|_| bad("non-UTF-8 header"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let mut length = None;
        let mut chunked = false;
        let mut keep_alive = true;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| bad("content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        let body = match (status, length, chunked) {
            (100..=199 | 204 | 304, _, _) => Body::None,
            (_, _, true) => Body::Chunked,
            (_, Some(n), false) => Body::Length(n),
            (_, None, false) => return Err(bad("a response without length (read-until-close is not supported)")),
        };
        Ok(Head { status, keep_alive, body })
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed HTTP response: {what}"))
}

/// The data of a whole chunked body (no trailers), or `None` if it is
/// malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let data = body.get(line_end + 2..line_end + 2 + size)?;
        out.extend_from_slice(data);
        body = body.get(line_end + 2 + size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_heads_streamcap_sends() {
        let h = Head::parse(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 42\r\n\r\n")
            .unwrap();
        assert_eq!(h.status, 201);
        assert!(matches!(h.body, Body::Length(42)));
        let h = Head::parse(b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n").unwrap();
        assert!(matches!(h.body, Body::None));
        let h = Head::parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
        assert!(matches!(h.body, Body::Chunked));
        assert!(!h.keep_alive);
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(Head::parse(b"SSH-2.0\r\n\r\n").is_err());
    }

    /// A server on a free port that answers each request on one connection
    /// with the next of `replies`; with `split`, in two writes, so that the
    /// client must read more than once.
    async fn scripted(replies: [&'static [u8]; 3], split: bool) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for reply in replies {
                let _ = s.read(&mut buf).await.unwrap();
                let (a, b) = reply.split_at(if split { reply.len() / 2 } else { reply.len() });
                s.write_all(a).await.unwrap();
                if split {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    s.write_all(b).await.unwrap();
                }
            }
        });
        (addr, server)
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_over_a_socket() {
        let replies: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ];
        let (addr, server) = scripted(replies, true).await;
        let mut c = Conn::connect(addr).await.unwrap();
        for want in [200, 409, 204] {
            assert_eq!(c.roundtrip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap(), (want, true));
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn returns_the_body_of_a_probe() {
        let replies: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ];
        let (addr, server) = scripted(replies, false).await;
        let mut c = Conn::connect(addr).await.unwrap();
        assert_eq!(c.fetch(b"GET / HTTP/1.1\r\n\r\n").await.unwrap(), (200, b"hello".to_vec()));
        assert_eq!(c.fetch(b"GET / HTTP/1.1\r\n\r\n").await.unwrap(), (200, b"abcde".to_vec()));
        assert_eq!(c.fetch(b"GET / HTTP/1.1\r\n\r\n").await.unwrap(), (204, Vec::new()));
        server.await.unwrap();
        assert_eq!(dechunk(b"3\r\nabc\r\n"), None, "no last chunk");
        assert_eq!(dechunk(b"zz\r\n"), None);
    }
}
