//! Configuration options of docs/configuration.md, end to end: `ALLOWED_ORIGINS` (WebSocket
//! `Origin` check and CORS), `TRUST_PROXY_HEADERS` (the auth rate-limit key), `ADMIN_*` (the
//! first admin at start) and `REFRESH_TOKEN_TTL_SECS` (refresh-token expiry).

use clap::Parser;
use reqwest::{Method, header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::{dual_test, support::*};

const CHAT_ORIGIN: &str = "https://chat.example.com";
const ADMIN_ORIGIN: &str = "https://admin.example.com";

/// A test configuration whose `ALLOWED_ORIGINS` comes from the command line, the way an
/// operator writes it (a comma-separated list).
async fn app_with_origins(list: &str) -> TestApp {
    let db = fresh_database(Backend::Sqlite).await;
    let mut config = chat_server::Config::for_tests(&db);
    config.allowed_origins =
        chat_server::config::Cli::parse_from(["chat-server", "--allowed-origins", list])
            .config
            .allowed_origins;
    spawn_with(config).await
}

/// A WebSocket handshake with an optional `Origin`, as a browser (or a script) sends it.
async fn ws_with_origin(url: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().expect("websocket request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert(header::ORIGIN, o.parse().expect("origin header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

/// The same handshake request over plain HTTP, to read a refusal's status, headers and body.
async fn ws_handshake_http(app: &TestApp, path: &str, origin: &str) -> (u16, String, Value) {
    let res = app
        .http
        .get(app.url(path))
        .header(header::ORIGIN, origin)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("request sent");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, content_type, body)
}

async fn member_names(app: &TestApp, room: &str, token: &str) -> Vec<String> {
    let (status, body) = app
        .get(&format!("/api/v1/rooms/{room}/members"), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["user"]["username"].as_str().expect("username").to_owned())
        .collect()
}

fn header_str(res: &reqwest::Response, name: header::HeaderName) -> Option<String> {
    res.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii header").to_owned())
        .reduce(|a, b| format!("{a}, {b}"))
}

fn lists(value: Option<&str>, item: &str) -> bool {
    value.is_some_and(|v| {
        v.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(item))
    })
}

// ---------------------------------------------------------------------------------------------
// ALLOWED_ORIGINS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_upgrade_from_an_unlisted_origin_is_refused_with_403() {
    let app = app_with_origins(&format!("{CHAT_ORIGIN},{ADMIN_ORIGIN}")).await;
    let owner = app.register("origin_owner").await;
    let outsider = app.register("origin_outsider").await;
    app.create_room(&owner, "lobby", "public").await;
    let room_url = app.ws_url(&format!("/ws/rooms/lobby?token={}", outsider.access));
    let mux_url = app.ws_url(&format!("/ws?token={}", outsider.access));

    // A foreign site, and look-alikes of a listed origin: exact matches only.
    for origin in [
        "https://evil.example.com",
        "https://chat.example.com.evil.com",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "null",
    ] {
        assert_eq!(
            ws_with_origin(&room_url, Some(origin)).await.err(),
            Some(403),
            "room socket from {origin}"
        );
        assert_eq!(
            ws_with_origin(&mux_url, Some(origin)).await.err(),
            Some(403),
            "multiplexed socket from {origin}"
        );
    }

    // The refusal is plain HTTP in the error format of docs/protocol.md#errors.
    for path in [
        format!("/ws/rooms/lobby?token={}", outsider.access),
        format!("/ws?token={}", outsider.access),
    ] {
        let (status, content_type, body) =
            ws_handshake_http(&app, &path, "https://evil.example.com").await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        assert_eq!(body["error"]["code"], "forbidden", "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    // Refused before anything happened: connecting to a public room joins it, but not here.
    assert_eq!(
        member_names(&app, "lobby", &owner.access).await,
        vec!["origin_owner".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_upgrade_from_a_listed_origin_or_without_origin_is_accepted() {
    let app = app_with_origins(&format!("{CHAT_ORIGIN},{ADMIN_ORIGIN}")).await;
    let owner = app.register("listed_owner").await;
    let browser = app.register("listed_browser").await;
    let script = app.register("listed_script").await;
    app.create_room(&owner, "plaza", "public").await;

    // Every listed origin, not only the first.
    for (user, origin) in [(&owner, CHAT_ORIGIN), (&browser, ADMIN_ORIGIN)] {
        let url = app.ws_url(&format!("/ws/rooms/plaza?token={}", user.access));
        let mut ws = ws_with_origin(&url, Some(origin))
            .await
            .unwrap_or_else(|s| panic!("{origin} refused with {s}"));
        let ready = expect_ready(&mut ws).await;
        assert_eq!(ready["room"]["name"], "plaza", "{ready}");
        let url = app.ws_url(&format!("/ws?token={}", user.access));
        let mut mux = ws_with_origin(&url, Some(origin))
            .await
            .unwrap_or_else(|s| panic!("{origin} refused on /ws with {s}"));
        expect_ready(&mut mux).await;
    }

    // A non-browser client sends no Origin at all: accepted (and it joins the public room).
    let url = app.ws_url(&format!("/ws/rooms/plaza?token={}", script.access));
    let mut ws = ws_with_origin(&url, None)
        .await
        .unwrap_or_else(|s| panic!("no Origin refused with {s}"));
    expect_ready(&mut ws).await;
    assert!(
        member_names(&app, "plaza", &owner.access)
            .await
            .contains(&"listed_script".to_owned())
    );

    // A listed origin is no substitute for a token.
    let url = app.ws_url("/ws/rooms/plaza?token=garbage");
    assert_eq!(
        ws_with_origin(&url, Some(CHAT_ORIGIN)).await.err(),
        Some(401)
    );
}

/// `origin` opens a socket in a new public room of a new user, and reads that room over REST:
/// the `Access-Control-Allow-Origin` it was given.
async fn accepted_origin(app: &TestApp, user: &str, origin: &str) -> Option<String> {
    let user = app.register(user).await;
    let room = format!("origin-room-{}", user.id);
    app.create_room(&user, &room, "public").await;
    let url = app.ws_url(&format!("/ws/rooms/{room}?token={}", user.access));
    let mut ws = ws_with_origin(&url, Some(origin))
        .await
        .unwrap_or_else(|s| panic!("{origin} refused with {s}"));
    expect_ready(&mut ws).await;
    let res = app
        .http
        .get(app.url(&format!("/api/v1/rooms/{room}")))
        .bearer_auth(&user.access)
        .header(header::ORIGIN, origin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    header_str(&res, header::ACCESS_CONTROL_ALLOW_ORIGIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_is_accepted_when_allowed_origins_is_unset() {
    let app = spawn_app(Backend::Sqlite).await;
    assert!(app.state.config().allowed_origins.is_empty());
    let acao = accepted_origin(&app, "anyorigin", "https://anywhere.example.net").await;
    assert_eq!(acao.as_deref(), Some("*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_allows_any_origin_and_spaces_around_entries_are_ignored() {
    // `*` used to reach tower-http's origin list, which panics on it.
    let app = app_with_origins("*").await;
    let acao = accepted_origin(&app, "star_user", "https://anywhere.example.net").await;
    assert_eq!(acao.as_deref(), Some("*"));

    // "a, b" as an operator types it: the second entry is `b`, not ` b`.
    let app = app_with_origins(&format!("{CHAT_ORIGIN}, {ADMIN_ORIGIN}")).await;
    let acao = accepted_origin(&app, "spaced_user", ADMIN_ORIGIN).await;
    assert_eq!(acao.as_deref(), Some(ADMIN_ORIGIN));
    let user = app.register("spaced_other").await;
    let url = app.ws_url(&format!("/ws?token={}", user.access));
    assert_eq!(
        ws_with_origin(&url, Some("https://evil.example.com"))
            .await
            .err(),
        Some(403)
    );
}

#[test]
fn origins_that_can_never_match_are_refused_at_start() {
    let check = |list: &str| {
        let mut config =
            chat_server::config::Cli::parse_from(["chat-server", "--allowed-origins", list]).config;
        config.database_url = "sqlite://unused.db".to_owned().into();
        config.validate()
    };
    assert!(check("https://chat.example.com, https://admin.example.com:8443").is_ok());
    assert!(check("*").is_ok());
    for bad in [
        "https://chat.example.com/",
        "https://a.example,,https://b.example",
    ] {
        let err = check(bad).expect_err(bad).to_string();
        assert!(err.contains("ALLOWED_ORIGINS"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_are_given_only_to_allowed_origins() {
    let app = app_with_origins(&format!("{CHAT_ORIGIN},{ADMIN_ORIGIN}")).await;
    let user = app.register("cors_user").await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, app.url("/api/v1/rooms"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .send()
    };

    // Preflight from listed origins: the origin is echoed with the methods and headers.
    for origin in [CHAT_ORIGIN, ADMIN_ORIGIN] {
        let res = preflight(origin).await.unwrap();
        assert!(res.status().is_success(), "{origin}: {}", res.status());
        assert_eq!(
            header_str(&res, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some(origin)
        );
        let methods = header_str(&res, header::ACCESS_CONTROL_ALLOW_METHODS);
        for m in ["GET", "POST", "PATCH", "DELETE"] {
            assert!(lists(methods.as_deref(), m), "{m} not in {methods:?}");
        }
        let headers = header_str(&res, header::ACCESS_CONTROL_ALLOW_HEADERS);
        for h in ["authorization", "content-type"] {
            assert!(lists(headers.as_deref(), h), "{h} not in {headers:?}");
        }
        // Responses differ by Origin: caches must know.
        assert!(
            lists(header_str(&res, header::VARY).as_deref(), "origin"),
            "{:?}",
            res.headers()
        );
    }

    // Preflight from an unlisted origin: no permission granted.
    let res = preflight("https://evil.example.com").await.unwrap();
    assert!(
        res.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none(),
        "{:?}",
        res.headers()
    );

    // Actual requests: the listed origin may read the response, the other may not.
    let (status, _) = app
        .post(
            "/api/v1/rooms",
            Some(&user.access),
            json!({"name": "cors-room", "visibility": "public"}),
        )
        .await;
    assert_eq!(status, 201);
    for (origin, allowed) in [
        (CHAT_ORIGIN, true),
        (ADMIN_ORIGIN, true),
        ("https://evil.example.com", false),
    ] {
        let res = app
            .http
            .get(app.url("/api/v1/rooms/cors-room"))
            .bearer_auth(&user.access)
            .header(header::ORIGIN, origin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{origin}");
        let acao = header_str(&res, header::ACCESS_CONTROL_ALLOW_ORIGIN);
        if allowed {
            assert_eq!(acao.as_deref(), Some(origin));
        } else {
            assert_eq!(acao, None, "{origin}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TRUST_PROXY_HEADERS

async fn auth_attempt(app: &TestApp, path: &str, body: Value, xff: Option<&str>) -> (u16, Value) {
    let mut req = app.http.post(app.url(path)).json(&body);
    if let Some(v) = xff {
        req = req.header("x-forwarded-for", v);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    if status == 429 {
        let retry = res
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
    }
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn login_from(app: &TestApp, xff: Option<&str>) -> u16 {
    let (status, body) = auth_attempt(
        app,
        "/api/v1/auth/login",
        json!({"login": "nobody", "password": "wrong-password"}),
        xff,
    )
    .await;
    match status {
        401 => assert_eq!(body["error"]["code"], "invalid_credentials", "{body}"),
        429 => assert_eq!(body["error"]["code"], "rate_limited", "{body}"),
        other => panic!("login: unexpected {other} {body}"),
    }
    status
}

async fn register_from(app: &TestApp, username: &str, xff: Option<&str>) -> u16 {
    let (status, body) = auth_attempt(
        app,
        "/api/v1/auth/register",
        json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
        xff,
    )
    .await;
    assert!(matches!(status, 201 | 429), "register: {status} {body}");
    status
}

fn rate_limited_app_config(db: &str, trust_proxy_headers: bool) -> chat_server::Config {
    let mut config = chat_server::Config::for_tests(db);
    config.auth_rate_per_min = 2;
    config.trust_proxy_headers = trust_proxy_headers;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_forwarded_for_is_the_auth_rate_limit_key() {
    let db = fresh_database(Backend::Sqlite).await;
    let app = spawn_with(rate_limited_app_config(&db, true)).await;

    // One client behind the proxy uses up its quota (login and register share it).
    let a = Some("203.0.113.7");
    assert_eq!(login_from(&app, a).await, 401);
    assert_eq!(login_from(&app, a).await, 401);
    assert_eq!(login_from(&app, a).await, 429);
    assert_eq!(register_from(&app, "proxied_a", a).await, 429);

    // Another client behind the same proxy (same peer address) has its own quota.
    let b = Some("203.0.113.8");
    assert_eq!(register_from(&app, "proxied_b", b).await, 201);
    assert_eq!(login_from(&app, b).await, 401);
    assert_eq!(login_from(&app, b).await, 429);
    let v6 = Some("2001:db8::1");
    assert_eq!(login_from(&app, v6).await, 401);

    // Requests without the header are keyed on the peer address, a quota of its own...
    assert_eq!(login_from(&app, None).await, 401);
    // ...which an unparseable header falls back to as well.
    assert_eq!(login_from(&app, Some("not-an-address")).await, 401);
    assert_eq!(login_from(&app, None).await, 429);
    assert_eq!(login_from(&app, Some("not-an-address")).await, 429);
    // The first client is still limited.
    assert_eq!(login_from(&app, a).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_forwarded_for_keys_on_the_address_the_proxy_appended() {
    let db = fresh_database(Backend::Sqlite).await;
    let app = spawn_with(rate_limited_app_config(&db, true)).await;
    // What nginx's `$proxy_add_x_forwarded_for` forwards for a client at 203.0.113.7 that sends
    // its own, different X-Forwarded-For each time: only the last entry is the proxy's.
    let mut statuses = Vec::new();
    for i in 1..=4 {
        let header = format!("198.51.100.{i}, 203.0.113.7");
        statuses.push(login_from(&app, Some(&header)).await);
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    // The same client without a forged entry is the same key.
    assert_eq!(login_from(&app, Some("203.0.113.7")).await, 429);
    // A forged entry naming another client does not use up that client's quota.
    assert_eq!(login_from(&app, Some("203.0.113.9")).await, 401);
}

/// An IPv6 host usually holds a whole /64: addresses of one /64 share one quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_the_limit_of_their_64() {
    let db = fresh_database(Backend::Sqlite).await;
    let app = spawn_with(rate_limited_app_config(&db, true)).await;
    assert_eq!(login_from(&app, Some("2001:db8:1:2::1")).await, 401);
    assert_eq!(login_from(&app, Some("2001:db8:1:2:ffff::9")).await, 401);
    assert_eq!(
        login_from(&app, Some("2001:db8:1:2:abcd:ef01:2345:6789")).await,
        429,
        "a third address of the same /64 is the same client"
    );
    assert_eq!(
        login_from(&app, Some("2001:db8:1:3::1")).await,
        401,
        "the next /64 is another client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarded_for_cannot_dodge_the_auth_rate_limit() {
    let db = fresh_database(Backend::Sqlite).await;
    let app = spawn_with(rate_limited_app_config(&db, false)).await;
    assert!(!app.state.config().trust_proxy_headers);

    // A new X-Forwarded-For on every attempt: all of them count against the peer address.
    assert_eq!(login_from(&app, Some("203.0.113.1")).await, 401);
    assert_eq!(login_from(&app, Some("203.0.113.2")).await, 401);
    assert_eq!(login_from(&app, Some("203.0.113.3")).await, 429);
    assert_eq!(
        register_from(&app, "spoofer", Some("198.51.100.4")).await,
        429
    );
    assert_eq!(login_from(&app, None).await, 429);
}

// ---------------------------------------------------------------------------------------------
// ADMIN_USERNAME / ADMIN_EMAIL / ADMIN_PASSWORD

fn with_admin(
    mut config: chat_server::Config,
    username: &str,
    password: &str,
) -> chat_server::Config {
    config.admin_username = Some(username.to_owned());
    config.admin_email = Some(format!("{}@admins.example.com", username.to_lowercase()));
    config.admin_password = Some(password.to_owned().into());
    config
}

fn roles(user: &Value) -> Vec<String> {
    user["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("roles in {user}"))
        .iter()
        .map(|r| r.as_str().expect("role").to_owned())
        .collect()
}

/// The admin-only `PATCH /api/v1/users/{id}` works for `token`.
async fn can_set_roles(app: &TestApp, token: &str, target: i64) -> u16 {
    let (status, body) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{target}"),
            Some(token),
            Some(json!({"roles": ["user"]})),
        )
        .await;
    assert!(matches!(status, 200 | 403), "{status} {body}");
    status
}

dual_test!(admin_from_the_environment_exists_at_start, |b| async move {
    let db = fresh_database(b).await;
    let app = spawn_with(with_admin(
        chat_server::Config::for_tests(&db),
        "root_admin",
        "admin-password-1",
    ))
    .await;

    let (status, body) = app.login("root_admin", "admin-password-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(roles(&body["user"]), ["user", "admin"]);
    assert_eq!(body["user"]["email"], "root_admin@admins.example.com");
    let admin_token = body["access"].as_str().unwrap().to_owned();
    // By email too, and the role is in the profile.
    let (status, _) = app
        .login("root_admin@admins.example.com", "admin-password-1")
        .await;
    assert_eq!(status, 200);
    let (_, me) = app.get("/api/v1/users/me", Some(&admin_token)).await;
    assert!(roles(&me).contains(&"admin".to_owned()), "{me}");
    let (status, _) = app.login("root_admin", "wrong-password").await;
    assert_eq!(status, 401);

    // What only an admin may do: change someone's roles, see their email, delete them.
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    assert_eq!(can_set_roles(&app, &carol.access, dave.id).await, 403);
    assert_eq!(can_set_roles(&app, &admin_token, dave.id).await, 200);
    let (_, seen) = app
        .get(&format!("/api/v1/users/{}", dave.id), Some(&admin_token))
        .await;
    assert_eq!(seen["email"], "dave@example.com", "{seen}");
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{}", dave.id),
            Some(&carol.access),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{}", dave.id),
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.login("dave", PASSWORD).await;
    assert_eq!(status, 401);
});

dual_test!(a_demoted_admin_loses_the_rights_at_once, |b| async move {
    let db = fresh_database(b).await;
    let app = spawn_with(with_admin(
        chat_server::Config::for_tests(&db),
        "chief",
        "admin-password-2",
    ))
    .await;
    let (status, body) = app.login("chief", "admin-password-2").await;
    assert_eq!(status, 200, "{body}");
    let chief = body["access"].as_str().unwrap().to_owned();
    let deputy = app.register("deputy").await;
    let other = app.register("other").await;

    // Promoted (each role once, in the order given), the deputy logs in again as an admin.
    let (status, body) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{}", deputy.id),
            Some(&chief),
            Some(json!({"roles": ["admin", "user", "admin"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(roles(&body), ["admin", "user"]);
    let (status, body) = app.login("deputy", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let deputy_admin = body["access"].as_str().unwrap().to_owned();
    assert_eq!(can_set_roles(&app, &deputy_admin, other.id).await, 200);

    // Demoted: the token that still says "admin" no longer carries the rights, and cannot
    // promote its owner back.
    let (status, _) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{}", deputy.id),
            Some(&chief),
            Some(json!({"roles": ["user"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(can_set_roles(&app, &deputy_admin, other.id).await, 403);
    let (status, _) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{}", deputy.id),
            Some(&deputy_admin),
            Some(json!({"roles": ["user", "admin"]})),
        )
        .await;
    assert_eq!(status, 403);
    let (_, me) = app.get("/api/v1/users/me", Some(&deputy_admin)).await;
    assert_eq!(roles(&me), ["user"], "{me}");
    // The real admin is unaffected.
    assert_eq!(can_set_roles(&app, &chief, other.id).await, 200);
});

dual_test!(
    admin_from_the_environment_promotes_an_existing_user_only_with_its_credentials,
    |b| async move {
        let db = fresh_database(b).await;
        let before = spawn_with(chat_server::Config::for_tests(&db)).await;
        let boss = before.register("boss").await;
        let other = before.register("other").await;
        let (status, body) = before.login("boss", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(roles(&body["user"]), ["user"]);
        assert_eq!(can_set_roles(&before, &boss.access, other.id).await, 403);
        drop(before);

        // Someone registered the name first: ADMIN_* with another email or password refuses
        // to start (one readable error), and the squatter stays a plain user.
        for (email, password) in [
            ("boss@admins.example.com", PASSWORD),
            ("boss@example.com", "admin-password-2"),
        ] {
            let mut config = chat_server::Config::for_tests(&db);
            config.admin_username = Some("BOSS".into());
            config.admin_email = Some(email.into());
            config.admin_password = Some(password.to_owned().into());
            let refused =
                chat_server::AppState::build(config, tokio_util::sync::CancellationToken::new())
                    .await
                    .err()
                    .expect("start refused");
            assert!(
                refused.to_string().contains("was not made admin"),
                "{refused:#}"
            );
        }
        let app = spawn_with(chat_server::Config::for_tests(&db)).await;
        let (_, body) = app.login("boss", PASSWORD).await;
        assert_eq!(roles(&body["user"]), ["user"], "not promoted");
        drop(app);

        // The account's own email (any case) and password: promoted, not a new account.
        let mut config = chat_server::Config::for_tests(&db);
        config.admin_username = Some("BOSS".into());
        config.admin_email = Some("Boss@Example.com".into());
        config.admin_password = Some(PASSWORD.to_owned().into());
        let app = spawn_with(config).await;
        let (status, body) = app.login("boss", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"]["id"], boss.id, "promoted, not a new account");
        assert_eq!(body["user"]["username"], "boss");
        assert_eq!(roles(&body["user"]), ["user", "admin"]);
        let token = body["access"].as_str().unwrap().to_owned();
        assert_eq!(can_set_roles(&app, &token, other.id).await, 200);
        // Still one account named boss.
        let (_, page) = app.get("/api/v1/users?q=boss", Some(&token)).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    }
);

dual_test!(
    admin_from_the_environment_is_idempotent_across_restarts,
    |b| async move {
        let db = fresh_database(b).await;
        let config = with_admin(
            chat_server::Config::for_tests(&db),
            "ops_admin",
            "admin-password-3",
        );
        let first = spawn_with(config.clone()).await;
        let (status, body) = first.login("ops_admin", "admin-password-3").await;
        assert_eq!(status, 200, "{body}");
        let id = body["user"]["id"].as_i64().unwrap();
        drop(first);

        for _ in 0..2 {
            let app = spawn_with(config.clone()).await;
            let (status, body) = app.login("ops_admin", "admin-password-3").await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["user"]["id"], id);
            assert_eq!(roles(&body["user"]), ["user", "admin"], "no duplicate role");
            let token = body["access"].as_str().unwrap().to_owned();
            let (_, page) = app.get("/api/v1/users?q=ops_admin", Some(&token)).await;
            let items = page["items"].as_array().unwrap();
            assert_eq!(items.len(), 1, "{page}");
            assert_eq!(items[0]["id"], id);
        }
    }
);

// ---------------------------------------------------------------------------------------------
// REFRESH_TOKEN_TTL_SECS

/// The stored session of refresh token `token`, found by its hash as the server finds it.
async fn session_of(db: &sea_orm::DatabaseConnection, token: &str) -> entity::session::Model {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    entity::session::Entity::find()
        .filter(entity::session::Column::TokenHash.eq(hash))
        .one(db)
        .await
        .expect("read sessions")
        .expect("the token's session is stored")
}

dual_test!(refresh_token_past_its_lifetime_is_refused, |b| async move {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    const TTL: i64 = 3_600;
    let db_url = fresh_database(b).await;
    let mut config = chat_server::Config::for_tests(&db_url);
    config.refresh_token_ttl_secs = TTL.unsigned_abs();
    let app = spawn_with(config).await;
    let user = app.register("shortlived").await;

    // Within its lifetime a refresh token rotates as usual.
    let (status, rotated) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": user.refresh}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let latest = rotated["refresh"].as_str().unwrap().to_owned();

    // The option sets the lifetime of the stored session...
    let db = sea_orm::Database::connect(&db_url).await.expect("db");
    let session = session_of(&db, &latest).await;
    assert_eq!(
        (session.expires_at - session.created_at).num_seconds(),
        TTL,
        "REFRESH_TOKEN_TTL_SECS is the session's lifetime"
    );
    // ... which is over: the session moved back by its lifetime and a second, as if issued
    // then (the server reads the clock and the row, nothing is waited out).
    let shift = chrono::Duration::seconds(TTL + 1);
    entity::session::ActiveModel {
        id: Set(session.id),
        created_at: Set(session.created_at - shift),
        expires_at: Set(session.expires_at - shift),
        ..Default::default()
    }
    .update(&db)
    .await
    .expect("age the session");

    // Past it: 401 `invalid_token`, in the error format.
    let (status, body) = app
        .post("/api/v1/auth/refresh", None, json!({"refresh": latest}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    // Still refused on a second try: the expired token was not rotated meanwhile.
    let (status, _) = app
        .post("/api/v1/auth/refresh", None, json!({"refresh": latest}))
        .await;
    assert_eq!(status, 401);

    // The access token has its own lifetime (15 min) and still works; a new login gets a
    // fresh refresh token that rotates.
    let access = rotated["access"].as_str().unwrap();
    let (status, _) = app.get("/api/v1/users/me", Some(access)).await;
    assert_eq!(status, 200);
    let (status, body) = app.login("shortlived", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": body["refresh"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
});

/// `chat-server admin create` naming an account someone else registered: refused with one
/// `error:` line, nothing promoted; with the account's own email and password it promotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_refuses_a_squatted_name() {
    let db = fresh_database(Backend::Sqlite).await;
    let app = spawn_with(chat_server::Config::for_tests(&db)).await;
    app.register("squat").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let admin_create = |email: &str, password: &str| {
        command(env!("CARGO_BIN_EXE_chat-server"), dir.path())
            .env("DATABASE_URL", &db)
            .env("ADMIN_CREATE_PASSWORD", password)
            .args(["admin", "create", "--username", "squat", "--email", email])
            .output()
            .expect("chat-server runs")
    };
    let out = admin_create("ops@example.com", "operator-password");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("was not made admin"), "{stderr}");
    let (_, body) = app.login("squat", PASSWORD).await;
    assert_eq!(roles(&body["user"]), ["user"], "not promoted");

    let out = admin_create("squat@example.com", PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = app.login("squat", PASSWORD).await;
    assert_eq!(roles(&body["user"]), ["user", "admin"]);
}
