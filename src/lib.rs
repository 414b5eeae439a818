//! # chat-server
//!
//! A horizontally scalable chat service: stateless axum replicas, SeaORM storage (SQLite or
//! PostgreSQL), and fan-out through an in-process bus or Redis pub/sub. The library is
//! `chat_server` (the binary is `chat-server`); its service layer is the module `chat`.
//!
//! The crate reads top to bottom along a message's path; each layer imports only the layers
//! below it, as `.ci/layers` declares and CI checks:
//!
//! 1. `app`: builds the services, assembles the router, owns the lifecycle;
//! 2. `http` (REST) and `ws` (WebSockets): parse, call one `chat` use-case, answer; neither
//!    imports the other, and neither reaches the database, the bus or Redis;
//! 3. `chat`: the service layer — one use-case per operation, each rule in one place (access,
//!    the send pipeline, revocation, presence, limits), on sub-services with private fields;
//! 4. `fanout` (per-room ordering and gap fill into each socket's bounded queue, and why a
//!    socket closes), `store` (all SQL), `bus` (bytes between replicas, local or Redis, and the
//!    routing of events) and `kv` (Redis storage: the connections, every key name, presence,
//!    deny-list and limit entries);
//! 5. `domain`: wire types, a room as the service knows it, validation rules, events; no I/O;
//! 6. `config`, `telemetry` at the bottom.
//!
//! Only what the binary and the tests need is public: [`Config`], [`AppState`], [`run`],
//! [`run_with_internal`].

mod app;
mod bus;
mod chat;
pub mod config;
mod domain;
mod fanout;
mod http;
mod kv;
mod store;
pub mod telemetry;
mod ws;

pub use app::{AppState, connect_db, create_admin, migrate, run, run_with_internal};
pub use config::Config;
/// Key of the PostgreSQL advisory lock the background search indexer takes for each step: a
/// session holding it (`SELECT pg_advisory_lock(…)`) pauses indexing on every replica until it
/// unlocks or disconnects; new messages stay unsearchable meanwhile, and nothing is skipped.
pub use store::search::INDEX_LOCK as SEARCH_INDEX_LOCK;
