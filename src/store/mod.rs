//! Persistence services over SeaORM. They take and return domain types from [`crate::model`];
//! entities stay in here. SQL that must be identical on SQLite and PostgreSQL goes through
//! SeaQuery builders; the two raw statements (the `seq` counter) pick their placeholder style
//! from the connection's backend.

pub mod messages;
pub mod rooms;
pub mod sessions;
pub mod users;

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

/// A raw statement with `$1`-style placeholders, rewritten to `?` for SQLite.
pub(crate) fn raw(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => sql.to_owned(),
        _ => {
            let mut out = String::with_capacity(sql.len());
            let mut chars = sql.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        }
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Escape `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(crate) fn like_pattern(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 2);
    out.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}
