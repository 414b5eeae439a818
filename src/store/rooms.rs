//! Rooms and their members. A room's `name` is its address; private rooms are invisible to
//! non-members (callers turn "not a member" into 404).

use std::collections::HashMap;

use chrono::Utc;
use entity::{room, room_member};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, LikeExpr},
};

use super::StoreError;
use crate::domain::model::{Member, Room, UserRef};

pub(crate) use entity::room::Model as RoomRow;

pub(crate) async fn find_by_name(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<RoomRow>, StoreError> {
    Ok(room::Entity::find()
        .filter(room::Column::Name.eq(name))
        .one(db)
        .await?)
}

pub(crate) async fn last_seq(db: &DatabaseConnection, room_id: i64) -> Result<i64, sea_orm::DbErr> {
    Ok(room::Entity::find_by_id(room_id)
        .select_only()
        .column(room::Column::LastSeq)
        .into_tuple::<i64>()
        .one(db)
        .await?
        .unwrap_or(0))
}

/// Which of `ids` are rooms that exist.
pub(crate) async fn existing_ids(
    db: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>, sea_orm::DbErr> {
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        found.extend(
            room::Entity::find()
                .select_only()
                .column(room::Column::Id)
                .filter(room::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple::<i64>()
                .all(db)
                .await?,
        );
    }
    Ok(found)
}

pub(crate) async fn name_of(
    db: &DatabaseConnection,
    room_id: i64,
) -> Result<Option<String>, sea_orm::DbErr> {
    room::Entity::find_by_id(room_id)
        .select_only()
        .column(room::Column::Name)
        .into_tuple::<String>()
        .one(db)
        .await
}

/// The caller's role in the room, if a member.
pub(crate) async fn role_of(
    db: &impl ConnectionTrait,
    room_id: i64,
    user_id: i64,
) -> Result<Option<String>, StoreError> {
    Ok(room_member::Entity::find_by_id((room_id, user_id))
        .one(db)
        .await?
        .map(|m| m.role))
}

/// Create a room with `owner` as its owner and first member.
///
/// # Errors
/// 409 on `name` if taken.
pub(crate) async fn create(
    db: &DatabaseConnection,
    name: &str,
    topic: Option<String>,
    visibility: &str,
    owner: i64,
) -> Result<RoomRow, StoreError> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let row = room::ActiveModel {
        name: Set(name.to_owned()),
        topic: Set(topic),
        visibility: Set(visibility.to_owned()),
        owner_id: Set(Some(owner)),
        last_seq: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(super::on_unique("name", "is already taken"))?;
    room_member::ActiveModel {
        room_id: Set(row.id),
        user_id: Set(owner),
        role: Set("owner".into()),
        joined_at: Set(now),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// Add a member (idempotent); `true` if newly added.
pub(crate) async fn add_member(
    db: &DatabaseConnection,
    room_id: i64,
    user_id: i64,
) -> Result<bool, StoreError> {
    let res = room_member::Entity::insert(room_member::ActiveModel {
        room_id: Set(room_id),
        user_id: Set(user_id),
        role: Set("member".into()),
        joined_at: Set(Utc::now()),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    Ok(matches!(res, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

pub(crate) async fn remove_member(
    db: &DatabaseConnection,
    room_id: i64,
    user_id: i64,
) -> Result<bool, StoreError> {
    let res = room_member::Entity::delete_by_id((room_id, user_id))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

/// What a room update changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub(crate) struct RoomChanges {
    pub topic: Option<Option<String>>,
    pub visibility: Option<String>,
    /// The new owner; must already be a member.
    pub owner_id: Option<i64>,
}

/// Apply `changes` in one transaction. A new owner takes the `owner` role and the previous
/// owner stays a member.
///
/// # Errors
/// [`StoreError::NotMember`] if the new owner is not a member of the room.
pub(crate) async fn update(
    db: &DatabaseConnection,
    row: RoomRow,
    changes: RoomChanges,
) -> Result<RoomRow, StoreError> {
    let txn = db.begin().await?;
    let room_id = row.id;
    let old_owner = row.owner_id;
    let mut am: room::ActiveModel = row.into();
    if let Some(t) = changes.topic {
        am.topic = Set(t);
    }
    if let Some(v) = changes.visibility {
        am.visibility = Set(v);
    }
    if let Some(new_owner) = changes.owner_id.filter(|id| Some(*id) != old_owner) {
        let set_role = |user_id: i64, role: &str| {
            room_member::Entity::update_many()
                .col_expr(room_member::Column::Role, Expr::value(role))
                .filter(room_member::Column::RoomId.eq(room_id))
                .filter(room_member::Column::UserId.eq(user_id))
        };
        if set_role(new_owner, "owner").exec(&txn).await?.rows_affected == 0 {
            return Err(StoreError::NotMember);
        }
        if let Some(old) = old_owner {
            set_role(old, "member").exec(&txn).await?;
        }
        am.owner_id = Set(Some(new_owner));
    }
    am.updated_at = Set(Utc::now());
    let row = am.update(&txn).await?;
    txn.commit().await?;
    Ok(row)
}

pub(crate) async fn delete(db: &DatabaseConnection, room_id: i64) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    entity::message::Entity::delete_many()
        .filter(entity::message::Column::RoomId.eq(room_id))
        .exec(&txn)
        .await?;
    room_member::Entity::delete_many()
        .filter(room_member::Column::RoomId.eq(room_id))
        .exec(&txn)
        .await?;
    room::Entity::delete_by_id(room_id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// The wire form of a room; `online_count` comes from presence.
pub(crate) async fn to_wire(
    db: &DatabaseConnection,
    row: RoomRow,
    online_count: i64,
) -> Result<Room, StoreError> {
    let member_count = i64::try_from(
        room_member::Entity::find()
            .filter(room_member::Column::RoomId.eq(row.id))
            .count(db)
            .await?,
    )
    .unwrap_or(i64::MAX);
    let owner = match row.owner_id {
        Some(id) => super::users::refs(db, &[id]).await?.into_iter().next(),
        None => None,
    };
    Ok(Room {
        id: row.id,
        name: row.name,
        topic: row.topic,
        visibility: row.visibility,
        owner,
        member_count,
        online_count,
        last_seq: row.last_seq,
        created_at: row.created_at,
    })
}

/// The wire form of a page of rooms in three queries whatever its length (member counts,
/// owners); `online` gives each room's online count.
pub(crate) async fn to_wire_many(
    db: &DatabaseConnection,
    rows: Vec<RoomRow>,
    online: &HashMap<i64, i64>,
) -> Result<Vec<Room>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        counts.extend(
            room_member::Entity::find()
                .select_only()
                .column(room_member::Column::RoomId)
                .column_as(Expr::col(room_member::Column::UserId).count(), "n")
                .filter(room_member::Column::RoomId.is_in(chunk.iter().copied()))
                .group_by(room_member::Column::RoomId)
                .into_tuple::<(i64, i64)>()
                .all(db)
                .await?,
        );
    }
    let mut owner_ids: Vec<i64> = rows.iter().filter_map(|r| r.owner_id).collect();
    owner_ids.sort_unstable();
    owner_ids.dedup();
    let owners: HashMap<i64, UserRef> = super::users::refs(db, &owner_ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| Room {
            id: row.id,
            member_count: counts.get(&row.id).copied().unwrap_or(0),
            online_count: online.get(&row.id).copied().unwrap_or(0),
            owner: row.owner_id.and_then(|id| owners.get(&id).cloned()),
            name: row.name,
            topic: row.topic,
            visibility: row.visibility,
            last_seq: row.last_seq,
            created_at: row.created_at,
        })
        .collect())
}

/// Rooms the caller may see: public ones plus private ones they are in. `joined` restricts to
/// the caller's rooms. Ordered by name; the cursor is the last name of the previous page.
pub(crate) async fn list(
    db: &DatabaseConnection,
    caller: i64,
    q: Option<&str>,
    joined: bool,
    limit: u64,
    cursor: Option<&str>,
) -> Result<(Vec<RoomRow>, Option<String>), StoreError> {
    // A subquery, not the caller's room ids as parameters: a user in thousands of rooms
    // would exceed the database's parameter limit.
    let mine = || {
        sea_orm::sea_query::Query::select()
            .column(room_member::Column::RoomId)
            .from(room_member::Entity)
            .and_where(Expr::col(room_member::Column::UserId).eq(caller))
            .to_owned()
    };
    let mut query = room::Entity::find()
        .order_by_asc(room::Column::Name)
        .limit(limit + 1);
    query = if joined {
        query.filter(room::Column::Id.in_subquery(mine()))
    } else {
        query.filter(
            Condition::any()
                .add(room::Column::Visibility.eq("public"))
                .add(room::Column::Id.in_subquery(mine())),
        )
    };
    if let Some(q) = q.filter(|q| !q.is_empty()) {
        query = query.filter(
            Expr::col(room::Column::Name).like(LikeExpr::new(super::like_pattern(q)).escape('\\')),
        );
    }
    if let Some(c) = cursor {
        query = query.filter(room::Column::Name.gt(c));
    }
    let mut rows = query.all(db).await?;
    let next = if rows.len() as u64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|r| r.name.clone())
    } else {
        None
    };
    Ok((rows, next))
}

/// One member of a room, if they are one.
pub(crate) async fn member(
    db: &DatabaseConnection,
    room_id: i64,
    user_id: i64,
) -> Result<Option<Member>, StoreError> {
    let Some(row) = room_member::Entity::find_by_id((room_id, user_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let user = super::users::refs(db, &[user_id]).await?.into_iter().next();
    Ok(user.map(|user| Member {
        user,
        role: row.role,
        joined_at: row.joined_at,
        online: false,
    }))
}

/// One page of members with their role, in user-id order; `online` is filled by the caller
/// from presence. The cursor is the last user id of the previous page.
pub(crate) async fn members(
    db: &DatabaseConnection,
    room_id: i64,
    limit: u64,
    after: Option<i64>,
) -> Result<(Vec<Member>, Option<i64>), StoreError> {
    let mut query = room_member::Entity::find()
        .filter(room_member::Column::RoomId.eq(room_id))
        .order_by_asc(room_member::Column::UserId)
        .limit(limit + 1);
    if let Some(after) = after {
        query = query.filter(room_member::Column::UserId.gt(after));
    }
    let mut rows = query.all(db).await?;
    let next = if rows.len() as u64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|r| r.user_id)
    } else {
        None
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
    let names: HashMap<i64, UserRef> = super::users::refs(db, &ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let items = rows
        .into_iter()
        .filter_map(|r| {
            Some(Member {
                user: names.get(&r.user_id)?.clone(),
                role: r.role,
                joined_at: r.joined_at,
                online: false,
            })
        })
        .collect();
    Ok((items, next))
}
