//! Build script: `cfg(pg_tests)` when `TEST_DATABASE_URL` is set, so that the tests that need
//! PostgreSQL (the `postgres` variants and the cluster tests in `tests/api`) run then, and are
//! otherwise reported as ignored with the reason, never as passed; `cfg(private_pg)` when an
//! `initdb` is installed under /usr/lib/postgresql (tests that start their own PostgreSQL).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rustc-check-cfg=cfg(private_pg)");
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
    let initdb = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|dirs| {
        dirs.filter_map(Result::ok)
            .any(|d| d.path().join("bin/initdb").exists())
    });
    if initdb {
        println!("cargo::rustc-cfg=private_pg");
    }
}
