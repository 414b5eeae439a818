//! WebSocket helpers: connect, read frames of a kind, close codes, and recorders.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as WsMessage};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect a socket to a room; panics unless the upgrade succeeds.
pub async fn ws_connect(base_ws: &str, room: &str, token: &str, since: Option<i64>) -> Ws {
    let mut url = format!("{base_ws}/ws/rooms/{room}?token={token}");
    if let Some(s) = since {
        url.push_str(&format!("&since_seq={s}"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket upgrade");
    ws
}

/// The HTTP status of a refused upgrade.
pub async fn ws_refused(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The next text frame as JSON (skipping pings), within `secs`.
pub async fn next_json(ws: &mut Ws, secs: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            WsMessage::Text(t) => {
                return Some(serde_json::from_str(&t).expect("server frames are JSON"));
            }
            WsMessage::Close(_) => return None,
            _ => {}
        }
    }
}

/// The next JSON frame, or why there is none: the close code (`Err(Some(code))`), or nothing
/// within `secs` / the connection dropped (`Err(None)`).
pub async fn next_json_or_close(ws: &mut Ws, secs: u64) -> Result<Value, Option<u16>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                return Ok(serde_json::from_str(&t).expect("server frames are JSON"));
            }
            Ok(Some(Ok(WsMessage::Close(frame)))) => return Err(frame.map(|f| f.code.into())),
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) | Err(_) => return Err(None),
        }
    }
}

/// The first frame, which must be `ready`.
pub async fn expect_ready(ws: &mut Ws) -> Value {
    let first = next_json(ws, 10).await.expect("ready frame");
    assert_eq!(first["type"], "ready", "{first}");
    first
}

/// The next frame of `kind`, skipping others.
pub async fn next_of(ws: &mut Ws, kind: &str, secs: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs()
            .max(1);
        let v = next_json(ws, left).await?;
        if v["type"] == kind {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Every frame before the `message` whose content is `marker` (panics if it never comes).
/// A test that something never arrives posts a marker after it and checks these frames: the
/// absence is then proven by the order of the stream, not by a timeout.
pub async fn frames_before(ws: &mut Ws, marker: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let v = next_json(ws, 10)
            .await
            .unwrap_or_else(|| panic!("marker {marker:?} never arrived; before it: {before:?}"));
        if v["type"] == "message" && v["content"] == marker {
            return before;
        }
        before.push(v);
    }
}

/// Close a socket with the close handshake and wait until the server has answered it.
pub async fn close_ws(mut ws: Ws) {
    ws.close(None).await.expect("send close frame");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Read until the close frame; its code (None if the stream ended without one).
pub async fn close_code(ws: &mut Ws, secs: u64) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Close(Some(frame))))) => return Some(frame.code.into()),
            Ok(Some(Ok(WsMessage::Close(None))) | None | Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

pub async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .expect("send frame");
}

/// Collect `message` frames until `n` have arrived (or `secs` pass); returns their seqs.
pub async fn collect_seqs(ws: &mut Ws, n: usize, secs: u64) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break;
        };
        if let WsMessage::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == "message" {
                seqs.push(v["seq"].as_i64().expect("seq"));
            }
        }
    }
    seqs
}

/// The message seqs a [`record`]ed socket has received so far.
pub type Seen = Arc<Mutex<Vec<i64>>>;

/// A socket that records every message seq it receives, in a shared list; the task ends with
/// the socket's close code.
pub fn record(mut ws: Ws) -> (Seen, tokio::task::JoinHandle<Option<u16>>) {
    let seen = Seen::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(WsMessage::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["type"] == "message" {
                        out.lock().unwrap().push(v["seq"].as_i64().expect("seq"));
                    }
                }
                Ok(WsMessage::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    });
    (seen, task)
}

/// Wait until every recorder has seen at least `n` messages ([`super::wait_until`]).
pub async fn wait_for_counts(recorders: &[&Seen], n: usize) {
    super::wait_until(&format!("every recorder to see {n} messages"), async || {
        let counts: Vec<usize> = recorders.iter().map(|s| s.lock().unwrap().len()).collect();
        if counts.iter().all(|c| *c >= n) {
            Ok(())
        } else {
            Err(counts)
        }
    })
    .await;
}

pub fn assert_gap_free(seqs: &[i64], upto: i64, who: &str) {
    assert_eq!(
        seqs,
        (1..=upto).collect::<Vec<_>>(),
        "{who}: every seq once, in order"
    );
}
