//! `wss://`: the listener serves TLS from certificate and key files, and an
//! agent that trusts that certificate registers over it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cc_e2e::TempDir;
use cc_e2e::listener::ListenerProcess;
use futures_util::SinkExt;
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test(flavor = "multi_thread")]
async fn agents_register_over_wss_and_plaintext_is_not_spoken_there() {
    let dir = TempDir::new("l-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    let l = ListenerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_cc-listener")),
        dir.path(),
        &extra,
    );
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
