//! TLS to PostgreSQL, against a cluster started with `ssl = on` and a
//! certificate of a CA made here: `sslmode=require` encrypts,
//! `verify-full` with the CA (`sslrootcert`) encrypts and checks the
//! server, and a server of another CA or with a certificate for another
//! name is refused with the reason.
//!
//! Before: `sslmode=require` was refused at start ("not built into
//! cc-listener") and `verify-full` was not a setting the client knew.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;
mod pg_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cc_testkit::TempDir;
use cc_testkit::listener::ListenerProcess;
use cc_testkit::pg::Cluster;
use pg_common::{keys_list_fails, serve_fails};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

type Ca = CertifiedIssuer<'static, KeyPair>;

/// A CA, and its certificate written to `dir/file`.
fn make_ca(dir: &TempDir, file: &str) -> (Ca, PathBuf) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, file);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, ca.pem()).unwrap();
    (ca, path)
}

/// A server certificate for `names`, signed by `ca`: (certificate, key).
fn server_cert(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `cc-listener keys list --db DB`, which must succeed.
fn keys_list_works(db: &str) {
    let out = Command::new(common::bin())
        .args(["keys", "list", "--db", db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys list on {db}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The connections to database `db`, by whether they use TLS:
/// (encrypted, plain).
fn sessions(cluster: &Cluster, db: &str) -> (u32, u32) {
    let count = |ssl: &str| {
        cluster
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                     WHERE a.datname = '{db}' AND s.ssl = {ssl}"
                ),
            )
            .parse()
            .unwrap()
    };
    (count("true"), count("false"))
}

fn with(url: &str, query: &str) -> String {
    format!("{url}?{query}")
}

fn root(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[test]
fn require_and_verify_full_with_the_ca_connect_encrypted() {
    let dir = TempDir::new("pg-tls");
    let (ca, ca_file) = make_ca(&dir, "ca.pem");
    let (cert, key) = server_cert(&ca, &["127.0.0.1"]);
    let Some(cluster) = Cluster::start_tls(&cert, &key) else {
        return;
    };
    let url = cluster.create_db("fleet");
    for query in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&{}", root(&ca_file)),
    ] {
        let db = with(&url, &query);
        let home = TempDir::new("pg-tls-listener");
        let listener = ListenerProcess::start_shared(common::bin(), home.path(), &db, "");
        // The store's two connections and the doorbell's.
        let (tls, plain) = sessions(&cluster, "fleet");
        assert!(
            tls >= 2 && plain == 0,
            "{query}: {tls} with TLS, {plain} without"
        );
        keys_list_works(&db);
        drop(listener);
    }
}

#[test]
fn verify_full_refuses_another_ca_and_a_certificate_for_another_name() {
    let dir = TempDir::new("pg-tls");
    let (ca, ca_file) = make_ca(&dir, "ca.pem");
    let (_, other_ca_file) = make_ca(&dir, "other-ca.pem");
    // A certificate of the right CA, for a name that is not the one the
    // URL reaches the server by.
    let (cert, key) = server_cert(&ca, &["db.example"]);
    let Some(cluster) = Cluster::start_tls(&cert, &key) else {
        return;
    };
    let url = cluster.create_db("fleet");
    for (query, says) in [
        (
            format!("sslmode=verify-full&{}", root(&other_ca_file)),
            "not signed by a CA in sslrootcert",
        ),
        (
            format!("sslmode=verify-full&{}", root(&ca_file)),
            r#"certificate not valid for name "127.0.0.1""#,
        ),
        // libpq's `require` with a CA checks the chain.
        (
            format!("sslmode=require&{}", root(&other_ca_file)),
            "UnknownIssuer",
        ),
    ] {
        let db = with(&url, &query);
        let home = TempDir::new("pg-tls-refused");
        let (out, serve_err) = serve_fails(&home, &db);
        assert!(!out.contains("agents on"), "{query}: banner printed: {out}");
        let keys_err = keys_list_fails(&db);
        for err in [serve_err, keys_err] {
            for s in [
                says,
                "invalid peer certificate",
                &format!("connecting to PostgreSQL: 127.0.0.1:{}", cluster.port()),
            ] {
                assert!(err.contains(s), "{query}: {s:?} not in:\n{err}");
            }
        }
    }
    // The chain without the name: `verify-ca` takes it.
    keys_list_works(&with(
        &url,
        &format!("sslmode=verify-ca&{}", root(&ca_file)),
    ));
}

#[test]
fn require_refuses_a_server_without_tls() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = with(&cluster.url("postgres"), "sslmode=require");
    let err = keys_list_fails(&db);
    assert!(
        err.contains("sslmode=require") && err.contains("does not support TLS"),
        "{err}"
    );
    // The default (`prefer`) falls back to a plain connection, as libpq's.
    keys_list_works(&cluster.url("postgres"));
}
