//! REST set-up: users (register, or log in when they already exist) and room
//! memberships (`PUT /api/v1/rooms/{name}`, join-or-create).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupReport {
    pub users: usize,
    pub registered: u64,
    pub logged_in: u64,
    pub users_secs: f64,
    pub memberships: usize,
    pub rooms_created: u64,
    pub memberships_secs: f64,
    pub retries_429: u64,
}

pub struct Setup {
    pub http: reqwest::Client,
    pub urls: Vec<String>,
    pub prefix: String,
    pub password: String,
    pub concurrency: usize,
}

pub fn username(prefix: &str, i: usize) -> String {
    format!("{prefix}_u{i}")
}

pub fn room_name(prefix: &str, j: usize) -> String {
    format!("{prefix}-r{j}")
}

/// Delay before retrying a 429/503: `Retry-After` seconds if given, else `fallback`.
fn retry_after(resp: &reqwest::Response, fallback: Duration) -> Duration {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.05, 30.0)))
        .unwrap_or(fallback)
}

const MAX_ATTEMPTS: u32 = 30;

#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    logged_in: AtomicU64,
    created: AtomicU64,
    retries: AtomicU64,
}

impl Setup {
    fn base(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// Returns one access token per user, index `i` for `<prefix>_u<i>`.
    pub async fn users(&self, n: usize, report: &mut SetupReport) -> Result<Vec<String>> {
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let mut tokens = vec![String::new(); n];
        let mut stream = futures_util::stream::iter(0..n)
            .map(|i| {
                let counters = counters.clone();
                async move { (i, self.user(i, &counters).await) }
            })
            .buffer_unordered(self.concurrency.max(1));
        let mut done = 0usize;
        let mut last_print = Instant::now();
        while let Some((i, res)) = stream.next().await {
            tokens[i] = res.with_context(|| format!("user {}", username(&self.prefix, i)))?;
            done += 1;
            if last_print.elapsed() >= Duration::from_secs(2) || done == n {
                last_print = Instant::now();
                eprintln!(
                    "  users {done}/{n} ({} registered, {} logged in) {:.1}s",
                    counters.registered.load(Ordering::Relaxed),
                    counters.logged_in.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        report.users = n;
        report.registered = counters.registered.load(Ordering::Relaxed);
        report.logged_in = counters.logged_in.load(Ordering::Relaxed);
        report.users_secs = started.elapsed().as_secs_f64();
        report.retries_429 += counters.retries.load(Ordering::Relaxed);
        Ok(tokens)
    }

    async fn user(&self, i: usize, c: &Counters) -> Result<String> {
        let name = username(&self.prefix, i);
        let base = self.base(i);
        let body = json!({
            "username": name,
            "email": format!("{name}@example.com"),
            "password": self.password,
        });
        for attempt in 0..MAX_ATTEMPTS {
            let resp = self
                .http
                .post(format!("{base}/api/v1/auth/register"))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {base}/api/v1/auth/register"))?;
            let status = resp.status().as_u16();
            match status {
                201 | 200 => {
                    let v: Value = resp.json().await.context("register response")?;
                    c.registered.fetch_add(1, Ordering::Relaxed);
                    return access_token(&v, "/tokens/access");
                }
                409 => return self.login(&name, base, c).await,
                429 | 503 => {
                    c.retries.fetch_add(1, Ordering::Relaxed);
                    let d = retry_after(&resp, backoff(attempt));
                    tokio::time::sleep(d).await;
                }
                _ => {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("register {name}: HTTP {status}: {}", truncate(&text));
                }
            }
        }
        bail!("register {name}: still rate limited after {MAX_ATTEMPTS} attempts")
    }

    async fn login(&self, name: &str, base: &str, c: &Counters) -> Result<String> {
        let body = json!({"login": name, "password": self.password});
        for attempt in 0..MAX_ATTEMPTS {
            let resp = self
                .http
                .post(format!("{base}/api/v1/auth/login"))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {base}/api/v1/auth/login"))?;
            let status = resp.status().as_u16();
            match status {
                200 => {
                    let v: Value = resp.json().await.context("login response")?;
                    c.logged_in.fetch_add(1, Ordering::Relaxed);
                    return access_token(&v, "/access");
                }
                401 => bail!(
                    "login {name}: 401 — the user exists with another password; use another --prefix or --password"
                ),
                429 | 503 => {
                    c.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(retry_after(&resp, backoff(attempt))).await;
                }
                _ => {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("login {name}: HTTP {status}: {}", truncate(&text));
                }
            }
        }
        bail!("login {name}: still rate limited after {MAX_ATTEMPTS} attempts")
    }

    /// Makes user `u` a member of room `r` for every `(u, r)` pair (deduplicated by the
    /// caller). Each room is first created by the first pair naming it, then the others
    /// join concurrently.
    pub async fn memberships(
        &self,
        tokens: &[String],
        pairs: &[(usize, usize)],
        report: &mut SetupReport,
    ) -> Result<()> {
        let started = Instant::now();
        let counters = Counters::default();
        let mut first_of_room: Vec<(usize, usize)> = Vec::new();
        let mut rest: Vec<(usize, usize)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &(u, r) in pairs {
            if seen.insert(r) {
                first_of_room.push((u, r));
            } else {
                rest.push((u, r));
            }
        }
        let total = pairs.len();
        let mut done = 0usize;
        let mut last_print = Instant::now();
        for batch in [first_of_room, rest] {
            let mut stream = futures_util::stream::iter(batch)
                .map(|(u, r)| {
                    let counters = &counters;
                    async move { self.put_room(&tokens[u], u + r, r, counters).await }
                })
                .buffer_unordered(self.concurrency.max(1) * 2);
            while let Some(res) = stream.next().await {
                res?;
                done += 1;
                if last_print.elapsed() >= Duration::from_secs(2) || done == total {
                    last_print = Instant::now();
                    eprintln!(
                        "  memberships {done}/{total} {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
        report.memberships = total;
        report.rooms_created = counters.created.load(Ordering::Relaxed);
        report.memberships_secs = started.elapsed().as_secs_f64();
        report.retries_429 += counters.retries.load(Ordering::Relaxed);
        Ok(())
    }

    async fn put_room(&self, token: &str, spread: usize, r: usize, c: &Counters) -> Result<()> {
        let name = room_name(&self.prefix, r);
        let base = self.base(spread);
        for attempt in 0..MAX_ATTEMPTS {
            let resp = self
                .http
                .put(format!("{base}/api/v1/rooms/{name}"))
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .with_context(|| format!("PUT {base}/api/v1/rooms/{name}"))?;
            let status = resp.status().as_u16();
            match status {
                201 => {
                    c.created.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                200 | 204 => return Ok(()),
                429 | 503 => {
                    c.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(retry_after(&resp, backoff(attempt))).await;
                }
                _ => {
                    let text = resp.text().await.unwrap_or_default();
                    bail!(
                        "PUT /api/v1/rooms/{name}: HTTP {status}: {}",
                        truncate(&text)
                    );
                }
            }
        }
        bail!("PUT /api/v1/rooms/{name}: still rate limited after {MAX_ATTEMPTS} attempts")
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

fn access_token(v: &Value, pointer: &str) -> Result<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            anyhow!(
                "no access token at {pointer} in {}",
                truncate(&v.to_string())
            )
        })
}

fn truncate(s: &str) -> String {
    if s.len() <= 300 {
        s.to_owned()
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// `http://host:port[/]` → `ws://host:port` (https → wss, though TLS is not built in).
pub fn ws_base(url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else if let Some(rest) = url.strip_prefix("https://") {
        Ok(format!("wss://{rest}"))
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(url.to_owned())
    } else {
        bail!("--url must start with http:// (got {url})")
    }
}

/// `ws://host:port` → `http://host:port`.
pub fn http_base(url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else if let Some(rest) = url.strip_prefix("ws://") {
        Ok(format!("http://{rest}"))
    } else if let Some(rest) = url.strip_prefix("wss://") {
        Ok(format!("https://{rest}"))
    } else {
        bail!("--url must start with http:// (got {url})")
    }
}

/// Names must fit both usernames (`[A-Za-z0-9_.-]{3,32}`) and room names
/// (`[a-z0-9_-]`, starting with a letter or digit, up to 64).
pub fn validate_prefix(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && p.len() <= 20
        && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        bail!("--prefix must be 1-20 of [a-z0-9_-], starting with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_mapping() {
        assert_eq!(
            ws_base("http://127.0.0.1:8080/").unwrap(),
            "ws://127.0.0.1:8080"
        );
        assert_eq!(ws_base("ws://h:1").unwrap(), "ws://h:1");
        assert!(ws_base("127.0.0.1:8080").is_err());
        assert_eq!(http_base("ws://h:1").unwrap(), "http://h:1");
        assert_eq!(http_base("http://h:1/").unwrap(), "http://h:1");
    }

    #[test]
    fn prefixes_and_names() {
        assert!(validate_prefix("bench").is_ok());
        assert!(validate_prefix("b-2_x").is_ok());
        assert!(validate_prefix("Bench").is_err());
        assert!(validate_prefix("-x").is_err());
        assert!(validate_prefix("").is_err());
        assert_eq!(username("bench", 3), "bench_u3");
        assert_eq!(room_name("bench", 7), "bench-r7");
    }
}
