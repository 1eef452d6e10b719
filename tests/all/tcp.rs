//! `mode tcp`: byte streams, tcp-request rules, balancing.

use std::time::Duration;

use anyhow::Result;
use moonbox::ext::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// A TCP echo server that prefixes its answers with its name.
async fn echo_server(name: &'static str) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut out = format!("{name}:").into_bytes();
                            out.extend_from_slice(&buf[..n]);
                            if s.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(addr: std::net::SocketAddr, msg: &[u8]) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

#[tokio::test]
async fn tcp_proxying_with_rules() -> Result<()> {
    let a = echo_server("a").await;
    let b = echo_server("b").await;
    let cfg = format!(
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend ft\n  bind 127.0.0.1:0\n  tcp-request inspect-delay 1s\n\
         tcp-request content reject if {{ req.payload(0,4) -m str QUIT }}\n\
         tcp-request content set-var(sess.first) req.payload(0,1)\n\
         use_backend bb if {{ req.payload(0,2) -m str BB }}\n  default_backend ba\n\
         backend ba\n  server a {a}\n\
         backend bb\n  server b {b}\n"
    );
    let p = start(&cfg, Registry::new()).await?;
    let addr = p.addr("ft");
    assert_eq!(roundtrip(addr, b"hello").await?, "a:hello");
    assert_eq!(roundtrip(addr, b"BB data").await?, "b:BB data");
    // Rejected: the connection closes without data.
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"QUIT now").await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
    assert_eq!(n, 0);
    Ok(())
}

#[tokio::test]
async fn tcp_connection_rules_filter_sources() -> Result<()> {
    let a = echo_server("a").await;
    let cfg = format!(
        "defaults\n  mode tcp\nfrontend deny_local\n  bind 127.0.0.1:0\n  tcp-request connection reject if {{ src 127.0.0.0/8 }}\n  default_backend ba\n\
         frontend allow_local\n  bind 127.0.0.1:0\n  tcp-request connection accept if {{ src 127.0.0.1 }}\n  tcp-request connection reject\n  default_backend ba\n\
         backend ba\n  server a {a}\n"
    );
    let p = start(&cfg, Registry::new()).await?;
    assert_eq!(roundtrip(p.addr("allow_local"), b"x").await?, "a:x");
    let mut s = TcpStream::connect(p.addr("deny_local")).await?;
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0);
    Ok(())
}

#[tokio::test]
async fn tcp_every_server_down_closes() -> Result<()> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead = l.local_addr()?;
    drop(l);
    let cfg = format!("defaults\n  mode tcp\nlisten lt\n  bind 127.0.0.1:0\n  server a {dead}\n");
    let p = start(&cfg, Registry::new()).await?;
    let mut s = TcpStream::connect(p.addr("lt")).await?;
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0);
    Ok(())
}
