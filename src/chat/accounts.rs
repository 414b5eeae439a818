//! Accounts: registration, login sessions (refresh families), the caller's profile and
//! password, the directory, and the admin operations on users. Each use-case takes inputs the
//! transport has already parsed, and owns its rule, its limit, its side effects (sessions,
//! revocation, closed sockets) and its error.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use sea_orm::DatabaseConnection;

use super::{
    Error, Shared, auth::CurrentUser, jwt::JwtKeys, limits::Limits, password::PasswordHasher,
    revoke::Revocation,
};
use crate::{
    config::Config,
    domain::model::{Page, PublicUser, User},
    store::{self, sessions::Rotation},
};

/// The inputs, parsed and validated by the transport with the domain's rules.
pub(crate) use crate::domain::input::{Credentials, NewAccount, ProfileChanges};

/// The tokens of a login session: a bearer access token and the refresh token of its family.
pub(crate) struct Session {
    pub(crate) access: String,
    pub(crate) refresh: String,
    /// Seconds until `access` expires.
    pub(crate) expires_in: i64,
}

/// A user and the session just opened for them (register, login).
pub(crate) struct LoggedIn {
    pub(crate) user: User,
    pub(crate) session: Session,
}

/// Users per directory page: the default and the most.
const PAGE_DEFAULT: u64 = 20;
const PAGE_MAX: u64 = 100;

/// The roles an admin may grant.
const ROLES: [&str; 2] = ["user", "admin"];

/// Who may see a user's email: the user themselves, or an admin.
pub(crate) fn may_see_email(viewer: &CurrentUser, user: &User) -> bool {
    viewer.is_admin() || viewer.id == user.id
}

/// The roles to store: each known role once, in the order given, `user` always kept (first
/// when it was not given).
///
/// # Errors
/// 422 on `roles` naming an unknown role.
fn normalise_roles(mut roles: Vec<String>) -> Result<Vec<String>, Error> {
    if let Some(bad) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
        return Err(Error::invalid_field(
            "roles",
            &format!("unknown role `{bad}`; use `user` or `admin`"),
        ));
    }
    if !roles.iter().any(|r| r == "user") {
        roles.insert(0, "user".into());
    }
    let mut seen = HashSet::new();
    roles.retain(|r| seen.insert(r.clone()));
    Ok(roles)
}

/// The admin-only operations' rule.
///
/// # Errors
/// 403 when `by` is not an admin.
fn require_admin(by: &CurrentUser) -> Result<(), Error> {
    if by.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden("admin only"))
    }
}

/// The accounts use-cases.
pub(crate) struct Accounts {
    db: DatabaseConnection,
    keys: Arc<JwtKeys>,
    hasher: PasswordHasher,
    limits: Limits,
    revocation: Revocation,
    /// How long a refresh token lives.
    refresh_ttl_secs: u64,
}

impl Accounts {
    pub(super) fn new(
        shared: &Shared,
        keys: Arc<JwtKeys>,
        hasher: PasswordHasher,
        config: &Config,
    ) -> Self {
        Self {
            db: shared.db.clone(),
            keys,
            hasher,
            limits: shared.limits.clone(),
            revocation: shared.revocation.clone(),
            refresh_ttl_secs: config.refresh_token_ttl_secs,
        }
    }

    /// Create `username` as an admin, or grant `admin` to the existing user of that name when
    /// the email matches theirs and the password verifies.
    ///
    /// # Errors
    /// As [`super::admin::ensure_admin`].
    pub(crate) async fn ensure_admin(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<i64> {
        super::admin::ensure_admin(&self.db, &self.hasher, username, email, password).await
    }

    /// Create an account and log it in. `account` is the request as the transport parsed
    /// it: a refused one still counts as an attempt against the address's limit.
    ///
    /// # Errors
    /// 429 above the address's limit; `account`'s own error; 409 if the username or email is
    /// taken.
    pub(crate) async fn register(
        &self,
        ip: IpAddr,
        account: Result<NewAccount, Error>,
    ) -> Result<LoggedIn, Error> {
        self.limits.admit_credentials(ip, None).await?;
        let account = account?;
        let password_hash = self.hasher.hash(account.password).await?;
        let user = store::users::create(
            &self.db,
            store::users::NewUser {
                username: account.username,
                email: account.email,
                password_hash,
                first_name: account.first_name,
                last_name: account.last_name,
                roles: vec!["user".into()],
            },
        )
        .await?;
        let session = self.open_session(&user, None).await?;
        tracing::info!(user_id = user.id, "registered");
        Ok(LoggedIn { user, session })
    }

    /// Log in with a username or email and a password. `credentials` is the request as the
    /// transport parsed it: a refused one still counts as an attempt against the address's
    /// limit. A known account is limited on its own too.
    ///
    /// # Errors
    /// 429 above either limit; `credentials`' own error; 401 for a wrong login or password.
    pub(crate) async fn login(
        &self,
        ip: IpAddr,
        credentials: Result<Credentials, Error>,
    ) -> Result<LoggedIn, Error> {
        self.limits.admit_credentials(ip, None).await?;
        let Credentials { login, password } = credentials?;
        let found = store::users::find_for_login(&self.db, &login).await?;
        if let Some((user, _)) = &found {
            self.limits.admit_credentials(ip, Some(user.id)).await?;
        }
        let (user, hash) = found.unzip();
        // Unknown users are verified against a dummy hash: same code, about the same time.
        let ok = self.hasher.verify(password, hash).await?;
        let Some(user) = user.filter(|_| ok) else {
            return Err(Error::invalid_credentials());
        };
        let session = self.open_session(&user, None).await?;
        Ok(LoggedIn { user, session })
    }

    /// Spend a refresh token for a new pair in the same family. A token presented twice
    /// revokes its family (and closes the sockets its access tokens opened).
    ///
    /// # Errors
    /// 429 above the address's limit; 422 on `refresh` when it is missing; 401 for an
    /// unknown, expired, revoked or reused token.
    pub(crate) async fn refresh(
        &self,
        ip: IpAddr,
        token: Option<String>,
    ) -> Result<Session, Error> {
        self.limits.admit_credentials(ip, None).await?;
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Error::invalid_field("refresh", "is required"));
        };
        let ttl = self.refresh_ttl_secs;
        match store::sessions::rotate(&self.db, &token, ttl).await? {
            Rotation::Rotated { user_id, issued } => {
                let user = store::users::find(&self.db, user_id)
                    .await?
                    .ok_or_else(Error::invalid_token)?;
                self.open_session(&user, Some((issued.token, issued.family)))
                    .await
            }
            Rotation::Reused { user_id, family } => {
                tracing::warn!(
                    user_id,
                    "refresh token reuse detected; session family revoked"
                );
                self.revocation
                    .revoke_sessions(user_id, &[family], false)
                    .await?;
                Err(Error::invalid_token())
            }
            Rotation::Invalid => Err(Error::invalid_token()),
        }
    }

    /// End the caller's session: their access token, its family and, when `refresh` names
    /// another family of theirs, that one too. With `all`, every session of the caller.
    ///
    /// # Errors
    /// 503 if the deny-list cannot be written.
    pub(crate) async fn logout(
        &self,
        me: &CurrentUser,
        refresh: Option<&str>,
        all: bool,
    ) -> Result<(), Error> {
        self.revocation.revoke_token(&me.jti).await?;
        if all {
            let mut families = store::sessions::revoke_all(&self.db, me.id, None).await?;
            families.push(me.sid.clone());
            return self
                .revocation
                .revoke_sessions(me.id, &families, true)
                .await;
        }
        let mut families = vec![me.sid.clone()];
        if let Some(refresh) = refresh
            && let Some(f) = store::sessions::family_of(&self.db, refresh, me.id).await?
            && f != me.sid
        {
            families.push(f);
        }
        for f in &families {
            store::sessions::revoke_family(&self.db, f).await?;
        }
        self.revocation
            .revoke_sessions(me.id, &families, false)
            .await
    }

    /// The caller's full profile.
    ///
    /// # Errors
    /// 401 if the account is gone.
    pub(crate) async fn me(&self, me: &CurrentUser) -> Result<User, Error> {
        store::users::find(&self.db, me.id)
            .await?
            .ok_or_else(Error::invalid_token)
    }

    /// Change the caller's profile. An email change tells whether an address is taken: it is
    /// limited like a login.
    ///
    /// # Errors
    /// 429 above the limits (email changes); 409 on `email` if taken.
    pub(crate) async fn update_profile(
        &self,
        me: &CurrentUser,
        ip: IpAddr,
        changes: ProfileChanges,
    ) -> Result<User, Error> {
        if changes.email.is_some() {
            self.limits.admit_credentials(ip, Some(me.id)).await?;
        }
        let up = store::users::ProfileUpdate {
            email: changes.email,
            first_name: changes.first_name,
            last_name: changes.last_name,
            accept_dms: changes.accept_dms,
            send_receipts: changes.send_receipts,
        };
        Ok(store::users::update_profile(&self.db, me.id, up).await?)
    }

    /// Change the caller's password, given the current one; every other session of theirs
    /// is revoked.
    ///
    /// # Errors
    /// 429 above the limits; 422 on `current_password` if it is incorrect.
    pub(crate) async fn change_password(
        &self,
        me: &CurrentUser,
        ip: IpAddr,
        current: String,
        new: String,
    ) -> Result<(), Error> {
        self.limits.admit_credentials(ip, Some(me.id)).await?;
        if !self.password_matches(me.id, current).await? {
            return Err(Error::invalid_field("current_password", "is incorrect"));
        }
        let new_hash = self.hasher.hash(new).await?;
        store::users::set_password(&self.db, me.id, new_hash).await?;
        let others = store::sessions::revoke_all(&self.db, me.id, Some(&me.sid)).await?;
        self.revocation.revoke_sessions(me.id, &others, false).await
    }

    /// Delete the caller's account, given their password (see [`Accounts::remove_user`]).
    ///
    /// # Errors
    /// 429 above the limits; 422 on `password` if it is incorrect.
    pub(crate) async fn delete_account(
        &self,
        me: &CurrentUser,
        ip: IpAddr,
        password: String,
    ) -> Result<(), Error> {
        self.limits.admit_credentials(ip, Some(me.id)).await?;
        if !self.password_matches(me.id, password).await? {
            return Err(Error::invalid_field("password", "is incorrect"));
        }
        self.remove_user(me.id).await
    }

    /// A page of the directory: users whose username contains `q`, by id, after `cursor`;
    /// `limit` defaults to 20 and is held to 1–100. Emails as [`may_see_email`] allows.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn list_users(
        &self,
        viewer: &CurrentUser,
        q: Option<&str>,
        limit: Option<u64>,
        cursor: Option<i64>,
    ) -> Result<Page<PublicUser>, Error> {
        let limit = limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
        let (users, next) = store::users::list(&self.db, q, limit, cursor).await?;
        let items = users
            .into_iter()
            .map(|u| {
                let with_email = may_see_email(viewer, &u);
                u.public(with_email)
            })
            .collect();
        Ok(Page {
            items,
            next_cursor: next.map(|n| n.to_string()),
        })
    }

    /// One user, with the email as [`may_see_email`] allows.
    ///
    /// # Errors
    /// 404 if there is no such user.
    pub(crate) async fn user(&self, viewer: &CurrentUser, id: i64) -> Result<PublicUser, Error> {
        let user = store::users::find(&self.db, id)
            .await?
            .ok_or(Error::NotFound("user"))?;
        let with_email = may_see_email(viewer, &user);
        Ok(user.public(with_email))
    }

    /// Set a user's roles (admin only), normalised: `user` always kept, each role once.
    ///
    /// # Errors
    /// 403 if `by` is not an admin; 422 on `roles` if missing or naming an unknown role; 404
    /// if there is no such user.
    pub(crate) async fn set_roles(
        &self,
        by: &CurrentUser,
        id: i64,
        roles: Option<Vec<String>>,
    ) -> Result<PublicUser, Error> {
        require_admin(by)?;
        let Some(roles) = roles else {
            return Err(Error::invalid_field("roles", "is required"));
        };
        let roles = normalise_roles(roles)?;
        let user = store::users::set_roles(&self.db, id, &roles).await?;
        Ok(user.public(true))
    }

    /// Delete a user (admin only; see [`Accounts::remove_user`]).
    ///
    /// # Errors
    /// 403 if `by` is not an admin; 404 if there is no such user.
    pub(crate) async fn delete_user(&self, by: &CurrentUser, id: i64) -> Result<(), Error> {
        require_admin(by)?;
        self.remove_user(id).await
    }

    /// Delete a user everywhere: their messages stay with a `null` author, their tokens stop
    /// working and their sockets close (4001).
    async fn remove_user(&self, id: i64) -> Result<(), Error> {
        if !store::users::delete(&self.db, id).await? {
            return Err(Error::NotFound("user"));
        }
        self.revocation.revoke_user(id).await
    }

    /// Whether `password` is the account's.
    ///
    /// # Errors
    /// 401 if the account is gone.
    async fn password_matches(&self, id: i64, password: String) -> Result<bool, Error> {
        let hash = store::users::password_hash(&self.db, id)
            .await?
            .ok_or_else(Error::invalid_token)?;
        Ok(self.hasher.verify(password, Some(hash)).await?)
    }

    /// Issue an access token for `user` in a new refresh family, or in `rotated` (the
    /// successor refresh token and its family).
    async fn open_session(
        &self,
        user: &User,
        rotated: Option<(String, String)>,
    ) -> Result<Session, Error> {
        let (refresh, family) = match rotated {
            Some(pair) => pair,
            None => {
                let ttl = self.refresh_ttl_secs;
                let issued = store::sessions::start(&self.db, user.id, ttl).await?;
                (issued.token, issued.family)
            }
        };
        let access =
            self.keys
                .issue_access(user.id, &user.username, user.roles.clone(), &family)?;
        Ok(Session {
            access: access.token,
            refresh,
            expires_in: access.expires_in,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn roles_keep_user_once_in_order() {
        assert_eq!(
            normalise_roles(roles(&["admin"])).ok(),
            Some(roles(&["user", "admin"]))
        );
        assert_eq!(
            normalise_roles(roles(&["admin", "user", "admin", "user"])).ok(),
            Some(roles(&["admin", "user"]))
        );
        assert_eq!(normalise_roles(roles(&[])).ok(), Some(roles(&["user"])));
    }

    #[test]
    fn unknown_role_is_refused() {
        assert!(normalise_roles(roles(&["user", "root"])).is_err());
    }

    fn viewer(id: i64, roles: &[&str]) -> CurrentUser {
        CurrentUser {
            id,
            username: format!("u{id}"),
            roles: self::roles(roles),
            jti: String::new(),
            sid: String::new(),
            expires_at: chrono::Utc::now(),
        }
    }

    fn user(id: i64) -> User {
        User {
            id,
            username: format!("u{id}"),
            email: format!("u{id}@example.com"),
            first_name: None,
            last_name: None,
            roles: roles(&["user"]),
            accept_dms: true,
            send_receipts: true,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn email_is_seen_by_its_owner_and_admins_only() {
        assert!(may_see_email(&viewer(1, &["user"]), &user(1)));
        assert!(may_see_email(&viewer(2, &["user", "admin"]), &user(1)));
        assert!(!may_see_email(&viewer(2, &["user"]), &user(1)));
    }
}
