//! The web console in a real browser: Debian's headless Chromium driven
//! through chromedriver (WebDriver, `fantoccini`), against the real
//! listener and real agents — one as `cc-agent-user`, one as root in user
//! mode (the spec's security warning).
//!
//! Screenshots of each page at 1280 and 390 px wide are written to
//! `target/ui-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cc_proto::ids::JobId;
use cc_testkit::agent::{AgentProcess, root_and_agent_user};
use cc_testkit::listener::{ListenerProcess, TOKEN};
use cc_testkit::{TempDir, require};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use common::bin;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const HOSTILE: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">\u{1b}[31mred\u{1b}[0m & done";

/// chromedriver and the browser it starts: the browser runs with a
/// profile directory of its own, so that even a test that fails half way
/// leaves no browser process behind (they are found by that directory).
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> (Driver, Client) {
    // fantoccini's HTTP client (to chromedriver, plain HTTP here) needs a
    // rustls provider chosen once per process.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let profile =
        std::env::temp_dir().join(format!("cc-console-chromium-{}-{port}", std::process::id()));
    let driver = Driver {
        child: Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        profile: profile.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900", format!("--user-data-dir={}", profile.display())
        ]}),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    (driver, client)
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Types `text` into the element `css` finds.
async fn fill(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn eval(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until `script` returns true in the page.
async fn until(c: &Client, limit: Duration, script: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if eval(c, script).await == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {script}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Screenshot at this width, and the page must not scroll sideways.
async fn shoot(c: &Client, name: &str, width: u32) {
    c.set_window_size(width, 900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fits = eval(
        c,
        "return document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    let sizes = eval(
        c,
        "return [document.documentElement.scrollWidth, window.innerWidth]",
    )
    .await;
    assert_eq!(
        fits,
        json!(true),
        "{name} at {width} px scrolls sideways: {sizes}"
    );
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots_dir().join(format!("{name}-{width}.png")), png).unwrap();
}

async fn both_widths(c: &Client, name: &str) {
    shoot(c, name, 1280).await;
    shoot(c, name, 390).await;
    c.set_window_size(1280, 900).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    let Some(agent_user) = root_and_agent_user() else {
        return;
    };
    if !require(
        "Debian's chromium and chromium-driver",
        Path::new(CHROMEDRIVER).exists(),
    ) {
        return;
    }
    let dir = TempDir::new("console");
    let (l, _agents, hostile_id, run_id) =
        fleet_with_a_hostile_job_and_a_run(dir.path(), agent_user);

    let base = format!("http://{}", l.admin_addr);
    let (_driver, c) = browser().await;
    log_in(&c, &base).await;
    fleet_warns_of_the_root_agent_alone(&c, &base).await;
    pages_show_hostile_output_as_text(&c, &base, hostile_id.as_str(), &run_id).await;
    a_job_from_the_page_reports_without_a_reload(&c, &base).await;
    a_post_without_the_csrf_token_is_refused(&c).await;
    c.close().await.unwrap();
}

/// The listener with two real agents (`web1.test` as `agent_user`,
/// `rooty.test` as root in user mode), a job whose output is hostile, done,
/// and a fan-out run: the listener, the agents, the job's and the run's ids.
fn fleet_with_a_hostile_job_and_a_run(
    dir: &Path,
    agent_user: (u32, u32),
) -> (ListenerProcess, [AgentProcess; 2], JobId, String) {
    let l = ListenerProcess::start(bin(), dir, "");
    let agent_bin = cc_testkit::bin("cc-agent");
    let (web_dir, root_dir) = (dir.join("web1"), dir.join("rooty"));
    std::fs::create_dir_all(&web_dir).unwrap();
    std::fs::create_dir_all(&root_dir).unwrap();
    let web = AgentProcess::start(
        &agent_bin,
        &web_dir,
        &l.ws_url(),
        &l.add_key("web1.test"),
        "web1.test",
        "tags = [\"web\", \"eu\"]",
        Some(agent_user),
    );
    // A real agent run as root in user mode: what the warning is for.
    let rooty = AgentProcess::start(
        &agent_bin,
        &root_dir,
        &l.ws_url(),
        &l.add_key("rooty.test"),
        "rooty.test",
        "tags = [\"db\"]",
        None,
    );
    l.wait_connected("web1.test", true);
    l.wait_connected("rooty.test", true);

    // A job whose output is hostile, run by the real agent.
    let hostile_id = l.post_job(
        "web1.test",
        // `%b` turns `\033` into ESC: a job's argv holds no control
        // character, its output may.
        &json!({"command": "/usr/bin/printf", "args": ["%b", HOSTILE.replace('\u{1b}', "\\033")]}),
    );
    let done = l.wait_for(Duration::from_secs(20), |l| {
        let j = l.get(&format!("/api/v1/jobs/{hostile_id}")).json();
        (j["status"] == "done").then_some(j)
    });
    assert_eq!(done["report"]["stdout"], HOSTILE);
    // A fan-out run for the runs page.
    let run = l.post(
        "/api/v1/runs",
        &json!({"hosts": ["web1.test", "rooty.test"], "command": "/bin/echo", "args": ["fan"]}),
    );
    assert_eq!(run.status, 202, "{}", run.body);
    let run_id = run.json()["runId"].as_str().unwrap().to_owned();

    (l, [web, rooty], hostile_id, run_id)
}

/// Not logged in: the login page, a wrong token refused, the right one in.
async fn log_in(c: &Client, base: &str) {
    // Not logged in: the login page.
    c.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    both_widths(c, "login").await;
    fill(c, "#token", "not-the-token-at-all").await;
    click(c, "button[type=submit]").await;
    until(
        c,
        Duration::from_secs(5),
        "return document.body.textContent.includes('That is not the operator token')",
    )
    .await;
    c.goto(&format!("{base}/ui/login")).await.unwrap();
    fill(c, "#token", TOKEN).await;
    click(c, "button[type=submit]").await;
    until(
        c,
        Duration::from_secs(5),
        "return location.pathname === '/ui/'",
    )
    .await;
}

/// Fleet: the warning for the root agent in user mode, and for it alone;
/// the tag filter. (Agents here run on this machine: whether it runs a cron
/// daemon adds "no cron daemon" rows, which are not counted.)
async fn fleet_warns_of_the_root_agent_alone(c: &Client, base: &str) {
    let fleet = eval(
        c,
        "const security = [...document.querySelectorAll('tr.warning-row')]
            .filter(r => r.textContent.includes('SECURITY WARNING'));
        return {
            banner: (document.getElementById('root-warning') || {}).textContent || '',
            rootWarned: document.querySelector('tr[data-host=\"rooty.test\"]').classList.contains('warned'),
            webWarned: document.querySelector('tr[data-host=\"web1.test\"]').classList.contains('warned'),
            warningRows: security.length,
            rowText: security.length ? security[0].textContent : ''
        }",
    )
    .await;
    assert!(
        fleet["banner"]
            .as_str()
            .unwrap()
            .contains("1 agent run as root (UID 0) in user mode"),
        "{fleet}"
    );
    assert_eq!(fleet["rootWarned"], true, "{fleet}");
    assert_eq!(fleet["webWarned"], false, "{fleet}");
    assert_eq!(fleet["warningRows"], 1, "{fleet}");
    assert!(
        fleet["rowText"]
            .as_str()
            .unwrap()
            .contains("SECURITY WARNING")
    );
    both_widths(c, "fleet").await;
    // On a phone the warning's text wraps within the screen: its right
    // edge is inside the viewport, not cut at it.
    c.set_window_size(390, 900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let edge = eval(
        c,
        "const r = document.querySelector('tr.warning-row .warning-text').getBoundingClientRect();
         return [r.right, document.documentElement.clientWidth, r.height]",
    )
    .await;
    c.set_window_size(1280, 900).await.unwrap();
    assert!(
        edge[0].as_f64().unwrap() <= edge[1].as_f64().unwrap(),
        "the warning's text runs past the screen's edge at 390 px (right, viewport, height): {edge}"
    );
    // Filters.
    c.goto(&format!("{base}/ui/?tag=web")).await.unwrap();
    let hosts = eval(
        c,
        "return [...document.querySelectorAll('#fleet tbody tr[data-host]')].map(r => r.dataset.host)",
    )
    .await;
    assert_eq!(hosts, json!(["web1.test"]));
}

/// The hostile output shows as text and runs nothing; the host page lists
/// the job, the runs page the run, and the run's page its hosts done.
async fn pages_show_hostile_output_as_text(c: &Client, base: &str, hostile_id: &str, run_id: &str) {
    // The hostile output shows as text and runs nothing.
    c.goto(&format!("{base}/ui/jobs/{hostile_id}"))
        .await
        .unwrap();
    let page = eval(
        c,
        "return {
            pwned: window.pwned === undefined ? null : window.pwned,
            stdout: document.getElementById('stdout').textContent,
            scripts: [...document.querySelectorAll('script')].map(s => s.getAttribute('src')),
            images: document.querySelectorAll('img').length
        }",
    )
    .await;
    assert_eq!(page["pwned"], Value::Null, "a script ran: {page}");
    assert_eq!(page["stdout"], HOSTILE, "shown verbatim, as text");
    assert_eq!(page["scripts"], json!(["/ui/static/app.js"]), "{page}");
    assert_eq!(page["images"], 0, "{page}");
    both_widths(c, "job-hostile").await;

    // The host page: its recent jobs.
    c.goto(&format!("{base}/ui/hosts/web1.test")).await.unwrap();
    until(
        c,
        Duration::from_secs(5),
        &format!("return !!document.querySelector('tr[data-job=\"{hostile_id}\"]')"),
    )
    .await;
    both_widths(c, "host").await;

    // Runs, and one run's hosts.
    c.goto(&format!("{base}/ui/runs")).await.unwrap();
    until(
        c,
        Duration::from_secs(5),
        &format!("return !!document.querySelector('tr[data-run=\"{run_id}\"]')"),
    )
    .await;
    both_widths(c, "runs").await;
    c.goto(&format!("{base}/ui/runs/{run_id}")).await.unwrap();
    until(
        c,
        Duration::from_secs(20),
        "return [...document.querySelectorAll('#run-hosts [data-field=status]')].every(td => td.textContent === 'done')",
    )
    .await;
    both_widths(c, "run").await;
}

/// A job started from the page shows its report without a reload.
async fn a_job_from_the_page_reports_without_a_reload(c: &Client, base: &str) {
    c.goto(&format!("{base}/ui/new")).await.unwrap();
    both_widths(c, "new").await;
    fill(c, "#hosts", "web1.test").await;
    fill(c, "#command", "/bin/sh").await;
    fill(c, "#args", "-c\nsleep 1.5; echo from-the-page").await;
    click(c, "#new-run button[type=submit]").await;
    until(
        c,
        Duration::from_secs(5),
        "return location.pathname.startsWith('/ui/jobs/') && !!document.getElementById('job')",
    )
    .await;
    let status = eval(
        c,
        "window.marker = 42; return document.getElementById('state').textContent",
    )
    .await;
    assert_ne!(
        status, "done",
        "the report must arrive after the page: {status}"
    );
    until(
        c,
        Duration::from_secs(20),
        "return document.getElementById('stdout').textContent === 'from-the-page\\n'",
    )
    .await;
    let after = eval(
        c,
        "return [window.marker, document.getElementById('state').textContent, document.getElementById('changes').children.length]",
    )
    .await;
    assert_eq!(after[0], 42, "no reload: {after}");
    assert_eq!(after[1], "done", "{after}");
    assert!(
        after[2].as_u64().unwrap() >= 1,
        "state changes listed: {after}"
    );
}

/// A POST without the CSRF token is refused, from the logged-in page.
async fn a_post_without_the_csrf_token_is_refused(c: &Client) {
    let refused = c
        .execute_async(
            "const done = arguments[0];
             fetch('/ui/new', {method: 'POST', credentials: 'same-origin',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                 body: 'hosts=web1.test&command=%2Fbin%2Ftrue'})
               .then(r => r.text().then(t => done([r.status, t])));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused[0], 403, "{refused}");
    assert!(refused[1].as_str().unwrap().contains("CSRF"), "{refused}");
}

/// Without a session: pages send to the login page, a POST is refused, and
/// every answer carries the policy that forbids inline script; the session
/// cookie is `HttpOnly` and `SameSite=Strict`.
#[test]
fn the_console_needs_a_session_and_sends_a_strict_policy() {
    let dir = TempDir::new("console-http");
    let l = ListenerProcess::start(bin(), dir.path(), "");
    without_a_session_only_the_login_page(l.admin_addr);
    let session = log_in_for_a_strict_cookie(l.admin_addr);
    let send = |method: &str, path: &str, body: &str, cookie: Option<&str>| {
        send_to(l.admin_addr, method, path, body, cookie)
    };
    let fleet = send("GET", "/ui/", "", Some(&session));
    assert!(fleet.starts_with("HTTP/1.1 200"), "{fleet}");
    assert!(
        fleet.contains("x-frame-options: DENY") || fleet.contains("x-frame-options: deny"),
        "{fleet}"
    );
    let no_token = send(
        "POST",
        "/ui/new",
        "hosts=a&command=%2Fbin%2Ftrue",
        Some(&session),
    );
    assert!(no_token.starts_with("HTTP/1.1 403"), "{no_token}");
    assert!(!fleet.contains("<script>"), "no inline script: {fleet}");
    // The operator address itself leads to the console, not a JSON 404.
    let root = send("GET", "/", "", None);
    assert!(root.starts_with("HTTP/1.1 303"), "{root}");
    assert!(root.contains("location: /ui/"), "{root}");

    a_relative_program_is_refused_naming_the_field(&l, &session);

    root_work_from_the_form_needs_signatures_and_a_tick(&l, &session);
}

/// One request to the console at `addr` (a form body, a cookie or none):
/// the whole answer, head and body, as text.
fn send_to(addr: SocketAddr, method: &str, path: &str, body: &str, cookie: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Without a session: pages send to the login page with the policy that
/// forbids inline script, a POST is refused, a wrong token sets no cookie.
fn without_a_session_only_the_login_page(addr: SocketAddr) {
    let send = |method: &str, path: &str, body: &str, cookie: Option<&str>| {
        send_to(addr, method, path, body, cookie)
    };
    let page = send("GET", "/ui/", "", None);
    assert!(
        page.starts_with("HTTP/1.1 303")
            || page.starts_with("HTTP/1.1 302")
            || page.starts_with("HTTP/1.1 307"),
        "{page}"
    );
    assert!(page.contains("location: /ui/login"), "{page}");
    let csp = "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'";
    assert!(page.contains(csp), "{page}");
    let post = send("POST", "/ui/new", "hosts=a&command=%2Fbin%2Ftrue", None);
    assert!(post.starts_with("HTTP/1.1 403"), "{post}");
    let forged = send("POST", "/ui/new", "", Some("cc_session=0000"));
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    let wrong = send("POST", "/ui/login", "token=wrong-token-wrong", None);
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(
        !wrong.to_ascii_lowercase().contains("set-cookie"),
        "{wrong}"
    );
}

/// The right token logs in: the session cookie is `HttpOnly`,
/// `SameSite=Strict`, for `/ui`, not `Secure` on plain HTTP. The session.
fn log_in_for_a_strict_cookie(addr: SocketAddr) -> String {
    let send = |method: &str, path: &str, body: &str, cookie: Option<&str>| {
        send_to(addr, method, path, body, cookie)
    };
    let ok = send("POST", "/ui/login", &format!("token={TOKEN}"), None);
    let cookie = ok
        .lines()
        .find(|h| h.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{ok}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    cookie
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// The program field asks for an absolute path, in the page (`pattern`)
/// and on submit: `echo` is refused with the field named and what to do.
fn a_relative_program_is_refused_naming_the_field(l: &ListenerProcess, session: &str) {
    let send = |method: &str, path: &str, body: &str, cookie: Option<&str>| {
        send_to(l.admin_addr, method, path, body, cookie)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = l.add_key("rel.test");
    let _agent = rt.block_on(cc_testkit::ws::registered_as(
        l,
        &key,
        &cc_testkit::ws::register("rel.test"),
    ));
    let form = send("GET", "/ui/new", "", Some(session));
    assert!(form.contains(r#"pattern="/.*""#), "{form}");
    let csrf = csrf_of(&form);
    let relative = send(
        "POST",
        "/ui/new",
        &format!("csrf={csrf}&hosts=rel.test&command=echo&args=hi"),
        Some(session),
    );
    assert!(relative.starts_with("HTTP/1.1 400"), "{relative}");
    assert!(
        relative.contains(
            "Program: &quot;echo&quot; is not an absolute path; give its full path (`command -v echo` on the host prints it)"
        ),
        "{relative}"
    );
    let empty = send(
        "POST",
        "/ui/new",
        &format!("csrf={csrf}&hosts=rel.test&command="),
        Some(session),
    );
    assert!(empty.starts_with("HTTP/1.1 400"), "{empty}");
    assert!(
        empty.contains(
            "Program: required; give the absolute path of the program to run, like /usr/bin/uptime"
        ),
        "{empty}"
    );
    assert!(!l.log().contains("console: run started"), "{}", l.log());
}

/// Root work from the form: a system-mode target needs signed statements
/// and a ticked confirmation; the console never signs.
fn root_work_from_the_form_needs_signatures_and_a_tick(l: &ListenerProcess, session: &str) {
    let send = |method: &str, path: &str, body: &str, cookie: Option<&str>| {
        send_to(l.admin_addr, method, path, body, cookie)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = l.add_key("sys.test");
    let _sys = rt.block_on(cc_testkit::ws::registered_as(
        l,
        &key,
        &json!({"type": "register", "payload": {"hostname": "sys.test", "os": "linux",
            "arch": "amd64", "tags": [], "executionMode": "system", "isRoot": false}}),
    ));
    let form = send("GET", "/ui/new", "", Some(session));
    let csrf = csrf_of(&form);
    let unsigned = send(
        "POST",
        "/ui/new",
        &format!("csrf={csrf}&hosts=sys.test&command=%2Fusr%2Fbin%2Fid"),
        Some(session),
    );
    assert!(unsigned.starts_with("HTTP/1.1 400"), "{unsigned}");
    assert!(unsigned.contains("sys.test in system mode"), "{unsigned}");
    let st = cc_testkit::signing::exec_statement(
        &json!({"jobId": "from-console-1", "command": "/usr/bin/id", "args": ["-u"], "timeout": 30}),
        "sys.test",
    );
    let signed = json!([cc_testkit::signing::sign_exec(
        &st,
        &cc_testkit::signing::operator().1
    )]);
    let encoded: String = signed
        .to_string()
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let unconfirmed = send(
        "POST",
        "/ui/new",
        &format!("csrf={csrf}&signed={encoded}"),
        Some(session),
    );
    assert!(unconfirmed.starts_with("HTTP/1.1 400"), "{unconfirmed}");
    assert!(unconfirmed.contains("tick the box"), "{unconfirmed}");
    let confirmed = send(
        "POST",
        "/ui/new",
        &format!("csrf={csrf}&signed={encoded}&confirm_root=yes"),
        Some(session),
    );
    assert!(confirmed.starts_with("HTTP/1.1 303"), "{confirmed}");
    assert!(
        confirmed.contains("location: /ui/jobs/from-console-1"),
        "{confirmed}"
    );
    let job = l.get("/api/v1/jobs/from-console-1").json();
    assert_eq!(job["hostname"], "sys.test");
    assert_eq!(job["command"], "/usr/bin/id");
}

/// The CSRF token a console form carries.
fn csrf_of(form: &str) -> String {
    form.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{form}"))
        .to_owned()
}
