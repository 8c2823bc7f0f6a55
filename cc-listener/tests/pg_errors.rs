//! A new user's typos in a `postgres://` URL: each one answered with
//! PostgreSQL's own words (or, for a refused connection, the address
//! tried), by `cc-listener serve` and by `cc-listener keys list` alike, and
//! no banner of addresses from a listener whose database failed.
//!
//! Before: every one of them printed `connecting to PostgreSQL: db error`
//! (a refused connection: `error connecting to server: Connection refused`
//! without an address), after a banner announcing addresses that were
//! never served.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;
mod pg_common;

use cc_testkit::TempDir;
use cc_testkit::pg::Cluster;
use pg_common::{keys_list_fails, serve_fails};

/// Both commands fail on `db`, no banner is printed, and every stderr
/// holds each of `says`.
fn typo_is_explained(db: &str, says: &[&str]) {
    let dir = TempDir::new("pg-errors");
    let (out, serve_err) = serve_fails(&dir, db);
    assert!(
        !out.contains("agents on"),
        "the banner was printed by a listener whose database failed: {out}"
    );
    let keys_err = keys_list_fails(db);
    for err in [&serve_err, &keys_err] {
        for s in says {
            assert!(err.contains(s), "{s:?} is not in:\n{err}");
        }
        assert!(
            !err.contains("db error"),
            "the client library's word instead of the server's: {err}"
        );
    }
}

#[test]
fn a_database_that_does_not_exist_is_named_by_postgres() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    typo_is_explained(
        &cluster.url("croncomander"),
        &[
            r#"database "croncomander" does not exist"#,
            "SQLSTATE 3D000",
            &format!("127.0.0.1:{}", cluster.port()),
        ],
    );
}

#[test]
fn a_role_that_does_not_exist_is_named_by_postgres() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    typo_is_explained(
        &format!("postgres://cronuser@127.0.0.1:{}/postgres", cluster.port()),
        &[r#"role "cronuser" does not exist"#, "SQLSTATE 28000"],
    );
}

#[test]
fn a_wrong_password_is_named_by_postgres_and_never_shown() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.add_password_role("cc", "right-password");
    let url = format!(
        "postgres://cc:wrong-password@127.0.0.1:{}/postgres",
        cluster.port()
    );
    typo_is_explained(
        &url,
        &[
            r#"password authentication failed for user "cc""#,
            "SQLSTATE 28P01",
        ],
    );
    let dir = TempDir::new("pg-errors");
    let (_, err) = serve_fails(&dir, &url);
    assert!(!err.contains("wrong-password"), "the password shown: {err}");
}

#[test]
fn a_port_nothing_listens_on_is_named() {
    // Bound, then released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    typo_is_explained(
        &format!("postgres://postgres@127.0.0.1:{port}/cc"),
        &[
            &format!("connecting to PostgreSQL: 127.0.0.1:{port}"),
            "Connection refused",
        ],
    );
}
