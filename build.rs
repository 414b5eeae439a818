//! Build script: `cfg(pg_tests)` when `TEST_DATABASE_URL` is set, so that the tests that need
//! PostgreSQL (the `postgres` variants and the cluster tests in `tests/api`) run then, and are
//! otherwise reported as ignored with the reason, never as passed; `cfg(private_pg)` when an
//! `initdb` is installed under /usr/lib/postgresql (tests that start their own PostgreSQL),
//! `cfg(pg_stat_statements)` when that installation has the extension, and
//! `cfg(redis_server)` when `redis-server` is on `PATH` (the work-budget test needs all three).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rustc-check-cfg=cfg(private_pg)");
    println!("cargo::rustc-check-cfg=cfg(pg_stat_statements)");
    println!("cargo::rustc-check-cfg=cfg(redis_server)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=pg_tests");
    }
    // A PostgreSQL installation the tests can start privately (initdb + pg_ctl), e.g. to
    // restart it under traffic: without one those tests are ignored, with the reason.
    // (watched only where it exists: a missing path would rerun this script on every build)
    if std::path::Path::new("/usr/lib/postgresql").exists() {
        println!("cargo::rerun-if-changed=/usr/lib/postgresql");
    }
    let installs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path())
                .filter(|d| d.join("bin/initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    if !installs.is_empty() {
        println!("cargo::rustc-cfg=private_pg");
    }
    // The work-budget test counts statements with pg_stat_statements (PostgreSQL's contrib,
    // in the installation the tests start: the newest) and starts its own redis-server.
    let newest = installs.iter().max_by_key(|d| {
        d.file_name()
            .and_then(|v| v.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if newest.is_some_and(|d| d.join("lib/pg_stat_statements.so").exists()) {
        println!("cargo::rustc-cfg=pg_stat_statements");
    }
    let redis_server = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    if let Some(path) = redis_server {
        // (watched only where it exists, as above)
        println!("cargo::rerun-if-changed={}", path.display());
        println!("cargo::rustc-cfg=redis_server");
    }
}
