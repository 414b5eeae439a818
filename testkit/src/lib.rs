//! `chat-testkit`: local clusters of the built `chat-server` for the API tests, `chat-bench`
//! (`soak`, `cluster`) and the test scripts. Every process is owned by a guard that stops it
//! when dropped (by its own PID, never by name), also when a test panics or a run is
//! interrupted; temporary directories and databases go with it.
//!
//! - [`RedisServer`]: a private `redis-server` on a free port; kill, stop, start again on
//!   the same port.
//! - [`PgDatabase`]: a fresh database on a running PostgreSQL server, dropped `WITH (FORCE)`.
//! - [`PrivatePostgres`]: `initdb` + `pg_ctl` on a free port (as the `postgres` user when
//!   root); stop, start again, restart.
//! - [`Nginx`]: round-robin load balancer with WebSocket upgrades.
//! - [`Replica`]: the server binary with an explicit environment in its own directory;
//!   waits for `/readyz`; signal, kill, wait for the exit; log capture.
//! - [`Cluster`]: all of the above together ([`Cluster::builder`]).
//!
//! Starting is async (tokio); the PostgreSQL calls block until `initdb`/`pg_ctl` are done.

mod cluster;
mod nginx;
mod postgres;
mod process;
mod redis;
mod replica;

pub use cluster::{Cluster, ClusterBuilder, ClusterDatabase, Database};
pub use nginx::{Nginx, NginxOptions};
pub use postgres::{
    DEFAULT_SETTINGS, PgDatabase, PrivatePostgres, postgres_bin_dir, psql, with_database,
};
pub use process::{ChildGuard, command, free_port, is_root, random_hex, signal_pid, tail};
pub use redis::RedisServer;
pub use replica::{Replica, ReplicaOptions, listening_addr, ready};
