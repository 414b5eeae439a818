//! Full-text search over messages (docs/protocol.md#conversations), newest first, only live messages of rooms the
//! reader may read.
//!
//! * PostgreSQL: `websearch_to_tsquery` against `message_search` (a tsvector per message, GIN
//!   index), which [`index_step`] fills in the background: the group commit computes and
//!   indexes nothing, so search costs the send path nothing. A message becomes searchable
//!   within [`INDEX_IDLE_EVERY`] (plus the time of one pass) of its commit; edits re-index and
//!   deletions un-index in their own transaction ([`reindex`], [`unindex`]). A stale entry (an
//!   indexer pass that read a message just before its deletion) is never shown: hits are
//!   joined to live messages and highlighted from their current content.
//! * SQLite: an FTS5 table (porter stemmer) kept by triggers, searchable at once (one writer,
//!   nothing to contend with).

use std::time::Duration;

use entity::message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, FromQueryResult, Value};

use super::StoreError;
use crate::domain::model::{Message, SearchHit};

/// Whom a cross-room query reads for: the condition of `chat::access::may_read` in SQL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader {
    pub(crate) user_id: i64,
    pub(crate) admin: bool,
}

/// Marks around each match in a highlight, as the databases write them: C0 controls, which
/// no stored text contains (validation refuses them), so they cannot be confused with content.
const START: char = '\u{2}';
const STOP: char = '\u{3}';

/// One page of matches for `q`, newest first, from messages with an id below `before`; the
/// last id of the page when there are more.
///
/// # Errors
/// The database failed.
/// The search statement and its values (`None`: a query that matches nothing).
fn search_sql(
    postgres: bool,
    reader: Reader,
    q: &str,
    room_id: Option<i64>,
    before: Option<i64>,
    limit: u64,
) -> Option<(String, Vec<Value>)> {
    let mut values: Vec<Value> = Vec::new();
    let mut arg = |v: Value| {
        values.push(v);
        format!("${}", values.len())
    };
    // Placeholders are numbered in the order they appear in the text (SQLite binds by
    // position).
    let mut sql = if postgres {
        let opts = arg(format!(
            "StartSel={START}, StopSel={STOP}, MaxWords=30, MinWords=10, MaxFragments=2, FragmentDelimiter=\" … \""
        )
        .into());
        let query = arg(q.to_owned().into());
        format!(
            "SELECT s.*, ts_headline('english', s.content, s.tsq, {opts}) AS highlight FROM ( \
                SELECT m.*, r.name AS room_name, tsq FROM message_search ms \
                JOIN messages m ON m.id = ms.message_id \
                JOIN rooms r ON r.id = m.room_id \
                CROSS JOIN websearch_to_tsquery('english', {query}) AS tsq \
                WHERE m.deleted_at IS NULL AND ms.tsv @@ tsq"
        )
    } else {
        let fts = fts5_query(q)?;
        let query = arg(fts.into());
        format!(
            "SELECT m.*, r.name AS room_name, \
                snippet(messages_fts, 0, char(2), char(3), ' … ', 24) AS highlight \
             FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid \
             JOIN rooms r ON r.id = m.room_id \
             WHERE messages_fts MATCH {query} AND m.deleted_at IS NULL"
        )
    };
    if !reader.admin {
        let user = arg(reader.user_id.into());
        sql.push_str(&format!(
            " AND (r.visibility = 'public' OR EXISTS (SELECT 1 FROM room_members rm \
                WHERE rm.room_id = m.room_id AND rm.user_id = {user}))"
        ));
    }
    if let Some(room_id) = room_id {
        let room = arg(room_id.into());
        sql.push_str(&format!(" AND m.room_id = {room}"));
    }
    if let Some(before) = before {
        let before = arg(before.into());
        sql.push_str(&format!(" AND m.id < {before}"));
    }
    let n = arg(i64::try_from(limit + 1).unwrap_or(i64::MAX).into());
    sql.push_str(&format!(" ORDER BY m.id DESC LIMIT {n}"));
    if postgres {
        sql.push_str(") AS s ORDER BY s.id DESC");
    }
    Some((sql, values))
}

pub(crate) async fn messages(
    db: &DatabaseConnection,
    reader: Reader,
    q: &str,
    room_id: Option<i64>,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<SearchHit>, Option<i64>), StoreError> {
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    let Some((sql, values)) = search_sql(postgres, reader, q, room_id, before, limit) else {
        return Ok((Vec::new(), None));
    };
    let rows = db.query_all_raw(super::raw(db, &sql, values)).await?;
    let mut found: Vec<(String, message::Model, String)> = Vec::with_capacity(rows.len());
    for row in rows {
        found.push((
            row.try_get("", "room_name")?,
            message::Model::from_query_result(&row, "")?,
            row.try_get::<Option<String>>("", "highlight")?
                .unwrap_or_default(),
        ));
    }
    let more = found.len() as u64 > limit;
    if more {
        found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let next = if more {
        found.last().map(|(_, m, _)| m.id)
    } else {
        None
    };
    let highlights: Vec<String> = found.iter().map(|(_, _, h)| highlight(h)).collect();
    let messages: Vec<Message> = super::messages::to_wire_many(
        db,
        found
            .iter()
            .map(|(room, m, _)| (room.as_str(), m.clone()))
            .collect(),
        Some(reader.user_id),
    )
    .await?;
    Ok((
        messages
            .into_iter()
            .zip(highlights)
            .map(|(message, highlight)| SearchHit { message, highlight })
            .collect(),
        next,
    ))
}

/// How often the PostgreSQL indexer sweeps the rooms while there is work.
pub(crate) const INDEX_EVERY: Duration = Duration::from_millis(200);

/// How often it sweeps while the last sweep found nothing (an idle cluster reads its rooms'
/// counters once a second).
pub(crate) const INDEX_IDLE_EVERY: Duration = Duration::from_secs(1);

/// Rooms per indexing statement, and the messages it indexes at most, shared by those rooms
/// (64 each for 16 rooms, all 1 024 for one busy room): a statement lasts a few milliseconds.
/// Short statements matter: while any statement runs, PostgreSQL cannot prune the row
/// versions that commits leave behind on the rooms' rows (thousands per second in a busy
/// cluster), and every commit then walks them.
const ROOMS_PER_STEP: i64 = 16;
const MESSAGES_PER_STEP: i64 = 1024;

/// Key of the advisory lock that lets one replica at a time index. Each step only tries it
/// (`pg_try_advisory_xact_lock`), so a session that holds it pauses indexing cluster-wide
/// (exported as `chat::SEARCH_INDEX_LOCK`).
pub const INDEX_LOCK: i64 = 0x6368_6174_5f73_7263; // "chat_src"

/// Whether this database indexes messages in the background ([`index_step`]): PostgreSQL.
/// The one test of the backend for the indexer and for [`reindex`], [`unindex`] and
/// [`forget_room`] (on SQLite the FTS5 triggers do their work).
pub(crate) fn indexed_in_background(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// What one indexing step did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexStep {
    /// Messages indexed.
    pub(crate) indexed: u64,
    /// The highest room id looked at (the next step starts after it); `None` when no room
    /// after the cursor was behind (the sweep is over) or another replica held the lock.
    pub(crate) last_room: Option<i64>,
    /// Whether a room had more than its share of the step to index (the next sweep starts
    /// at once).
    pub(crate) more: bool,
}

/// PostgreSQL: index the next messages of up to [`ROOMS_PER_STEP`] rooms with an id above
/// `after` that are behind, in one short statement (its own transaction) under an advisory
/// lock, so that one replica at a time indexes. Each room's progress is a `seq`: its messages
/// commit in `seq` order (the room's row lock), so this statement's snapshot holds every
/// message of a room up to that room's `last_seq`, and nothing is skipped.
/// `ON CONFLICT DO NOTHING` keeps an edit's newer entry ([`reindex`]).
///
/// # Errors
/// The database failed (the next sweep tries again; nothing is lost).
pub(crate) async fn index_step(
    db: &DatabaseConnection,
    after: i64,
) -> Result<IndexStep, StoreError> {
    const SQL: &str = "WITH lock AS ( \
            SELECT pg_try_advisory_xact_lock($1) AS held \
        ), behind AS ( \
            SELECT r.id AS room_id, COALESCE(p.seq, 0) AS from_seq, r.last_seq \
            FROM rooms r LEFT JOIN search_progress p ON p.room_id = r.id \
            WHERE (SELECT held FROM lock) AND r.id > $3 AND r.last_seq > COALESCE(p.seq, 0) \
            ORDER BY r.id LIMIT $4 \
        ), todo AS ( \
            SELECT room_id, from_seq, \
                LEAST(last_seq, from_seq + $2 / count(*) OVER ()) AS to_seq, \
                last_seq > from_seq + $2 / count(*) OVER () AS more \
            FROM behind \
        ), indexed AS ( \
            INSERT INTO message_search (message_id, tsv) \
            SELECT m.id, to_tsvector('english', m.content) \
            FROM todo t JOIN messages m ON m.room_id = t.room_id \
                AND m.seq > t.from_seq AND m.seq <= t.to_seq \
            WHERE m.deleted_at IS NULL \
            ON CONFLICT (message_id) DO NOTHING \
            RETURNING 1 \
        ), advanced AS ( \
            INSERT INTO search_progress (room_id, seq) SELECT room_id, to_seq FROM todo \
            ON CONFLICT (room_id) DO UPDATE \
                SET seq = GREATEST(search_progress.seq, excluded.seq) \
            RETURNING room_id \
        ) \
        SELECT (SELECT count(*) FROM indexed) AS indexed, \
            (SELECT max(room_id) FROM advanced) AS last_room, \
            COALESCE((SELECT bool_or(more) FROM todo), false) AS more";
    let row = db
        .query_one_raw(super::raw(
            db,
            SQL,
            vec![
                INDEX_LOCK.into(),
                MESSAGES_PER_STEP.into(),
                after.into(),
                ROOMS_PER_STEP.into(),
            ],
        ))
        .await?;
    Ok(match row {
        Some(row) => IndexStep {
            indexed: u64::try_from(row.try_get::<i64>("", "indexed")?).unwrap_or(0),
            last_room: row.try_get("", "last_room")?,
            more: row.try_get("", "more")?,
        },
        None => IndexStep::default(),
    })
}

/// PostgreSQL: index a message's new content now (an edit), in the edit's transaction.
pub(crate) async fn reindex(
    txn: &impl ConnectionTrait,
    row: &message::Model,
) -> Result<(), sea_orm::DbErr> {
    if !indexed_in_background(txn) {
        return Ok(());
    }
    txn.execute_raw(super::raw(
        txn,
        "INSERT INTO message_search (message_id, tsv) VALUES ($1, to_tsvector('english', $2)) \
         ON CONFLICT (message_id) DO UPDATE SET tsv = excluded.tsv",
        vec![row.id.into(), row.content.clone().into()],
    ))
    .await?;
    Ok(())
}

/// PostgreSQL: a deleted message leaves the index, in the deletion's transaction.
pub(crate) async fn unindex(txn: &impl ConnectionTrait, id: i64) -> Result<(), sea_orm::DbErr> {
    if !indexed_in_background(txn) {
        return Ok(());
    }
    txn.execute_raw(super::raw(
        txn,
        "DELETE FROM message_search WHERE message_id = $1",
        vec![id.into()],
    ))
    .await?;
    Ok(())
}

/// PostgreSQL: a deleted room's entries and progress go, in the deletion's transaction,
/// before its messages (the tables have no foreign keys: see the migration).
pub(crate) async fn forget_room(
    txn: &impl ConnectionTrait,
    room_id: i64,
) -> Result<(), sea_orm::DbErr> {
    if !indexed_in_background(txn) {
        return Ok(());
    }
    for sql in [
        "DELETE FROM message_search WHERE message_id IN \
            (SELECT id FROM messages WHERE room_id = $1)",
        "DELETE FROM search_progress WHERE room_id = $1",
    ] {
        txn.execute_raw(super::raw(txn, sql, vec![room_id.into()]))
            .await?;
    }
    Ok(())
}

/// The database's highlight as safe HTML: the text escaped, the matches in `<mark>`.
fn highlight(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            START => out.push_str("<mark>"),
            STOP => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A user's query as an FTS5 expression that cannot be a syntax error: `"quoted phrases"`
/// stay phrases, every other word becomes a phrase of its letters and digits (FTS5 operators,
/// column filters and stray quotes lose their meaning), all of them required. `None` when
/// nothing searchable is left.
fn fts5_query(q: &str) -> Option<String> {
    let mut phrases: Vec<String> = Vec::new();
    let mut push = |text: &str| {
        let words: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        if !words.is_empty() {
            phrases.push(format!("\"{}\"", words.join(" ")));
        }
    };
    for (i, part) in q.split('"').enumerate() {
        if i % 2 == 1 {
            push(part);
        } else {
            for word in part.split_whitespace() {
                push(word);
            }
        }
    }
    (!phrases.is_empty()).then(|| phrases.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_queries_are_always_well_formed() {
        assert_eq!(
            fts5_query("hello world").as_deref(),
            Some(r#""hello" "world""#)
        );
        assert_eq!(
            fts5_query(r#"say "big red dog" now"#).as_deref(),
            Some(r#""say" "big red dog" "now""#)
        );
        assert_eq!(
            fts5_query(r#"a* OR b:c NEAR( "unclosed"#).as_deref(),
            Some(r#""a" "OR" "b c" "NEAR" "unclosed""#)
        );
        assert_eq!(fts5_query(r#"!!! "" ( )"#), None);
        assert_eq!(fts5_query("don't"), Some(r#""don t""#.into()));
    }

    #[test]
    fn highlights_are_escaped() {
        assert_eq!(
            highlight("<b>\u{2}x\u{3}</b> & 'y'"),
            "&lt;b&gt;<mark>x</mark>&lt;/b&gt; &amp; &#39;y&#39;"
        );
    }
}
