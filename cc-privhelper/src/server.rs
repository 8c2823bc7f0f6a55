//! The socket: who may talk, and the closed set of requests.
//!
//! Before a byte is read, the peer's uid (SO_PEERCRED) must be the
//! configured `agent_user`'s; anyone else is logged and disconnected. Then
//! exactly one request per connection: a frame whose declared length is
//! checked before anything is allocated, decoded strictly (unknown requests
//! and fields refused), answered, logged, closed.
//!
//! The request table — everything the helper will do, and nothing else:
//!
//! | request      | what it may do                                   | refused when                                   |
//! |--------------|--------------------------------------------------|------------------------------------------------|
//! | `status`     | say the version, whether system mode is on, the landlock mode | never                             |
//! | `exec`       | run one validated job as root in the sandbox     | system mode off; invalid job; program not in `allowed_commands` |
//! | `write_cron` | replace `cron_file` and the state file with validated entries | system mode off; invalid payload |

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use cc_proto::frame::{self, HEADER_LEN, MAX_FRAME_LEN};
use cc_proto::helper::{
    self, CronWritten, HelperRequest, HelperResponse, HelperStatus, RefusalCode,
};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Uid, User, chown};
use tracing::{info, warn};

use crate::config::{Config, LandlockMode};
use crate::exec::refusal;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_IN_FLIGHT: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn serve(cfg: Config) -> Result<()> {
    let agent = User::from_name(&cfg.agent_user)?
        .with_context(|| format!("agent_user {:?} does not exist", cfg.agent_user))?;
    // Not dumpable: no core file, no ptrace by the agent's uid.
    nix::sys::prctl::set_dumpable(false).context("making the helper not dumpable")?;
    let listener = match crate::sys::systemd_socket()? {
        Some(l) => {
            info!("using the socket passed by systemd");
            l
        }
        None => bind(&cfg, agent.gid)?,
    };
    info!(socket = %cfg.socket.display(), agent_user = %cfg.agent_user, system_mode = cfg.system_mode, "cc-privhelper serving");
    let cfg = Arc::new(cfg);
    let in_flight = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        while in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            std::thread::sleep(Duration::from_millis(10));
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (cfg, in_flight, agent_uid) =
            (Arc::clone(&cfg), Arc::clone(&in_flight), agent.uid.as_raw());
        std::thread::spawn(move || {
            handle(stream, &cfg, agent_uid);
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(())
}

/// Socket directory 0750 and socket 0660, both root:<agent's group>.
fn bind(cfg: &Config, agent_gid: Gid) -> Result<UnixListener> {
    let dir = cfg
        .socket
        .parent()
        .context("socket path has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    chown(dir, Some(Uid::from_raw(0)), Some(agent_gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    chown(&cfg.socket, Some(Uid::from_raw(0)), Some(agent_gid))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

fn handle(mut stream: UnixStream, cfg: &Config, agent_uid: u32) {
    let Ok(cred) = getsockopt(&stream, PeerCredentials) else {
        warn!("refused: no peer credentials");
        return;
    };
    let (uid, pid) = (cred.uid(), cred.pid());
    if uid != agent_uid {
        warn!(
            peer_uid = uid,
            peer_pid = pid,
            decision = "refused",
            reason = "peer is not agent_user",
            "helper request"
        );
        return;
    }
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (response, op, job_id) = match read_request(&mut stream) {
        Ok(req) => {
            let op = req.operation();
            let (resp, job) = answer(cfg, req);
            (resp, op, job)
        }
        Err(e) => (
            HelperResponse::Refused(refusal(RefusalCode::BadRequest, format!("{e:#}"))),
            "invalid",
            String::new(),
        ),
    };
    let (decision, reason) = match &response {
        HelperResponse::Refused(r) => ("refused", r.message.as_str()),
        _ => ("done", ""),
    };
    info!(peer_uid = uid, peer_pid = pid, op, job_id = %job_id, decision, reason, "helper request");
    if let Ok(body) = helper::encode(&response) {
        if let Ok(framed) = frame::encode_frame(&body, MAX_FRAME_LEN) {
            let _ = stream.write_all(&framed);
        }
    }
}

fn read_request(stream: &mut UnixStream) -> Result<HelperRequest> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .context("reading the frame header")?;
    // Checked before anything is allocated for the body.
    let len = frame::parse_header(header, MAX_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .context("reading the frame body")?;
    Ok(helper::decode_strict(&body)?)
}

/// The request table, in code.
fn answer(cfg: &Config, req: HelperRequest) -> (HelperResponse, String) {
    match req {
        HelperRequest::Status => (
            HelperResponse::Status(HelperStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                system_mode: cfg.system_mode,
                landlock: match cfg.sandbox.landlock {
                    LandlockMode::Required => "required".into(),
                    LandlockMode::BestEffort => "best_effort".into(),
                },
            }),
            String::new(),
        ),
        HelperRequest::Exec(e) => {
            let job = match e.job() {
                Ok(j) => j,
                Err(err) => {
                    return (
                        refused(RefusalCode::InvalidPayload, format!("execute_job: {err}")),
                        String::new(),
                    );
                }
            };
            let id = job.job_id.chars().take(128).collect::<String>();
            if !cfg.system_mode {
                return (refused(RefusalCode::SystemModeDisabled, DISABLED), id);
            }
            let spec = match job.validate() {
                Ok(s) => s,
                Err(err) => return (refused(RefusalCode::InvalidPayload, err.to_string()), id),
            };
            match crate::exec::run(cfg, &spec) {
                Ok(report) => (HelperResponse::ExecResult(report), id),
                Err(r) => (HelperResponse::Refused(r), id),
            }
        }
        HelperRequest::WriteCron(w) => {
            if !cfg.system_mode {
                return (
                    refused(RefusalCode::SystemModeDisabled, DISABLED),
                    String::new(),
                );
            }
            let entries = match w.entries() {
                Ok(e) => e,
                Err(err) => {
                    return (
                        refused(RefusalCode::InvalidPayload, format!("cron_refresh: {err}")),
                        String::new(),
                    );
                }
            };
            if entries.len() > cc_proto::wire::MAX_CRON_ENTRIES {
                return (
                    refused(RefusalCode::InvalidPayload, "too many cron entries"),
                    String::new(),
                );
            }
            match crate::cronfile::write(cfg, &entries) {
                Ok((installed, rejected)) => (
                    HelperResponse::CronWritten(CronWritten {
                        installed,
                        rejected,
                    }),
                    String::new(),
                ),
                Err(e) => (
                    refused(RefusalCode::Internal, format!("{e:#}")),
                    String::new(),
                ),
            }
        }
    }
}

const DISABLED: &str =
    "system mode is not enabled on this host (system_mode = false in cc-privhelper's config)";

fn refused(code: RefusalCode, message: impl Into<String>) -> HelperResponse {
    HelperResponse::Refused(refusal(code, message))
}
