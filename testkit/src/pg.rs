//! A private PostgreSQL cluster for a test: Debian's `initdb` and `pg_ctl`
//! in a fresh directory, listening on a free loopback port (and a socket
//! in that directory), trust authentication for local connections only,
//! stopped and removed when the guard goes. Run as the `postgres` user
//! when the test runs as root (the server refuses root).
//!
//! `CC_PG_EXTRA_OPTS` adds server options, for a look inside a run (for
//! example `-c log_min_duration_statement=0`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The newest installed server's `bin` directory.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Server options beyond the harness's own (TLS: [`Cluster::start_tls`]).
    extra_opts: String,
}

impl Cluster {
    /// Starts a cluster, or — when PostgreSQL is not installed — returns
    /// `None` after [`crate::require`] (which fails the test in CI).
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// [`Cluster::start`] with `ssl = on`, serving the certificate chain
    /// `cert_pem` with the key `key_pem` (PEM) on its TCP port. Local
    /// connections are still trusted with or without TLS: the client's
    /// `sslmode` decides.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Option<Self> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<Self> {
        let bin = server_bin();
        if !crate::require(
            "PostgreSQL's server (Debian package postgresql)",
            bin.is_some(),
        ) {
            return None;
        }
        let bin = bin.expect("checked");
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir =
            std::env::temp_dir().join(format!("cc-pg-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if as_postgres {
            let pg = nix::unistd::User::from_name("postgres")
                .expect("reading users")
                .expect("the postgres user (Debian's postgresql package creates it)");
            nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).expect("chown cluster dir");
        }
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            as_postgres,
            extra_opts: String::new(),
        };
        let data = cluster.data();
        let ok = cluster
            .run("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("running initdb")
            .success();
        assert!(ok, "initdb failed");
        if let Some((cert, key)) = tls {
            cluster.install_tls(cert, key);
        }
        // A free port: bound and released; another process may take it in
        // between, so a failed start tries another.
        for attempt in 0.. {
            cluster.port = free_port();
            if cluster.start_server() {
                break;
            }
            assert!(
                attempt < 3,
                "the cluster did not start: {}",
                std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default()
            );
        }
        Some(cluster)
    }

    /// Writes the server's certificate and key into the data directory
    /// (the key private to the server's user, as it demands) and turns TLS
    /// on.
    fn install_tls(&mut self, cert: &str, key: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.data();
        for (name, text) in [("server.crt", cert), ("server.key", key)] {
            let path = data.join(name);
            std::fs::write(&path, text).expect("writing the server's TLS files");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod the server's TLS files");
            if self.as_postgres {
                let pg = nix::unistd::User::from_name("postgres")
                    .expect("reading users")
                    .expect("the postgres user");
                nix::unistd::chown(&path, Some(pg.uid), Some(pg.gid)).expect("chown TLS files");
            }
        }
        self.extra_opts =
            "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".to_owned();
    }

    /// Creates a role that logs in with `password` (SCRAM) over TCP; every
    /// other role stays trusted.
    pub fn add_password_role(&self, role: &str, password: &str) {
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"),
        );
        let hba = self.data().join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all \"{role}\" 127.0.0.1/32 scram-sha-256\n{rest}"),
        )
        .expect("writing pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (created by [`Cluster::create_db`], or
    /// `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let ok = Command::new(self.bin.join("psql"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .status()
            .expect("running psql")
            .success();
        assert!(ok, "CREATE DATABASE {name} failed");
        self.url(name)
    }

    /// Runs SQL in database `db` with `psql`; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-qAt", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server for `down`, then starts it again: `fast` (clients
    /// disconnected, a clean shutdown) or `immediate` (as a crash:
    /// recovery at start).
    pub fn restart(&self, mode: &str, down: std::time::Duration) {
        let ok = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .status()
            .expect("running pg_ctl")
            .success();
        assert!(ok, "pg_ctl stop failed:\n{}", self.log());
        std::thread::sleep(down);
        assert!(self.start_server(), "pg_ctl start failed:\n{}", self.log());
    }

    fn start_server(&self) -> bool {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=400 \
             -c shared_buffers=64MB -c fsync=on {} {}",
            self.port,
            self.dir.display(),
            self.extra_opts,
            std::env::var("CC_PG_EXTRA_OPTS").unwrap_or_default()
        );
        self.run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("running pg_ctl")
            .success()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the write-ahead log ends now (an LSN, for
    /// [`Cluster::commits_since`]).
    pub fn wal_position(&self) -> String {
        self.psql("postgres", "SELECT pg_current_wal_lsn()")
    }

    /// How many transactions committed after `lsn`, counted from the
    /// write-ahead log's commit records (statistics counters lag by up to
    /// ten seconds; the log does not). Read-only transactions write no
    /// commit record.
    pub fn commits_since(&self, lsn: &str) -> usize {
        // The end is written out first, so the dump reads whole records.
        let end = self.wal_position();
        self.psql("postgres", "CHECKPOINT");
        let out = self
            .run("pg_waldump")
            .arg("-p")
            .arg(self.data().join("pg_wal"))
            .args(["-s", lsn, "-e", &end, "-r", "Transaction"])
            .output()
            .expect("running pg_waldump");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().filter(|l| l.contains("COMMIT")).count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn uuid_like() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
