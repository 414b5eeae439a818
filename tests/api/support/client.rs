//! The one HTTP client of the tests: against an app in this process, a spawned server, or a
//! load balancer alike.

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";

#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
}

pub struct User {
    pub id: i64,
    pub username: String,
    pub access: String,
    pub refresh: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// One request; the status and the body as JSON (a non-JSON body as a string, an empty
    /// one as `null`), or the transport error (refused, reset, timed out).
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// [`Self::try_send`] that panics on a transport error.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let what = format!("{method} {path}");
        self.try_send(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn register(&self, username: &str) -> User {
        let (status, body) = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 201, "register {username}: {body}");
        User {
            id: body["user"]["id"].as_i64().expect("id"),
            username: username.to_owned(),
            access: body["tokens"]["access"]
                .as_str()
                .expect("access")
                .to_owned(),
            refresh: body["tokens"]["refresh"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// `POST /api/v1/auth/login`: the status and the response (`access`, `refresh`, `user`).
    pub async fn login(&self, login: &str, password: &str) -> (u16, Value) {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({"login": login, "password": password}),
        )
        .await
    }

    pub async fn create_room(&self, user: &User, name: &str, visibility: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/rooms",
                Some(&user.access),
                json!({"name": name, "visibility": visibility}),
            )
            .await;
        assert_eq!(status, 201, "create room {name}: {body}");
        body
    }

    pub async fn join_room(&self, user: &User, name: &str) {
        let (status, body) = self
            .post(
                &format!("/api/v1/rooms/{name}/join"),
                Some(&user.access),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{} joins {name}: {body}", user.username);
    }

    /// Post a message over REST; panics unless it is created. The stored message.
    pub async fn post_message(&self, user: &User, room: &str, content: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/v1/rooms/{room}/messages"),
                Some(&user.access),
                json!({"content": content}),
            )
            .await;
        assert_eq!(status, 201, "post to {room}: {body}");
        body
    }

    /// Every stored message seq of `room`, oldest first, page by page.
    pub async fn history_seqs(&self, token: &str, room: &str) -> Vec<i64> {
        let mut seqs: Vec<i64> = Vec::new();
        loop {
            let after = seqs.last().copied().unwrap_or(0);
            let (status, page) = self
                .get(
                    &format!("/api/v1/rooms/{room}/messages?limit=200&after_seq={after}"),
                    Some(token),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            seqs.extend(
                page["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|m| m["seq"].as_i64().expect("seq")),
            );
            if page["has_more"] != true {
                return seqs;
            }
        }
    }

    /// The `/readyz` status (0 if the request failed).
    pub async fn readyz(&self) -> u16 {
        match self
            .http
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(res) => res.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Wait until `/readyz` answers `status` ([`super::wait_until`]).
    pub async fn wait_readyz(&self, status: u16) {
        let what = format!("{}/readyz to answer {status}", self.base);
        super::wait_until(&what, async || {
            let got = self.readyz().await;
            if got == status { Ok(()) } else { Err(got) }
        })
        .await;
    }

    pub async fn wait_ready(&self) {
        self.wait_readyz(200).await;
    }
}

/// Seconds since the Unix epoch, the unit of a token's `exp`.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The access token `token`, with every claim as the server issued it (`sub`, `iss`, `aud`,
/// `sid`, `jti`, `typ`, …) but `exp`, re-signed with `secret` (the server's `JWT_SECRET`): a
/// token that expires when the test says, instead of one the test waits out.
pub fn expiring_at(token: &str, secret: &str, exp: i64) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let mut claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["exp"] = exp.into();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs")
}
