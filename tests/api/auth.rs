//! docs/protocol.md#authentication: register, login, refresh, logout, and token validation.

use base64::Engine;
use serde_json::{Value, json};

use crate::{dual_test, support::*};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

dual_test!(register_returns_user_and_tokens, |b| async move {
    let app = spawn_app(b).await;
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "Alice", "email": "alice@example.com", "password": "s3cret-password", "password_confirm": "s3cret-password", "first_name": "Alice"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["username"], "Alice");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["user"]["roles"], json!(["user"]));
    assert_eq!(body["tokens"]["token_type"], "Bearer");
    assert_eq!(body["tokens"]["expires_in"], 900);
    assert!(body["user"]["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["user"].get("password_hash").is_none());
    let (status, me) = app
        .get("/api/v1/users/me", body["tokens"]["access"].as_str())
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "Alice");
});

dual_test!(duplicate_username_in_other_case_is_409, |b| async move {
    let app = spawn_app(b).await;
    app.register("bob").await;
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "BOB", "email": "other@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert!(body["error"]["fields"]["username"].is_array());
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "bobby", "email": "BOB@EXAMPLE.COM", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 409);
    assert!(body["error"]["fields"]["email"].is_array());
});

dual_test!(invalid_fields_are_all_listed, |b| async move {
    let app = spawn_app(b).await;
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "a b", "email": "not-an-email", "password": "short", "password_confirm": "other"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    for field in ["username", "email", "password", "password_confirm"] {
        assert!(
            body["error"]["fields"][field].is_array(),
            "{field} missing in {body}"
        );
    }
    let (status, body) = app.post("/api/v1/auth/register", None, json!({})).await;
    assert_eq!(status, 422);
    for field in ["username", "email", "password"] {
        assert!(
            body["error"]["fields"][field].is_array(),
            "{field} missing in {body}"
        );
    }
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "ab", "email": "x@example.com", "password": "x".repeat(129)}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["fields"]["username"].is_array()
            && body["error"]["fields"]["password"].is_array()
    );
});

dual_test!(malformed_requests_get_the_error_shape, |b| async move {
    let app = spawn_app(b).await;
    let res = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");

    let res = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unsupported_media_type"
    );

    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": 5, "email": "a@b.co", "password": "password1"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["fields"]["username"].is_array(), "{body}");

    let big = "x".repeat(70 * 1024);
    let res = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"login":"{big}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    let user = app.register("carol").await;
    let (status, body) = app
        .get("/api/v1/users/not-a-number", Some(&user.access))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["code"].is_string());
    let (status, body) = app.get("/api/v1/nowhere", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = app
        .send(reqwest::Method::DELETE, "/api/v1/auth/login", None, None)
        .await;
    assert_eq!(status, 405);
    assert!(body["error"]["code"].is_string());
});

dual_test!(
    login_by_username_or_email_and_uniform_failures,
    |b| async move {
        let app = spawn_app(b).await;
        app.register("dave").await;
        for body in [
            json!({"login": "dave", "password": "correct horse battery"}),
            json!({"login": "DAVE@example.com", "password": "correct horse battery"}),
            json!({"username": "Dave", "password": "correct horse battery"}),
            json!({"email": "dave@example.com", "password": "correct horse battery"}),
        ] {
            let (status, res) = app.post("/api/v1/auth/login", None, body).await;
            assert_eq!(status, 200, "{res}");
            assert!(res["access"].is_string() && res["refresh"].is_string());
            assert_eq!(res["token_type"], "Bearer");
            assert_eq!(res["user"]["username"], "dave");
        }
        let (s1, wrong_pw) = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"login": "dave", "password": "wrong password"}),
            )
            .await;
        let (s2, no_user) = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"login": "nobody", "password": "wrong password"}),
            )
            .await;
        assert_eq!((s1, s2), (401, 401));
        assert_eq!(wrong_pw["error"]["code"], "invalid_credentials");
        assert_eq!(wrong_pw, no_user);
        let (status, body) = app.post("/api/v1/auth/login", None, json!({})).await;
        assert_eq!(status, 422);
        assert!(
            body["error"]["fields"]["login"].is_array()
                && body["error"]["fields"]["password"].is_array()
        );
    }
);

dual_test!(
    refresh_rotates_and_reuse_revokes_the_family,
    |b| async move {
        let app = spawn_app(b).await;
        let user = app.register("erin").await;
        let (status, first) = app
            .post(
                "/api/v1/auth/refresh",
                None,
                json!({"refresh": user.refresh}),
            )
            .await;
        assert_eq!(status, 200, "{first}");
        assert_ne!(first["refresh"], json!(user.refresh));
        let newest_access = first["access"].as_str().unwrap().to_owned();
        let (status, second) = app
            .post(
                "/api/v1/auth/refresh",
                None,
                json!({"refresh": first["refresh"]}),
            )
            .await;
        assert_eq!(status, 200);
        // The first token was already rotated: theft. The whole family is revoked.
        let (status, body) = app
            .post(
                "/api/v1/auth/refresh",
                None,
                json!({"refresh": user.refresh}),
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "invalid_token");
        let (status, _) = app
            .post(
                "/api/v1/auth/refresh",
                None,
                json!({"refresh": second["refresh"]}),
            )
            .await;
        assert_eq!(
            status, 401,
            "the newest refresh token must die with its family"
        );
        let (status, _) = app.get("/api/v1/users/me", Some(&newest_access)).await;
        assert_eq!(
            status, 401,
            "access tokens of a revoked family stop working"
        );
        let (status, _) = app
            .post("/api/v1/auth/refresh", None, json!({"refresh": "garbage"}))
            .await;
        assert_eq!(status, 401);
        let (status, body) = app.post("/api/v1/auth/refresh", None, json!({})).await;
        assert_eq!(status, 422, "{body}");
    }
);

dual_test!(forged_tokens_are_rejected, |b| async move {
    let app = spawn_app(b).await;
    let user = app.register("frank").await;
    let parts: Vec<&str> = user.access.split('.').collect();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["typ"], "access");
    for key in ["sub", "name", "roles", "iat", "exp", "iss", "aud", "jti"] {
        assert!(claims.get(key).is_some(), "claim {key}");
    }
    // alg: none
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    // tampered claims, original signature
    let mut admin = claims.clone();
    admin["roles"] = json!(["user", "admin"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(&admin), parts[2]);
    // a refresh token presented as an access token
    let refresh = user.refresh.clone();
    for token in [
        none.as_str(),
        tampered.as_str(),
        refresh.as_str(),
        "not.a.jwt",
    ] {
        let (status, body) = app.get("/api/v1/users/me", Some(token)).await;
        assert_eq!(status, 401, "{token}: {body}");
    }
    let (status, body) = app.get("/api/v1/users/me", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
});

dual_test!(
    wrong_issuer_audience_type_or_expiry_are_rejected,
    |b| async move {
        let app = spawn_app(b).await;
        let user = app.register("gina").await;
        let secret = b"test-secret-test-secret-test-secret";
        let now = chrono::Utc::now().timestamp();
        let base = json!({"sub": user.id.to_string(), "name": "gina", "roles": ["user"], "iat": now, "exp": now + 600,
        "iss": "chat-server", "aud": "chat-clients", "jti": "j1", "typ": "access", "sid": "s1"});
        let sign = |claims: &Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let (status, _) = app.get("/api/v1/users/me", Some(&sign(&base))).await;
        assert_eq!(status, 200, "a correctly signed token is accepted");
        for (key, value) in [
            ("iss", json!("evil")),
            ("aud", json!("elsewhere")),
            ("typ", json!("refresh")),
            ("exp", json!(now - 120)),
        ] {
            let mut claims = base.clone();
            claims[key] = value;
            let (status, _) = app.get("/api/v1/users/me", Some(&sign(&claims))).await;
            assert_eq!(status, 401, "bad {key}");
        }
        let hs512 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
            &base,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap();
        let (status, _) = app.get("/api/v1/users/me", Some(&hs512)).await;
        assert_eq!(status, 401, "another algorithm");
    }
);

dual_test!(logout_revokes_session_and_access_token, |b| async move {
    let app = spawn_app(b).await;
    let user = app.register("hank").await;
    let (status, _) = app
        .post(
            "/api/v1/auth/logout",
            Some(&user.access),
            json!({"refresh": user.refresh}),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/v1/users/me", Some(&user.access)).await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": user.refresh}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = app.post("/api/v1/auth/logout", None, json!({})).await;
    assert_eq!(status, 401);

    // `all`: every session of the user ends; an empty body is fine.
    let (status, s1) = app.login("hank", PASSWORD).await;
    assert_eq!(status, 200, "{s1}");
    let (status, s2) = app.login("hank", PASSWORD).await;
    assert_eq!(status, 200, "{s2}");
    let res = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(s1["access"].as_str().unwrap())
        .header("content-type", "application/json")
        .body(r#"{"all": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (status, _) = app.get("/api/v1/users/me", s2["access"].as_str()).await;
    assert_eq!(status, 401, "other sessions' access tokens are revoked");
    let (status, _) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": s2["refresh"]}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, s3) = app.login("hank", PASSWORD).await;
    assert_eq!(status, 200, "{s3}");
    let res = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(s3["access"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "logout without a body");
});

#[tokio::test]
async fn login_is_rate_limited_per_address() {
    let db = fresh_database(Backend::Sqlite).await;
    let mut config = chat_server::Config::for_tests(&db);
    config.auth_rate_per_min = 3;
    let app = spawn_with(config).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = app
            .http
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"login": "x", "password": "yyyyyyyy"}))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().get("retry-after").is_some());
            assert_eq!(
                res.json::<Value>().await.unwrap()["error"]["code"],
                "rate_limited"
            );
        }
    }
    assert_eq!(&statuses[..3], &[401, 401, 401]);
    assert_eq!(statuses[4], 429);
}
