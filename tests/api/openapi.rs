//! What the OpenAPI document calls valid, the server accepts ("the API document tells
//! the truth"). Each test here is a request schemathesis (`tests/openapi/run.sh`, check
//! `positive_data_acceptance`) found refused as malformed (400) although the document allows
//! it; each failed before its fix.

use serde_json::{Value, json};

use crate::support::*;

/// A raw JSON body, exactly as given.
async fn send_raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, Value) {
    let res = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `PUT /rooms/{name}` and `POST /auth/logout` take an optional body, documented as the
/// request object or `null`: a JSON `null` is no body, not a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_body_may_be_json_null() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = app.register("null_body").await;

    let (status, body) = send_raw(
        &app,
        reqwest::Method::PUT,
        "/api/v1/rooms/null-body",
        &user.access,
        "null",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "null-body");
    let (status, body) = send_raw(
        &app,
        reqwest::Method::PUT,
        "/api/v1/rooms/null-body",
        &user.access,
        " null ",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Anything else that is not the object is still a 400.
    let (status, body) = send_raw(
        &app,
        reqwest::Method::PUT,
        "/api/v1/rooms/null-body",
        &user.access,
        "false",
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = send_raw(
        &app,
        reqwest::Method::POST,
        "/api/v1/auth/logout",
        &user.access,
        "null",
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(app.get("/api/v1/users/me", Some(&user.access)).await.0, 401);
}

/// JSON has one number type and JSON Schema's `integer` admits `2.0`: an integral number is an
/// integer however it is written. A fraction is still a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integral_number_written_with_a_fraction_is_an_integer() {
    let app = spawn_app(Backend::Sqlite).await;
    let owner = app.register("int_owner").await;
    let guest = app.register("int_guest").await;
    app.create_room(&owner, "int-room", "private").await;
    let path = "/api/v1/rooms/int-room/members";

    let (status, body) = send_raw(
        &app,
        reqwest::Method::POST,
        path,
        &owner.access,
        &format!(r#"{{"user_id": {}.5}}"#, guest.id),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["fields"]["user_id"].is_array(), "{body}");
    let (status, body) = send_raw(
        &app,
        reqwest::Method::POST,
        path,
        &owner.access,
        r#"{"user_id": 1e300}"#,
    )
    .await;
    assert_eq!(status, 400, "out of range: {body}");

    let (status, body) = send_raw(
        &app,
        reqwest::Method::POST,
        path,
        &owner.access,
        &format!(r#"{{"user_id": {}.0}}"#, guest.id),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["id"], guest.id);
    let (status, body) = app.get("/api/v1/rooms/int-room", Some(&guest.access)).await;
    assert_eq!(status, 200, "the guest is a member now: {body}");
}

/// `cursor` is any string in the document (it is opaque): one this server did not issue is a
/// value the handler refuses (422 on `cursor`), not a malformed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_server_did_not_issue_is_a_422() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = app.register("cursor_user").await;
    app.create_room(&user, "cursor-room", "public").await;
    for list in ["/api/v1/users", "/api/v1/rooms/cursor-room/members"] {
        for cursor in ["abc", "%C3%A9", "99999999999999999999"] {
            let (status, body) = app
                .get(&format!("{list}?cursor={cursor}"), Some(&user.access))
                .await;
            assert_eq!(status, 422, "{list} {cursor}: {body}");
            assert_eq!(body["error"]["code"], "validation_failed");
            assert!(body["error"]["fields"]["cursor"].is_array(), "{body}");
        }
        let (status, body) = app
            .get(&format!("{list}?limit=1"), Some(&user.access))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The served document lists, for every operation, the statuses its shape implies, and
/// describes every response (the `description` that OpenAPI requires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_describes_every_response() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, doc) = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            operations += 1;
            let responses = op["responses"].as_object().expect("responses");
            for (code, res) in responses {
                assert!(
                    res["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {code} has no description"
                );
            }
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
            if op.get("requestBody").is_some() {
                for code in ["400", "413", "415"] {
                    assert!(responses.contains_key(code), "{method} {path}: no {code}");
                }
            }
        }
    }
    assert!(operations >= 29, "{operations} operations");
    assert_eq!(json!(doc["openapi"]), json!("3.1.0"));
}

/// A request body is a JSON object. serde reads a struct from an array of its fields too, so
/// `[null, null]` sent to `PATCH /users/me` used to answer 200 and clear both names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_is_not_a_request_object() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = app.register("array_body").await;
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            Some(&user.access),
            Some(json!({"first_name": "Ada", "last_name": "Lovelace"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    for (method, path, raw) in [
        (
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            r#"[null, null, null]"#,
        ),
        (
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            r#" ["other@example.com"]"#,
        ),
        (reqwest::Method::POST, "/api/v1/rooms", r#"["array-room"]"#),
        (
            reqwest::Method::PUT,
            "/api/v1/rooms/array-room",
            r#"["array-room", null, "private"]"#,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/auth/logout",
            r#"[null, true]"#,
        ),
    ] {
        let (status, body) = send_raw(&app, method.clone(), path, &user.access, raw).await;
        assert_eq!(status, 400, "{method} {path} {raw}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, me) = app.get("/api/v1/users/me", Some(&user.access)).await;
    assert_eq!(status, 200, "the session is still alive: {me}");
    assert_eq!(me["first_name"], "Ada");
    assert_eq!(me["last_name"], "Lovelace");
    assert_eq!(me["email"], "array_body@example.com");
    assert_eq!(
        app.get("/api/v1/rooms/array-room", Some(&user.access))
            .await
            .0,
        404
    );
}
