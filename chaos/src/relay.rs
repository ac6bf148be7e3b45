//! A TCP relay from the harness's bridge address to a backend on the host's
//! loopback: the node namespaces have loopbacks of their own, so Redis and
//! the CQL server (which listen on 127.0.0.1) are reached through it.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running relay; stops accepting when dropped.
#[derive(Debug)]
pub struct Relay {
    /// Where the nodes connect.
    pub listen: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `bind` (port 0: any) and forwards every connection to `to`.
    pub async fn start(bind: SocketAddr, to: SocketAddr) -> Result<Relay> {
        let l = TcpListener::bind(bind)
            .await
            .with_context(|| format!("relay: bind {bind}"))?;
        let listen = l.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(to).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = out.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Ok(Relay { listen, task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
