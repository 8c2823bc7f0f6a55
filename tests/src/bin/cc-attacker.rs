//! Test tool: the attacker. The compromised-agent suite runs it as
//! `cc-agent-user` (a compromised agent) or as the program of a root job (a
//! job trying to leave its containment). Each subcommand prints what it
//! achieved on stdout, one `key=value` per line, and exits 0 when the
//! attempt got through, 1 when it was refused, 2 on bad usage.
//!
//! - `spool-race DIR TARGET SECONDS`: for SECONDS, whenever a dot-named
//!   `*.tmp` file appears in DIR (inotify), renames a symlink to TARGET over
//!   it, hoping root then changes TARGET instead of its own temp file;
//! - `trickle SOCKET SECONDS`: connects and sends one byte every 200 ms,
//!   reporting how long the peer kept the connection;
//! - `alloc MIB`: allocates and touches MIB mebibytes;
//! - `spawn N`: starts N `sleep 30` processes, reporting how many started;
//! - `connect-abstract NAME` / `connect-path PATH`: connects to a Unix
//!   socket (abstract or by path);
//! - `signal PID`: sends SIGTERM to PID;
//! - `ptrace PID`: attaches to PID with `PTRACE_SEIZE`;
//! - `open-mem PID`: opens `/proc/PID/mem` for reading;
//! - `handle-write FILE DIR TEXT`: finds FILE's handle
//!   (`name_to_handle_at`), opens it for writing through DIR's mount
//!   (`open_by_handle_at`) and appends TEXT — a write outside DIR that the
//!   read-only tree and landlock do not see;
//! - `handle-link FILE DIR NAME`: opens FILE by handle through DIR's mount
//!   and links it in as DIR/NAME (`linkat(AT_EMPTY_PATH)`);
//! - `userns`: creates a user namespace (`unshare(CLONE_NEWUSER)`);
//! - `shm-find KEY`: looks up the SysV shared memory segment KEY;
//! - `shm-make KEY`: makes a 4 KiB SysV segment KEY, mode 0600 (the
//!   suite, as root, plays the host's own root-only segment).
#![allow(unsafe_code)] // the handle and SysV calls have no safe wrapper

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!("usage: see the module documentation of cc-attacker");
    ExitCode::from(2)
}

fn outcome(ok: bool, what: &str) -> ExitCode {
    println!("{what}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn spool_race(dir: &Path, target: &Path, seconds: u64) -> ExitCode {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Ok(ino) = Inotify::init(InitFlags::IN_NONBLOCK) else {
        return outcome(false, "inotify=unavailable");
    };
    if ino.add_watch(dir, AddWatchFlags::IN_CREATE).is_err() {
        return outcome(false, "watch=refused");
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut seen, mut swapped) = (0u64, 0u64);
    let decoy = dir.join(format!(".decoy-{}", std::process::id()));
    while Instant::now() < deadline {
        let Ok(events) = ino.read_events() else {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        };
        for ev in events {
            let Some(name) = ev.name.as_ref().and_then(|n| n.to_str()) else {
                continue;
            };
            if !(name.starts_with('.') && name.ends_with(".tmp")) {
                continue;
            }
            seen += 1;
            let _ = std::fs::remove_file(&decoy);
            if symlink(target, &decoy).is_ok() && std::fs::rename(&decoy, dir.join(name)).is_ok() {
                swapped += 1;
            }
        }
    }
    outcome(swapped > 0, &format!("seen={seen}\nswapped={swapped}"))
}

fn trickle(socket: &Path, seconds: u64) -> ExitCode {
    use std::io::Write;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return outcome(false, "connected=false");
    };
    let start = Instant::now();
    // A header declaring a body that never finishes arriving.
    let mut pending: Vec<u8> = 1000u32.to_be_bytes().to_vec();
    pending.extend(std::iter::repeat_n(b' ', 996));
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(seconds) && i < pending.len() {
        if s.write_all(&pending[i..=i]).is_err() {
            break;
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let held = start.elapsed().as_secs_f64();
    outcome(
        held + 0.5 >= seconds as f64,
        &format!("held_secs={held:.1}"),
    )
}

fn alloc(mib: usize) -> ExitCode {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        let mut b = vec![0u8; 1024 * 1024];
        // Touch every page so it is really charged.
        for p in (0..b.len()).step_by(4096) {
            b[p] = (i % 251) as u8 + 1;
        }
        blocks.push(b);
    }
    outcome(true, &format!("allocated_mib={}", blocks.len()))
}

fn spawn(n: usize) -> ExitCode {
    let mut started = 0;
    let mut children = Vec::new();
    for _ in 0..n {
        match Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => {
                started += 1;
                children.push(c);
            }
            Err(_) => break,
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    outcome(started == n, &format!("started={started}"))
}

fn connect(addr: &nix::sys::socket::UnixAddr) -> ExitCode {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, connect, socket};
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return outcome(false, "socket=refused");
    };
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), addr) {
        Ok(()) => outcome(true, "connected=true"),
        Err(e) => outcome(false, &format!("connected=false\nerror={e}")),
    }
}

/// `struct file_handle` with room for any handle the kernel gives.
#[repr(C)]
struct FileHandle {
    bytes: libc::c_uint,
    kind: libc::c_int,
    data: [u8; 128],
}

/// FILE's handle, and a descriptor of DIR to open it through.
fn by_handle(file: &str, dir: &str, flags: libc::c_int) -> Result<std::os::fd::OwnedFd, String> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    let (Ok(file), Ok(dir)) = (CString::new(file), CString::new(dir)) else {
        return Err("a NUL byte".into());
    };
    let mut h = FileHandle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: a NUL-terminated path, a handle buffer of the size it states,
    // and a local int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            file.as_ptr(),
            &raw mut h,
            &raw mut mount_id,
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "name_to_handle_at: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open(2) of a NUL-terminated path.
    let mount = unsafe { libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    if mount < 0 {
        return Err(format!("open {dir:?}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the handle filled in above, a descriptor just opened.
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount, &raw mut h, flags) };
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(mount) };
    if fd < 0 {
        return Err(format!(
            "open_by_handle_at: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor open_by_handle_at just returned, owned here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn handle_write(file: &str, dir: &str, text: &str) -> ExitCode {
    use std::io::Write;
    match by_handle(file, dir, libc::O_WRONLY | libc::O_APPEND) {
        Ok(fd) => match std::fs::File::from(fd).write_all(text.as_bytes()) {
            Ok(()) => outcome(true, "written=true"),
            Err(e) => outcome(false, &format!("written=false\nerror=write: {e}")),
        },
        Err(e) => outcome(false, &format!("written=false\nerror={e}")),
    }
}

fn handle_link(file: &str, dir: &str, name: &str) -> ExitCode {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    let fd = match by_handle(file, dir, libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) => return outcome(false, &format!("linked=false\nerror={e}")),
    };
    let Ok(to) = CString::new(format!("{dir}/{name}")) else {
        return usage();
    };
    // SAFETY: linkat(2) of a descriptor with an empty path, to a
    // NUL-terminated path.
    let r = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        outcome(true, "linked=true")
    } else {
        outcome(
            false,
            &format!(
                "linked=false\nerror=linkat: {}",
                std::io::Error::last_os_error()
            ),
        )
    }
}

fn pid_arg(s: &str) -> Option<nix::unistd::Pid> {
    s.parse::<i32>().ok().map(nix::unistd::Pid::from_raw)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["spool-race", dir, target, secs] => match secs.parse() {
            Ok(s) => spool_race(Path::new(dir), Path::new(target), s),
            Err(_) => usage(),
        },
        ["trickle", socket, secs] => match secs.parse() {
            Ok(s) => trickle(Path::new(socket), s),
            Err(_) => usage(),
        },
        ["alloc", mib] => mib.parse().map_or_else(|_| usage(), alloc),
        ["spawn", n] => n.parse().map_or_else(|_| usage(), spawn),
        ["connect-abstract", name] => {
            match nix::sys::socket::UnixAddr::new_abstract(name.as_bytes()) {
                Ok(addr) => connect(&addr),
                Err(_) => usage(),
            }
        }
        ["connect-path", path] => match nix::sys::socket::UnixAddr::new(*path) {
            Ok(addr) => connect(&addr),
            Err(_) => usage(),
        },
        ["signal", pid] => match pid_arg(pid) {
            Some(p) => match nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM) {
                Ok(()) => outcome(true, "signalled=true"),
                Err(e) => outcome(false, &format!("signalled=false\nerror={e}")),
            },
            None => usage(),
        },
        ["ptrace", pid] => match pid_arg(pid) {
            Some(p) => match nix::sys::ptrace::seize(p, nix::sys::ptrace::Options::empty()) {
                Ok(()) => outcome(true, "attached=true"),
                Err(e) => outcome(false, &format!("attached=false\nerror={e}")),
            },
            None => usage(),
        },
        ["open-mem", pid] => match std::fs::File::open(format!("/proc/{pid}/mem")) {
            Ok(_) => outcome(true, "opened=true"),
            Err(e) => outcome(false, &format!("opened=false\nerror={e}")),
        },
        ["handle-write", file, dir, text] => handle_write(file, dir, text),
        ["handle-link", file, dir, name] => handle_link(file, dir, name),
        ["userns"] => match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
            Ok(()) => outcome(true, "userns=true"),
            Err(e) => outcome(false, &format!("userns=false\nerror={e}")),
        },
        ["shm-make", key] => match key.parse::<i32>() {
            // SAFETY: shmget(2) with integers only.
            Ok(k) => match unsafe { libc::shmget(k, 4096, libc::IPC_CREAT | 0o600) } {
                -1 => outcome(
                    false,
                    &format!("made=false\nerror={}", std::io::Error::last_os_error()),
                ),
                id => outcome(true, &format!("made=true\nid={id}")),
            },
            Err(_) => usage(),
        },
        ["shm-find", key] => match key.parse::<i32>() {
            // SAFETY: shmget(2) with integers only.
            Ok(k) => match unsafe { libc::shmget(k, 0, 0) } {
                -1 => outcome(
                    false,
                    &format!("found=false\nerror={}", std::io::Error::last_os_error()),
                ),
                id => outcome(true, &format!("found=true\nid={id}")),
            },
            Err(_) => usage(),
        },
        _ => usage(),
    }
}
