//! Build script: `cfg(pg_tests)` when `TEST_DATABASE_URL` is set, so that the tests that need
//! PostgreSQL (the `postgres` variants and the cluster tests in `tests/api`) run then, and are
//! otherwise reported as ignored with the reason, never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=pg_tests");
    }
}
