//! The WebSocket upgrade (RFC 6455 §4.2) on top of hyper, and the socket's byte buffers.
//!
//! We do the upgrade ourselves, with tokio-tungstenite, instead of through axum's
//! `WebSocketUpgrade`, for what an idle socket costs: axum hides the stream and its raw frames,
//! and tungstenite's write buffer keeps the capacity of the largest burst it ever wrote. Here
//! tungstenite writes each frame straight through ([`BufIo`]), `BufIo` gathers a flush's
//! frames into one buffer that it frees once written, and large frames go out as fragments
//! (see `session`), so an idle socket holds no write buffer at all.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header, request::Parts},
    response::{IntoResponse, Response},
};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};

use crate::chat::Error;
use tokio_util::task::TaskTracker;

/// An upgraded socket.
pub(super) type Socket = WebSocketStream<BufIo<TokioIo<Upgraded>>>;

/// A validated upgrade request (HTTP/1.1 `GET` with `Upgrade: websocket`).
pub(super) struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn header_contains(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        if parts.version > Version::HTTP_11 {
            return Err(Error::bad_request(
                "WebSockets are served over HTTP/1.1 (GET with Upgrade: websocket)",
            ));
        }
        if parts.method != Method::GET {
            return Err(Error::bad_request("a WebSocket upgrade must be a GET"));
        }
        if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(Error::bad_request(
                "Connection header did not include 'upgrade'",
            ));
        }
        if !header_contains(&parts.headers, header::UPGRADE, "websocket") {
            return Err(Error::bad_request(
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        let version_ok = parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
        if !version_ok {
            return Err(Error::bad_request(
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| Error::bad_request("`Sec-WebSocket-Key` header missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| Error::bad_request("the connection cannot be upgraded"))?;
        Ok(Self { key, on_upgrade })
    }
}

impl WsUpgrade {
    /// Answer `101 Switching Protocols` and run `session` on the socket once hyper hands it
    /// over.
    pub(super) fn on_upgrade<F, Fut>(
        self,
        tasks: &TaskTracker,
        config: WebSocketConfig,
        session: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        // Boxed: whatever the task captures stays in it for the socket's lifetime.
        let start = Box::new((config, session));
        let fut = async move {
            let io = match on_upgrade.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            let io = BufIo::new(TokioIo::new(io));
            // Boxed, like the rest of the set-up: the task keeps only the session's future.
            let socket = Box::pin(WebSocketStream::from_raw_socket(
                io,
                Role::Server,
                Some(start.0),
            ))
            .await;
            let (_, session) = unbox(start);
            session(socket).await;
        };
        tasks.spawn(fut);
        let accept = derive_accept_key(self.key.as_bytes());
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Move a value out of its box and free the box now (a box moved out of with `*b` is freed
/// only at the end of its scope: in an async block, after the last await).
#[allow(clippy::boxed_local)] // taking the box is the point: it is freed on return
pub(super) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Largest amount `BufIo` gathers before it writes through; beyond it, a write waits for the
/// peer (backpressure).
const BUF_HIGH_WATER: usize = 64 * 1024;

/// A write buffer that exists only while there is something to write.
///
/// tungstenite (configured with `write_buffer_size = 0`) hands each frame to `poll_write` at
/// once; the frames gather here until the session's writer flushes, so one flush is still one
/// `write` system call for many frames. When everything is written the buffer is freed.
pub(super) struct BufIo<S> {
    inner: S,
    buf: Vec<u8>,
    written: usize,
}

impl<S> BufIo<S> {
    pub(super) fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> BufIo<S> {
    /// Write out everything gathered, then free the buffer. Each write that wrote is counted
    /// (`chat_ws_writes_total`): the system calls the sockets cost.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            crate::telemetry::metrics::ws_write();
            self.written += n;
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BufIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BufIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() - self.written >= BUF_HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        if self.buf.is_empty() {
            // One allocation for a typical flush rather than a series of doublings.
            self.buf.reserve(data.len().max(4096));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn gathers_until_flush_then_frees() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut io = BufIo::new(client);
        io.write_all(b"hello ").await.unwrap();
        io.write_all(b"world").await.unwrap();
        assert_eq!(io.buf.len(), 11, "nothing written before the flush");
        io.flush().await.unwrap();
        assert_eq!(io.buf.capacity(), 0, "the buffer is freed once written");
        let mut got = [0u8; 11];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"hello world");
    }

    #[tokio::test]
    async fn a_full_buffer_waits_for_the_peer() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = BufIo::new(client);
        let chunk = vec![7u8; 16 * 1024];
        // The peer reads nothing: writes beyond the high-water mark must wait.
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            loop {
                io.write_all(&chunk).await.unwrap();
            }
        })
        .await;
        assert!(blocked.is_err(), "writes kept succeeding without a reader");
        assert!(io.buf.len() - io.written <= BUF_HIGH_WATER + chunk.len());
        let mut sink = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut sink)
            .await
            .unwrap();
        assert!(n > 0);
    }
}
