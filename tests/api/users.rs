//! docs/protocol.md#users: profile, password change, account deletion, directory, admin operations.

use serde_json::json;

use crate::{dual_test, support::*};

async fn make_admin(app: &TestApp, username: &str) -> User {
    let user = app.register(username).await;
    app.state
        .ensure_admin(username, &format!("{username}@example.com"), PASSWORD)
        .await
        .expect("grant admin");
    // Roles are in the token: log in again.
    let (status, body) = app.login(username, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    User {
        access: body["access"].as_str().unwrap().to_owned(),
        refresh: body["refresh"].as_str().unwrap().to_owned(),
        ..user
    }
}

dual_test!(profile_update_and_conflicts, |b| async move {
    let app = spawn_app(b).await;
    let ivy = app.register("ivy").await;
    app.register("jack").await;
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            Some(&ivy.access),
            Some(json!({"first_name": "Ivy", "last_name": "Lee", "email": "ivy2@example.com"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["first_name"], "Ivy");
    assert_eq!(body["email"], "ivy2@example.com");
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            Some(&ivy.access),
            Some(json!({"email": "JACK@example.com"})),
        )
        .await;
    assert_eq!(status, 409);
    assert!(body["error"]["fields"]["email"].is_array());
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            Some(&ivy.access),
            Some(json!({"email": "nope"})),
        )
        .await;
    assert_eq!(status, 422);
    assert!(body["error"]["fields"]["email"].is_array());
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            Some(&ivy.access),
            Some(json!({"first_name": null})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["first_name"], serde_json::Value::Null);
    assert_eq!(body["last_name"], "Lee");
});

dual_test!(password_change_revokes_other_sessions, |b| async move {
    let app = spawn_app(b).await;
    let kim = app.register("kim").await;
    let (status, other) = app.login("kim", PASSWORD).await;
    assert_eq!(status, 200, "{other}");
    let (status, body) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/users/me/password",
            Some(&kim.access),
            Some(json!({"current_password": "wrong one!", "new_password": "new password 1"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["fields"]["current_password"].is_array());
    let (status, _) = app
        .send(reqwest::Method::PUT, "/api/v1/users/me/password", Some(&kim.access), Some(json!({"current_password": "correct horse battery", "new_password": "new password 1"})))
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/v1/users/me", other["access"].as_str()).await;
    assert_eq!(status, 401, "the other session is revoked");
    let (status, _) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": other["refresh"]}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/api/v1/users/me", Some(&kim.access)).await;
    assert_eq!(status, 200, "this session stays");
    let (status, _) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"login": "kim", "password": "new password 1"}),
        )
        .await;
    assert_eq!(status, 200);
});

dual_test!(
    deleting_my_account_keeps_messages_anonymous,
    |b| async move {
        let app = spawn_app(b).await;
        let leo = app.register("leo").await;
        let mia = app.register("mia").await;
        app.create_room(&mia, "lobby", "public").await;
        app.join_room(&leo, "lobby").await;
        app.post_message(&leo, "lobby", "bye all").await;
        let (status, body) = app
            .send(
                reqwest::Method::DELETE,
                "/api/v1/users/me",
                Some(&leo.access),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        let (status, _) = app
            .send(
                reqwest::Method::DELETE,
                "/api/v1/users/me",
                Some(&leo.access),
                Some(json!({"password": "nope nope"})),
            )
            .await;
        assert_eq!(status, 422);
        let (status, _) = app
            .send(
                reqwest::Method::DELETE,
                "/api/v1/users/me",
                Some(&leo.access),
                Some(json!({"password": "correct horse battery"})),
            )
            .await;
        assert_eq!(status, 204);
        let (status, _) = app.get("/api/v1/users/me", Some(&leo.access)).await;
        assert_eq!(status, 401);
        let (_, history) = app
            .get("/api/v1/rooms/lobby/messages", Some(&mia.access))
            .await;
        assert_eq!(history["items"][0]["content"], "bye all");
        assert_eq!(history["items"][0]["user"], serde_json::Value::Null);
        let (status, _) = app
            .get(&format!("/api/v1/users/{}", leo.id), Some(&mia.access))
            .await;
        assert_eq!(status, 404);
    }
);

dual_test!(
    directory_lists_and_paginates_hiding_emails,
    |b| async move {
        let app = spawn_app(b).await;
        let me = app.register("nora").await;
        for name in ["user_a", "user_b", "user_c"] {
            app.register(name).await;
        }
        let (status, page) = app
            .get("/api/v1/users?q=USER_&limit=2", Some(&me.access))
            .await;
        assert_eq!(status, 200);
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert!(
            page["items"][0].get("email").is_none(),
            "no emails of others"
        );
        let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
        let (_, page2) = app
            .get(
                &format!("/api/v1/users?q=user_&limit=2&cursor={cursor}"),
                Some(&me.access),
            )
            .await;
        assert_eq!(page2["items"].as_array().unwrap().len(), 1);
        assert_eq!(page2["next_cursor"], serde_json::Value::Null);
        let (_, self_page) = app.get("/api/v1/users?q=nora", Some(&me.access)).await;
        assert_eq!(self_page["items"][0]["email"], "nora@example.com");
        let (_, one) = app
            .get(&format!("/api/v1/users/{}", me.id), Some(&me.access))
            .await;
        assert_eq!(one["username"], "nora");
        let (status, _) = app.get("/api/v1/users/999999", Some(&me.access)).await;
        assert_eq!(status, 404);
        let (status, _) = app
            .get(
                "/api/v1/users?q=%27%3B%20DROP%20TABLE%20users%3B--",
                Some(&me.access),
            )
            .await;
        assert_eq!(status, 200, "SQL metacharacters are just text");
    }
);

dual_test!(admin_sets_roles_and_deletes_users, |b| async move {
    let app = spawn_app(b).await;
    let admin = make_admin(&app, "olga").await;
    let pete = app.register("pete").await;
    let path = format!("/api/v1/users/{}", pete.id);
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&pete.access),
            Some(json!({"roles": ["admin"]})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&admin.access),
            Some(json!({"roles": ["superuser"]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&admin.access),
            Some(json!({"roles": ["user", "admin"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"], json!(["user", "admin"]));
    let (_, seen_by_admin) = app.get(&path, Some(&admin.access)).await;
    assert_eq!(seen_by_admin["email"], "pete@example.com");
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&pete.access), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&admin.access), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/v1/users/me", Some(&pete.access)).await;
    assert_eq!(status, 401, "a deleted user's token stops working");
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&admin.access), None)
        .await;
    assert_eq!(status, 404);
});
