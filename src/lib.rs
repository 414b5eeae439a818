//! # chat-server
//!
//! A horizontally scalable chat service: stateless axum replicas, SeaORM storage (SQLite or
//! PostgreSQL), and fan-out through an in-process bus or Redis pub/sub.
//!
//! The path of one message, module by module:
//!
//! 1. [`ws::session`] (or [`http::messages`]) parses and validates the frame and applies the
//!    per-user rate limit;
//! 2. [`send::Sender`] commits it in a (group) transaction that takes the room's next `seq`;
//! 3. it is published on the [`bus::Bus`] ([`bus::local`] or [`bus::redis`]);
//! 4. every replica's [`bus::hub::Hub`] puts it, in `seq` order and with gaps filled from the
//!    database, into each local socket's bounded queue;
//! 5. the socket's writer task sends it.
//!
//! [`run`] serves a [`state::AppState`] on a listener until its shutdown token fires.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod http;
pub mod model;
pub mod send;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ws;

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use config::Config;
pub use state::AppState;

/// Kernel send buffer per accepted connection. Small and fixed, so that a client that stops
/// reading fills its socket's queue (and is closed with 4429) instead of parking megabytes in
/// the kernel.
const SEND_BUFFER: usize = 64 * 1024;

/// Serve `state` on `listener` until `state.shutdown` is cancelled, then drain: `/readyz` is
/// already 503, the listener stops accepting, every socket is closed with 1012, and in-flight
/// commits get up to `SHUTDOWN_GRACE_SECS` to finish.
///
/// # Errors
/// If the listener fails.
pub async fn run(state: AppState, listener: TcpListener) -> anyhow::Result<()> {
    let app = http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER);
    });
    let stop = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.shutdown.cancelled().await;
        stop.draining.store(true, Ordering::Release);
        tracing::info!("shutting down: closing sockets with 1012");
        stop.hub.close_all(bus::hub::CLOSE_RESTART);
    });
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    let served = tokio::spawn(async move { server.await });
    state.shutdown.cancelled().await;
    // In-flight HTTP requests (and their commits) finish, up to the grace period.
    match tokio::time::timeout(grace, served).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::warn!("grace period over with requests still running"),
    }
    state.sender.drained(grace).await;
    // Give socket writers a moment to flush their close frames.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
