//! The hot loops' HTTP/1.1 client: one keep-alive connection per virtual
//! user, each request written as prepared bytes, each answer's head parsed
//! with `httparse` and its body read by `Content-Length`.
//!
//! The load generator shares the machine's cores with authd and Postgres,
//! and the ceiling it is compared with comes from pgbench, a lean C client.
//! reqwest spent about 40 µs of CPU per request here (its pool, URL and
//! header map per request, a separate connection task): 0.4 of a core at
//! 10 000 requests/s, taken from authd. This client does the same exchange
//! with one write and (usually) one read in the caller's task.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the loops need of an answer.
pub struct Answer {
    pub status: u16,
    /// The value of the `Set-Cookie` named `cookie` (non-empty), if any.
    pub cookie: Option<String>,
}

pub struct Wire {
    addr: SocketAddr,
    host: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Wire {
    /// `base` is `http://HOST:PORT` (no path).
    pub fn new(base: &str) -> Result<Self, String> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("{base}: not an http:// URL"))?
            .trim_end_matches('/')
            .to_owned();
        let addr = host
            .parse()
            .map_err(|e| format!("{base}: {e} (expected http://IP:PORT)"))?;
        Ok(Self {
            addr,
            host,
            conn: None,
            buf: Vec::with_capacity(4096),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Send one whole request (head and body) and read its answer. A kept-
    /// alive connection the server closed before answering is replaced once
    /// and the request sent again (for a refresh that is the retry the grace
    /// window is for).
    pub async fn send(&mut self, request: &[u8], cookie: &str) -> Result<Answer, String> {
        let reused = self.conn.is_some();
        match self.exchange(request, cookie).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) if reused => self
                .exchange(request, cookie)
                .await?
                .ok_or_else(|| "connection closed before an answer".to_owned()),
            Ok(None) => Err("connection closed before an answer".to_owned()),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// `Ok(None)`: the connection ended before any byte of an answer.
    async fn exchange(&mut self, request: &[u8], cookie: &str) -> Result<Option<Answer>, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            self.conn = Some(s);
        }
        let conn = self.conn.as_mut().expect("connected above");
        if conn.write_all(request).await.is_err() {
            self.conn = None;
            return Ok(None);
        }
        self.buf.clear();
        loop {
            let n = read_more(conn, &mut self.buf).await?;
            if n == 0 {
                self.conn = None;
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err("connection closed mid-answer".into());
            }
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut head = httparse::Response::new(&mut headers);
            let head_len = match head.parse(&self.buf).map_err(|e| e.to_string())? {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => continue,
            };
            let status = head.code.unwrap_or(0);
            let mut body_len = None;
            let mut close = false;
            let mut found = None;
            for h in head.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                } else if h.name.eq_ignore_ascii_case("set-cookie") && !cookie.is_empty() {
                    found = found.or_else(|| cookie_value(h.value, cookie));
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err("chunked answers are not read by this client".into());
                }
            }
            let total = head_len + body_len.ok_or("an answer without Content-Length")?;
            while self.buf.len() < total {
                if read_more(conn, &mut self.buf).await? == 0 {
                    self.conn = None;
                    return Err("connection closed mid-body".into());
                }
            }
            if close {
                self.conn = None;
            }
            return Ok(Some(Answer {
                status,
                cookie: found,
            }));
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    conn.read_buf(buf).await.map_err(|e| e.to_string())
}

/// `name=value; attributes` → value, when the name is `name` and the value
/// is not empty (a cleared cookie).
fn cookie_value(header: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(header).ok()?;
    let first = text.split(';').next()?;
    let (n, v) = first.split_once('=')?;
    (n.trim() == name && !v.is_empty()).then(|| v.to_owned())
}
