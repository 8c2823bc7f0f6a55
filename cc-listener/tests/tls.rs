//! `wss://`: the listener serves TLS from certificate and key files, and an
//! agent that trusts that certificate registers over it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::sync::Arc;
use std::time::Duration;

use cc_testkit::TempDir;
use cc_testkit::agent::AgentProcess;
use cc_testkit::listener::ListenerProcess;
use common::bin;
use futures_util::SinkExt;
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A listener serving TLS with a new self-signed certificate for
/// `localhost`, written to `dir/cert.pem` (its key to `dir/key.pem`).
fn tls_listener(dir: &TempDir) -> (ListenerProcess, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    let l = ListenerProcess::start(bin(), dir.path(), &extra);
    (l, cert)
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_register_over_wss_and_plaintext_is_not_spoken_there() {
    let dir = TempDir::new("l-tls");
    let (l, cert) = tls_listener(&dir);
    let key = l.add_key("tls-host");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(l.agent_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://localhost:{}/agent", l.agent_addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("X-CC-API-KEY", HeaderValue::from_str(&key).unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let register = json!({"type": "register", "payload": {"hostname": "tls-host", "os": "linux",
        "arch": "amd64", "tags": [], "executionMode": "user", "isRoot": false}});
    ws.send(Message::Text(register.to_string().into()))
        .await
        .unwrap();
    l.wait_for(Duration::from_secs(10), |l| {
        let agents = l.get("/api/v1/agents").json();
        (agents[0]["hostname"] == "tls-host" && agents[0]["connected"] == true).then_some(())
    });

    // A plaintext WebSocket handshake on the TLS port does not get through.
    let mut plain = format!("ws://{}/agent", l.agent_addr)
        .into_client_request()
        .unwrap();
    plain
        .headers_mut()
        .insert("X-CC-API-KEY", HeaderValue::from_str(&key).unwrap());
    let attempt = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(plain),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "plaintext handshake succeeded on the TLS port"
    );
    ws.close(None).await.ok();
}

/// The agent's own TLS path, as production runs it: the real `cc-agent`
/// with `ca_file` registers over `wss://`; with a CA that did not sign the
/// listener's certificate it stops at the handshake, before the HTTP
/// upgrade that carries its key, and never registers.
#[test]
fn the_real_agent_trusts_its_ca_file_and_nothing_else() {
    let dir = TempDir::new("l-tls-agent");
    let (l, _cert) = tls_listener(&dir);
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("other.pem"), other.cert.pem()).unwrap();
    let url = format!("wss://localhost:{}/agent", l.agent_addr.port());
    let agents = |l: &ListenerProcess| l.get("/api/v1/agents").json();

    // A CA that did not sign the listener's certificate: refused.
    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    let wrong_key = l.add_key("wrong-ca.test");
    let wrong = AgentProcess::start(
        &cc_testkit::bin("cc-agent"),
        &wrong_dir,
        &url,
        &wrong_key,
        "wrong-ca.test",
        &format!("ca_file = {:?}\n", dir.path().join("other.pem")),
        None,
    );
    let said = l.wait_for(Duration::from_secs(10), |_| {
        wrong
            .log()
            .lines()
            .find(|x| x.contains("certificate") || x.contains("UnknownIssuer"))
            .map(ToOwned::to_owned)
    });
    l.wait_for(Duration::from_secs(10), |l| {
        l.log().contains("TLS handshake failed").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        agents(&l),
        json!([]),
        "nothing registered with the wrong CA"
    );
    // The key never reached the listener: no key check was logged at all.
    let log = l.log();
    assert!(
        !log.contains("unknown or revoked") && !log.contains("X-CC-API-KEY"),
        "the listener saw a handshake request: {log}"
    );
    assert!(
        said.contains("certificate") || said.contains("UnknownIssuer"),
        "{said}"
    );
    drop(wrong);

    // The right CA: registered over wss://.
    let right_dir = dir.path().join("right");
    std::fs::create_dir_all(&right_dir).unwrap();
    let right_key = l.add_key("right-ca.test");
    let _right = AgentProcess::start(
        &cc_testkit::bin("cc-agent"),
        &right_dir,
        &url,
        &right_key,
        "right-ca.test",
        &format!("ca_file = {:?}\n", dir.path().join("cert.pem")),
        None,
    );
    l.wait_for(Duration::from_secs(10), |l| {
        let a = agents(l);
        (a[0]["hostname"] == "right-ca.test" && a[0]["connected"] == true).then_some(())
    });
}
