//! A TCP proxy in front of a server whose behaviour can be switched, to
//! make outages (a stopped or a hung server) on demand.

use std::net::SocketAddr;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Up,
    /// Keep connections open but deliver nothing until Up again (a hung,
    /// e.g. SIGSTOPped, server: bytes wait, nothing is lost).
    Hung,
    /// Close every connection and accept-then-close new ones (a stopped server).
    Down,
}

/// A TCP proxy in front of the CQL server whose behaviour can be switched.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: tokio::sync::watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, rx) = tokio::sync::watch::channel(Mode::Up);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let now = *rx.borrow();
                    if now == Mode::Down {
                        return; // accepted and closed at once
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pipe(cr, sw, rx.clone()) => {}
                        () = pipe(sr, cw, rx) => {}
                    }
                });
            }
        });
        Proxy { addr, mode, task }
    }

    pub fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the mode is Up, stops reading while Hung,
/// returns (closing both sides) when Down.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<Mode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Down => return,
            Mode::Hung => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Up => tokio::select! {
                r = from.read(&mut buf) => {
                    let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                changed = mode.changed() => if changed.is_err() { return },
            },
        }
    }
}
