//! A lean HTTP/1.1 keep-alive client: one hyper connection per worker and
//! target, requests sent one at a time on it, no pool and no redirects.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// A server to send requests to: `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given.
    pub url: String,
    /// `host:port`, for the Host header and for resolving.
    pub authority: String,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
    /// Resolved address (set by [`Target::resolve`]).
    pub addr: Option<SocketAddr>,
}

impl Target {
    /// Parses `http://host[:port][/prefix]`. Only plain HTTP is supported.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("target '{url}': only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("target '{url}': no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            url: url.to_string(),
            authority,
            prefix: path.trim_end_matches('/').to_string(),
            addr: None,
        })
    }

    /// Resolves the host once; the run then connects to that address.
    pub async fn resolve(&mut self) -> Result<SocketAddr, String> {
        let mut addrs = tokio::net::lookup_host(&self.authority)
            .await
            .map_err(|e| {
                format!(
                    "target '{}': cannot resolve {}: {e}",
                    self.url, self.authority
                )
            })?;
        let a = addrs.next().ok_or_else(|| {
            format!(
                "target '{}': {} resolves to nothing",
                self.url, self.authority
            )
        })?;
        self.addr = Some(a);
        Ok(a)
    }

    /// `prefix + path`.
    pub fn path(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum HttpError {
    Connect(std::io::Error),
    Timeout,
    Io(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::Timeout => f.write_str("timeout"),
            HttpError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    /// Opens a connection to `target` (resolved).
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Conn, HttpError> {
        let addr = target
            .addr
            .ok_or_else(|| HttpError::Connect(std::io::Error::other("target not resolved")))?;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HttpError::Connect(e)),
            Err(_) => {
                return Err(HttpError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
        };
        stream.set_nodelay(true).map_err(HttpError::Connect)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Connect(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            authority: target.authority.clone(),
        })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer. On any error the
    /// connection should be dropped (the answer may still be in flight).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if !body.is_empty() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = bearer {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| HttpError::Io(format!("request: {e}")))?;
        self.sender
            .ready()
            .await
            .map_err(|e| HttpError::Io(format!("connection: {e}")))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Io(format!("send: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| HttpError::Io(format!("body: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    /// [`Conn::send`] within `timeout`.
    pub async fn send_timeout(
        &mut self,
        timeout: Duration,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        match tokio::time::timeout(timeout, self.send(method, path, bearer, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://127.0.0.1:8080").expect("ok");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.prefix, "");
        assert_eq!(t.path("/api/v1/validate"), "/api/v1/validate");
        let t = Target::parse("http://localhost/base/").expect("ok");
        assert_eq!(t.authority, "localhost:80");
        assert_eq!(t.path("/x"), "/base/x");
        let t = Target::parse("http://[::1]:9000").expect("ok");
        assert_eq!(t.authority, "[::1]:9000");
        let t = Target::parse("http://[::1]").expect("ok");
        assert_eq!(t.authority, "[::1]:80");
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("127.0.0.1:80").is_err());
        assert!(Target::parse("http://").is_err());
    }
}
