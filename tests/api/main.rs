//! The integration-test binary: every test drives the real server over HTTP/WebSocket on
//! 127.0.0.1, against SQLite and (with `TEST_DATABASE_URL`) PostgreSQL.

mod support;

mod auth;
mod budget;
mod cluster;
mod config_options;
mod dms;
mod failover;
mod hardening;
mod healing;
mod limits;
mod messages;
mod openapi;
mod ops;
mod pg_restart;
mod reactions;
mod rooms;
mod users;
mod ws;
