//! Accounts. Usernames and emails are unique case-insensitively through their lower-cased
//! shadow columns.

use chrono::Utc;
use entity::user;
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, LikeExpr},
};

use super::StoreError;
use crate::{
    domain::model::{User, UserRef},
    domain::validate::FieldErrors,
};

pub(crate) struct NewUser {
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub roles: Vec<String>,
}

pub(crate) fn to_user(m: user::Model) -> User {
    User {
        id: m.id,
        username: m.username,
        email: m.email,
        first_name: m.first_name,
        last_name: m.last_name,
        roles: m
            .roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: m.created_at,
        accept_dms: m.accept_dms,
        send_receipts: m.send_receipts,
    }
}

/// Which of `username`/`email` are taken by someone other than `except`.
async fn taken(
    db: &impl ConnectionTrait,
    username: Option<&str>,
    email: Option<&str>,
    except: Option<i64>,
) -> Result<FieldErrors, StoreError> {
    let mut fields = FieldErrors::new();
    if let Some(name) = username {
        let mut q =
            user::Entity::find().filter(user::Column::UsernameLower.eq(name.to_lowercase()));
        if let Some(id) = except {
            q = q.filter(user::Column::Id.ne(id));
        }
        if q.one(db).await?.is_some() {
            fields.insert("username".into(), vec!["is already taken".into()]);
        }
    }
    if let Some(email) = email {
        let mut q = user::Entity::find().filter(user::Column::EmailLower.eq(email.to_lowercase()));
        if let Some(id) = except {
            q = q.filter(user::Column::Id.ne(id));
        }
        if q.one(db).await?.is_some() {
            fields.insert("email".into(), vec!["is already registered".into()]);
        }
    }
    Ok(fields)
}

fn conflict(fields: FieldErrors) -> StoreError {
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    StoreError::Conflict {
        message: format!("{} already taken", names.join(" and ")),
        fields,
    }
}

/// A unique-key clash on insert or update (a race past [`taken`]) names its field.
fn unique_violation(e: sea_orm::DbErr) -> StoreError {
    let Some(msg) = super::unique_violation(&e) else {
        return e.into();
    };
    if msg.contains("email") {
        StoreError::conflict("email", "is already registered")
    } else {
        StoreError::conflict("username", "is already taken")
    }
}

/// # Errors
/// 409 naming `username` and/or `email` when taken.
pub(crate) async fn create(db: &DatabaseConnection, new: NewUser) -> Result<User, StoreError> {
    let fields = taken(db, Some(&new.username), Some(&new.email), None).await?;
    if !fields.is_empty() {
        return Err(conflict(fields));
    }
    let now = Utc::now();
    let model = user::ActiveModel {
        username_lower: Set(new.username.to_lowercase()),
        username: Set(new.username),
        email_lower: Set(new.email.to_lowercase()),
        email: Set(new.email),
        password_hash: Set(new.password_hash),
        first_name: Set(new.first_name),
        last_name: Set(new.last_name),
        roles: Set(new.roles.join(",")),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await
    .map_err(unique_violation)?;
    Ok(to_user(model))
}

pub(crate) async fn find(db: &impl ConnectionTrait, id: i64) -> Result<Option<User>, StoreError> {
    Ok(user::Entity::find_by_id(id).one(db).await?.map(to_user))
}

/// The user and their password hash, by username or email (case-insensitive).
pub(crate) async fn find_for_login(
    db: &DatabaseConnection,
    login: &str,
) -> Result<Option<(User, String)>, StoreError> {
    let lower = login.to_lowercase();
    let column = if lower.contains('@') {
        user::Column::EmailLower
    } else {
        user::Column::UsernameLower
    };
    Ok(user::Entity::find()
        .filter(column.eq(lower))
        .one(db)
        .await?
        .map(|m| {
            let hash = m.password_hash.clone();
            (to_user(m), hash)
        }))
}

pub(crate) async fn password_hash(
    db: &DatabaseConnection,
    id: i64,
) -> Result<Option<String>, StoreError> {
    Ok(user::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(|m| m.password_hash))
}

pub(crate) struct ProfileUpdate {
    pub email: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub accept_dms: Option<bool>,
    pub send_receipts: Option<bool>,
}

/// # Errors
/// 404 if the user is gone; 409 on `email` if taken.
pub(crate) async fn update_profile(
    db: &DatabaseConnection,
    id: i64,
    up: ProfileUpdate,
) -> Result<User, StoreError> {
    if let Some(email) = &up.email {
        let fields = taken(db, None, Some(email), Some(id)).await?;
        if !fields.is_empty() {
            return Err(conflict(fields));
        }
    }
    let model = user::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("user"))?;
    let mut am: user::ActiveModel = model.into();
    if let Some(email) = up.email {
        am.email_lower = Set(email.to_lowercase());
        am.email = Set(email);
    }
    if let Some(v) = up.first_name {
        am.first_name = Set(v);
    }
    if let Some(v) = up.last_name {
        am.last_name = Set(v);
    }
    if let Some(v) = up.accept_dms {
        am.accept_dms = Set(v);
    }
    if let Some(v) = up.send_receipts {
        am.send_receipts = Set(v);
    }
    am.updated_at = Set(Utc::now());
    Ok(to_user(am.update(db).await.map_err(unique_violation)?))
}

pub(crate) async fn set_password(
    db: &DatabaseConnection,
    id: i64,
    hash: String,
) -> Result<(), StoreError> {
    user::Entity::update_many()
        .col_expr(user::Column::PasswordHash, Expr::value(hash))
        .col_expr(user::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(user::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

pub(crate) async fn set_roles(
    db: &DatabaseConnection,
    id: i64,
    roles: &[String],
) -> Result<User, StoreError> {
    let model = user::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("user"))?;
    let mut am: user::ActiveModel = model.into();
    am.roles = Set(roles.join(","));
    am.updated_at = Set(Utc::now());
    Ok(to_user(am.update(db).await?))
}

/// Delete the account. Their messages stay with a `null` author (the foreign key sets it, and
/// we clear it explicitly too, for SQLite connections without foreign-key enforcement).
pub(crate) async fn delete(db: &DatabaseConnection, id: i64) -> Result<bool, StoreError> {
    let txn = db.begin().await?;
    entity::message::Entity::update_many()
        .col_expr(
            entity::message::Column::AuthorId,
            Expr::value(Option::<i64>::None),
        )
        .filter(entity::message::Column::AuthorId.eq(id))
        .exec(&txn)
        .await?;
    entity::room::Entity::update_many()
        .col_expr(
            entity::room::Column::OwnerId,
            Expr::value(Option::<i64>::None),
        )
        .filter(entity::room::Column::OwnerId.eq(id))
        .exec(&txn)
        .await?;
    entity::room_member::Entity::delete_many()
        .filter(entity::room_member::Column::UserId.eq(id))
        .exec(&txn)
        .await?;
    entity::session::Entity::delete_many()
        .filter(entity::session::Column::UserId.eq(id))
        .exec(&txn)
        .await?;
    let res = user::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(res.rows_affected > 0)
}

/// Users whose username matches `q` (substring, case-insensitive), by id, after `cursor`.
pub(crate) async fn list(
    db: &DatabaseConnection,
    q: Option<&str>,
    limit: u64,
    cursor: Option<i64>,
) -> Result<(Vec<User>, Option<i64>), StoreError> {
    let mut query = user::Entity::find()
        .order_by_asc(user::Column::Id)
        .limit(limit + 1);
    if let Some(q) = q.filter(|q| !q.is_empty()) {
        query = query.filter(
            Expr::col(user::Column::UsernameLower)
                .like(LikeExpr::new(super::like_pattern(q)).escape('\\')),
        );
    }
    if let Some(c) = cursor {
        query = query.filter(user::Column::Id.gt(c));
    }
    let mut rows: Vec<User> = query.all(db).await?.into_iter().map(to_user).collect();
    let next = if rows.len() as u64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|u| u.id)
    } else {
        None
    };
    Ok((rows, next))
}

/// `{id, username}` for each of `ids` that exists.
pub(crate) async fn refs(
    db: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<Vec<UserRef>, sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        rows.extend(
            user::Entity::find()
                .select_only()
                .column(user::Column::Id)
                .column(user::Column::Username)
                .filter(user::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple::<(i64, String)>()
                .all(db)
                .await?,
        );
    }
    Ok(rows
        .into_iter()
        .map(|(id, username)| UserRef { id, username })
        .collect())
}

/// Each of `ids` that exists, with whether it accepts DMs.
pub(crate) async fn accepting_dms(
    db: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, bool>, sea_orm::DbErr> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        out.extend(
            user::Entity::find()
                .select_only()
                .column(user::Column::Id)
                .column(user::Column::AcceptDms)
                .filter(user::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple::<(i64, bool)>()
                .all(db)
                .await?,
        );
    }
    Ok(out)
}

/// Whether the user lets others see their read receipts (`false` if they are gone).
pub(crate) async fn sends_receipts(
    db: &impl ConnectionTrait,
    id: i64,
) -> Result<bool, sea_orm::DbErr> {
    Ok(user::Entity::find_by_id(id)
        .select_only()
        .column(user::Column::SendReceipts)
        .into_tuple::<bool>()
        .one(db)
        .await?
        .unwrap_or(false))
}
