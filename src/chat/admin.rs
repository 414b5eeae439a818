//! The first admin: `chat-server admin create …` or the `ADMIN_*` variables at start.

use sea_orm::DatabaseConnection;

use super::password::PasswordHasher;
use crate::store;

/// Create `username` as an admin, or grant `admin` to the existing user of that name when the
/// email matches theirs and the password verifies (docs/protocol.md#limits: whoever registers the name first
/// must not become admin at the next start).
///
/// # Errors
/// Database errors, an email already used by another account, or an existing account whose
/// email or password does not match.
pub(crate) async fn ensure_admin(
    db: &DatabaseConnection,
    hasher: &PasswordHasher,
    username: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<i64> {
    if let Some((user, hash)) = store::users::find_for_login(db, username)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        let same_email = user.email.to_lowercase() == email.to_lowercase();
        if !same_email || !hasher.verify(password.to_owned(), Some(hash)).await? {
            anyhow::bail!(
                "the existing account `{username}` was not made admin: its email and password do not match the ones given"
            );
        }
        let mut roles = user.roles.clone();
        if !roles.iter().any(|r| r == "admin") {
            roles.push("admin".into());
            store::users::set_roles(db, user.id, &roles)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        return Ok(user.id);
    }
    if password.chars().count() < 8 {
        anyhow::bail!("the admin password must be at least 8 characters");
    }
    let hash = hasher.hash(password.to_owned()).await?;
    let user = store::users::create(
        db,
        store::users::NewUser {
            username: username.to_owned(),
            email: email.to_owned(),
            password_hash: hash,
            first_name: None,
            last_name: None,
            roles: vec!["user".into(), "admin".into()],
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot create the admin: {e}"))?;
    Ok(user.id)
}
