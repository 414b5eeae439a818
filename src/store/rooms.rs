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
use crate::domain::{
    model::{Member, ReadState, Room, UserRef},
    room::{Role, RoomInfo, RoomKind, Visibility},
};

/// The row of a room, inside the store only: everything outside sees [`RoomInfo`].
type RoomRow = entity::room::Model;

/// A room's record from its row.
fn info(row: RoomRow) -> RoomInfo {
    RoomInfo {
        id: row.id,
        name: row.name,
        topic: row.topic,
        kind: RoomKind::of(&row.kind),
        visibility: Visibility::of(&row.visibility),
        owner_id: row.owner_id,
        last_seq: row.last_seq,
        created_at: row.created_at,
    }
}

pub(crate) async fn find_by_name(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<RoomInfo>, StoreError> {
    Ok(room::Entity::find()
        .filter(room::Column::Name.eq(name))
        .one(db)
        .await?
        .map(info))
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

/// The `last_seq` counters of `ids` (rooms that no longer exist are missing).
pub(crate) async fn last_seqs(
    db: &DatabaseConnection,
    ids: &[i64],
) -> Result<HashMap<i64, i64>, sea_orm::DbErr> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        out.extend(
            room::Entity::find()
                .select_only()
                .column(room::Column::Id)
                .column(room::Column::LastSeq)
                .filter(room::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple::<(i64, i64)>()
                .all(db)
                .await?,
        );
    }
    Ok(out)
}

/// Which of the (room, user) `pairs` are memberships, and the names of the rooms that exist.
pub(crate) async fn memberships(
    db: &DatabaseConnection,
    pairs: &[(i64, i64)],
) -> Result<(std::collections::HashSet<(i64, i64)>, HashMap<i64, String>), sea_orm::DbErr> {
    let wanted: std::collections::HashSet<(i64, i64)> = pairs.iter().copied().collect();
    let mut members = std::collections::HashSet::new();
    // Half the id budget for rooms, half for users: a superset of the pairs, then filtered.
    for chunk in pairs.chunks(super::MAX_IDS_PER_QUERY / 2) {
        let rows = room_member::Entity::find()
            .select_only()
            .column(room_member::Column::RoomId)
            .column(room_member::Column::UserId)
            .filter(room_member::Column::RoomId.is_in(chunk.iter().map(|p| p.0)))
            .filter(room_member::Column::UserId.is_in(chunk.iter().map(|p| p.1)))
            .into_tuple::<(i64, i64)>()
            .all(db)
            .await?;
        members.extend(rows.into_iter().filter(|p| wanted.contains(p)));
    }
    let mut rooms: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let mut names = HashMap::new();
    for chunk in rooms.chunks(super::MAX_IDS_PER_QUERY) {
        names.extend(
            room::Entity::find()
                .select_only()
                .column(room::Column::Id)
                .column(room::Column::Name)
                .filter(room::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple::<(i64, String)>()
                .all(db)
                .await?,
        );
    }
    Ok((members, names))
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
) -> Result<Option<Role>, StoreError> {
    Ok(room_member::Entity::find_by_id((room_id, user_id))
        .one(db)
        .await?
        .map(|m| Role::of(&m.role)))
}

/// Create a room with `owner` as its owner and first member.
///
/// # Errors
/// 409 on `name` if taken.
pub(crate) async fn create(
    db: &DatabaseConnection,
    name: &str,
    topic: Option<String>,
    visibility: Visibility,
    owner: i64,
) -> Result<RoomInfo, StoreError> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let row = room::ActiveModel {
        name: Set(name.to_owned()),
        topic: Set(topic),
        visibility: Set(visibility.as_str().to_owned()),
        owner_id: Set(Some(owner)),
        last_seq: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        kind: Set(RoomKind::Room.as_str().into()),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(super::on_unique("name", "is already taken"))?;
    room_member::ActiveModel {
        room_id: Set(row.id),
        user_id: Set(owner),
        role: Set(Role::Owner.as_str().into()),
        joined_at: Set(now),
        last_read_seq: Set(0),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(info(row))
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
        role: Set(Role::Member.as_str().into()),
        joined_at: Set(Utc::now()),
        last_read_seq: Set(0),
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
    pub visibility: Option<Visibility>,
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
    room: RoomInfo,
    changes: RoomChanges,
) -> Result<RoomInfo, StoreError> {
    let txn = db.begin().await?;
    let room_id = room.id;
    let old_owner = room.owner_id;
    let mut am = room::ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(room_id),
        ..Default::default()
    };
    if let Some(t) = changes.topic {
        am.topic = Set(t);
    }
    if let Some(v) = changes.visibility {
        am.visibility = Set(v.as_str().to_owned());
    }
    if let Some(new_owner) = changes.owner_id.filter(|id| Some(*id) != old_owner) {
        let set_role = |user_id: i64, role: &str| {
            room_member::Entity::update_many()
                .col_expr(room_member::Column::Role, Expr::value(role))
                .filter(room_member::Column::RoomId.eq(room_id))
                .filter(room_member::Column::UserId.eq(user_id))
        };
        if set_role(new_owner, Role::Owner.as_str())
            .exec(&txn)
            .await?
            .rows_affected
            == 0
        {
            return Err(StoreError::NotMember);
        }
        if let Some(old) = old_owner {
            set_role(old, Role::Member.as_str()).exec(&txn).await?;
        }
        am.owner_id = Set(Some(new_owner));
    }
    am.updated_at = Set(Utc::now());
    let row = am.update(&txn).await?;
    txn.commit().await?;
    Ok(info(row))
}

pub(crate) async fn delete(db: &DatabaseConnection, room_id: i64) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    super::search::forget_room(&txn, room_id).await?;
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
    row: RoomInfo,
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
    let members = if row.is_dm() {
        Some(
            dm_members(db, &[row.id])
                .await?
                .remove(&row.id)
                .unwrap_or_default(),
        )
    } else {
        None
    };
    Ok(Room {
        id: row.id,
        name: row.name,
        topic: row.topic,
        visibility: row.visibility.as_str().to_owned(),
        members,
        kind: row.kind.as_str().to_owned(),
        owner,
        member_count,
        online_count,
        last_seq: row.last_seq,
        created_at: row.created_at,
        last_read_seq: None,
        unread: None,
        mentions: None,
    })
}

/// The wire form of a page of rooms in three queries whatever its length (member counts,
/// owners); `online` gives each room's online count.
pub(crate) async fn to_wire_many(
    db: &DatabaseConnection,
    rows: Vec<RoomInfo>,
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
    let dms: Vec<i64> = rows.iter().filter(|r| r.is_dm()).map(|r| r.id).collect();
    let mut people = dm_members(db, &dms).await?;
    Ok(rows
        .into_iter()
        .map(|row| Room {
            id: row.id,
            member_count: counts.get(&row.id).copied().unwrap_or(0),
            online_count: online.get(&row.id).copied().unwrap_or(0),
            owner: row.owner_id.and_then(|id| owners.get(&id).cloned()),
            members: row
                .is_dm()
                .then(|| people.remove(&row.id).unwrap_or_default()),
            kind: row.kind.as_str().to_owned(),
            name: row.name,
            topic: row.topic,
            visibility: row.visibility.as_str().to_owned(),
            last_seq: row.last_seq,
            created_at: row.created_at,
            last_read_seq: None,
            unread: None,
            mentions: None,
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
) -> Result<(Vec<RoomInfo>, Option<String>), StoreError> {
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
                .add(room::Column::Visibility.eq(Visibility::Public.as_str()))
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
    Ok((rows.into_iter().map(info).collect(), next))
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

/// The people of each of the DMs `ids` (two queries per [`super::MAX_IDS_PER_QUERY`] rooms),
/// in user-id order.
async fn dm_members(
    db: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<UserRef>>, sea_orm::DbErr> {
    let mut out: HashMap<i64, Vec<UserRef>> = HashMap::new();
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        let pairs = room_member::Entity::find()
            .select_only()
            .column(room_member::Column::RoomId)
            .column(room_member::Column::UserId)
            .filter(room_member::Column::RoomId.is_in(chunk.iter().copied()))
            .order_by_asc(room_member::Column::UserId)
            .into_tuple::<(i64, i64)>()
            .all(db)
            .await?;
        let mut users: Vec<i64> = pairs.iter().map(|p| p.1).collect();
        users.sort_unstable();
        users.dedup();
        let refs: HashMap<i64, UserRef> = super::users::refs(db, &users)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        for (room, user) in pairs {
            if let Some(u) = refs.get(&user) {
                out.entry(room).or_default().push(u.clone());
            }
        }
    }
    Ok(out)
}

/// The key of the DM of exactly these people (the caller included): their ids, sorted and
/// distinct, joined by `-`.
pub(crate) fn dm_key(people: &[i64]) -> String {
    let mut ids = people.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join("-")
}

/// The stable generated name of the DM with `key`: `dm-` and 24 hex digits of its SHA-256.
fn dm_name(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("dm-{}", &digest[..24])
}

/// The DM with `key`, if it exists.
pub(crate) async fn find_dm(
    db: &impl ConnectionTrait,
    key: &str,
) -> Result<Option<RoomInfo>, StoreError> {
    Ok(room::Entity::find()
        .filter(room::Column::DmKey.eq(key))
        .one(db)
        .await?
        .map(info))
}

/// Now, to the microsecond: what both databases store, so that cursors compare exactly.
pub(crate) fn now_micros() -> chrono::DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// The DM of exactly `people` (ids of existing users, the caller among them): created with
/// all of them as members (`true`), or the existing one (`false`). Atomic under concurrency:
/// the unique `dm_key` lets one transaction create it; a loser of that race (on any replica)
/// finds the winner's room. The caller is a member of the room returned (re-added if they
/// had left it).
///
/// # Errors
/// When the database fails.
pub(crate) async fn create_or_get_dm(
    db: &DatabaseConnection,
    people: &[i64],
    caller: i64,
) -> Result<(RoomInfo, bool), StoreError> {
    let key = dm_key(people);
    if let Some(row) = find_dm(db, &key).await? {
        add_member(db, row.id, caller).await?;
        return Ok((row, false));
    }
    match insert_dm(db, &key, people).await {
        Ok(row) => Ok((info(row), true)),
        Err(e) if super::unique_violation(&e).is_some() => {
            let row = find_dm(db, &key)
                .await?
                .ok_or(StoreError::NotFound("room"))?;
            add_member(db, row.id, caller).await?;
            Ok((row, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// One transaction: the DM row and its members.
async fn insert_dm(
    db: &DatabaseConnection,
    key: &str,
    people: &[i64],
) -> Result<RoomRow, sea_orm::DbErr> {
    let txn = db.begin().await?;
    let now = now_micros();
    let row = room::ActiveModel {
        name: Set(dm_name(key)),
        topic: Set(None),
        visibility: Set(Visibility::Private.as_str().into()),
        owner_id: Set(None),
        last_seq: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        kind: Set(RoomKind::Dm.as_str().into()),
        dm_key: Set(Some(key.to_owned())),
        active_at: Set(Some(now)),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let mut ids = people.to_vec();
    ids.sort_unstable();
    ids.dedup();
    room_member::Entity::insert_many(ids.into_iter().map(|user_id| room_member::ActiveModel {
        room_id: Set(row.id),
        user_id: Set(user_id),
        role: Set(Role::Member.as_str().into()),
        joined_at: Set(now),
        last_read_seq: Set(0),
    }))
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// One page of the caller's DMs, most recent activity first (ties by id, newest first). The
/// cursor is the last room's activity (microseconds) and id.
pub(crate) async fn list_dms(
    db: &DatabaseConnection,
    caller: i64,
    limit: u64,
    cursor: Option<(chrono::DateTime<Utc>, i64)>,
) -> Result<(Vec<RoomInfo>, Option<String>), StoreError> {
    let mine = sea_orm::sea_query::Query::select()
        .column(room_member::Column::RoomId)
        .from(room_member::Entity)
        .and_where(Expr::col(room_member::Column::UserId).eq(caller))
        .to_owned();
    let mut query = room::Entity::find()
        .filter(room::Column::Kind.eq(RoomKind::Dm.as_str()))
        .filter(room::Column::Id.in_subquery(mine))
        .order_by_desc(room::Column::ActiveAt)
        .order_by_desc(room::Column::Id)
        .limit(limit + 1);
    if let Some((at, id)) = cursor {
        query = query.filter(
            Condition::any().add(room::Column::ActiveAt.lt(at)).add(
                Condition::all()
                    .add(room::Column::ActiveAt.eq(at))
                    .add(room::Column::Id.lt(id)),
            ),
        );
    }
    let mut rows = query.all(db).await?;
    let next = if rows.len() as u64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|r| {
            let at = r.active_at.unwrap_or(r.created_at).timestamp_micros();
            format!("{at}_{}", r.id)
        })
    } else {
        None
    };
    Ok((rows.into_iter().map(info).collect(), next))
}

/// The caller's read state in each of `ids` they are a member of: ONE grouped query per
/// [`super::MAX_IDS_PER_QUERY`] rooms, whatever the page's length.
pub(crate) async fn read_states(
    db: &DatabaseConnection,
    user: i64,
    ids: &[i64],
) -> Result<HashMap<i64, ReadState>, sea_orm::DbErr> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        // Each placeholder once (SQLite binds `?` by position): the user id three times.
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "SELECT rm.room_id, rm.last_read_seq, COUNT(m.id) AS unread, COUNT(mm.user_id) AS mentions \
             FROM room_members rm \
             LEFT JOIN messages m ON m.room_id = rm.room_id AND m.seq > rm.last_read_seq \
                 AND m.deleted_at IS NULL AND (m.author_id IS NULL OR m.author_id <> $1) \
             LEFT JOIN message_mentions mm ON mm.message_id = m.id AND mm.user_id = $2 \
             WHERE rm.user_id = $3 AND rm.room_id IN ({}) \
             GROUP BY rm.room_id, rm.last_read_seq",
            list.join(",")
        );
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() + 3);
        values.extend([user.into(), user.into(), user.into()]);
        values.extend(chunk.iter().map(|id| sea_orm::Value::from(*id)));
        for row in db.query_all_raw(super::raw(db, &sql, values)).await? {
            out.insert(
                row.try_get::<i64>("", "room_id")?,
                ReadState {
                    last_read_seq: row.try_get("", "last_read_seq")?,
                    unread: row.try_get("", "unread")?,
                    mentions: row.try_get("", "mentions")?,
                },
            );
        }
    }
    Ok(out)
}

/// Move the member's `last_read_seq` forward to `seq` (never backwards); `true` if it moved.
pub(crate) async fn mark_read(
    db: &DatabaseConnection,
    room_id: i64,
    user_id: i64,
    seq: i64,
) -> Result<bool, StoreError> {
    let res = room_member::Entity::update_many()
        .col_expr(room_member::Column::LastReadSeq, Expr::value(seq))
        .filter(room_member::Column::RoomId.eq(room_id))
        .filter(room_member::Column::UserId.eq(user_id))
        .filter(room_member::Column::LastReadSeq.lt(seq))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

/// The member's `last_read_seq` (`None` if not a member).
pub(crate) async fn last_read_seq(
    db: &impl ConnectionTrait,
    room_id: i64,
    user_id: i64,
) -> Result<Option<i64>, sea_orm::DbErr> {
    room_member::Entity::find_by_id((room_id, user_id))
        .select_only()
        .column(room_member::Column::LastReadSeq)
        .into_tuple::<i64>()
        .one(db)
        .await
}
