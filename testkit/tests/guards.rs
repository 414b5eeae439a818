//! The guards against real processes: a private redis-server comes back on its port after a
//! kill, and its process is gone once the guard is dropped. Needs `redis-server` on PATH.

use std::time::Duration;

use chat_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn pong(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 8];
    s.write_all(b"PING\r\n").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
            Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
        )
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn redis_comes_back_on_its_port_and_goes_with_its_guard() {
    let mut redis = RedisServer::start().await.expect("redis-server starts");
    let port = redis.port();
    let first = redis.pid().expect("a pid");
    assert!(pong(port).await);

    redis.kill();
    assert!(redis.pid().is_none());
    assert!(!alive(first), "killed and reaped");
    assert!(!pong(port).await);

    redis.start_again().await.expect("starts again");
    assert_eq!(redis.port(), port, "on the same port");
    let second = redis.pid().expect("a pid");
    assert_ne!(second, first);
    assert!(pong(port).await);
    assert!(redis.start_again().await.is_err(), "it is running");

    drop(redis);
    assert!(!alive(second), "dropping the guard ends it");
    assert!(!pong(port).await);
}
