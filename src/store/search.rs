//! Full-text search over messages (SPEC §11): PostgreSQL's `websearch_to_tsquery` against the
//! GIN expression index of the migration, SQLite's FTS5 table (porter stemmer) kept by
//! triggers. Newest first; only live messages of rooms the reader may read.

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
pub(crate) async fn messages(
    db: &DatabaseConnection,
    reader: Reader,
    q: &str,
    room_id: Option<i64>,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<SearchHit>, Option<i64>), StoreError> {
    let postgres = db.get_database_backend() == DbBackend::Postgres;
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
                SELECT m.*, r.name AS room_name, tsq FROM messages m \
                JOIN rooms r ON r.id = m.room_id \
                CROSS JOIN websearch_to_tsquery('english', {query}) AS tsq \
                WHERE m.deleted_at IS NULL AND to_tsvector('english', m.content) @@ tsq"
        )
    } else {
        let Some(fts) = fts5_query(q) else {
            return Ok((Vec::new(), None));
        };
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
