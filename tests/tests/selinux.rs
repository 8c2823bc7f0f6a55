//! The SELinux module builds with the refpolicy development Makefile, links
//! into Debian's full policy offline (`semodule -n -i`, in a scratch copy of
//! the policy store), and `sesearch` shows what each domain may write.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::path::Path;
use std::process::Command;

use cc_e2e::{TempDir, require};

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rules letting `source` write files of `target`.
fn writes(policy: &Path, source: &str, target: &str) -> usize {
    ok(Command::new("sesearch")
        .args([
            "-A", "-s", source, "-t", target, "-c", "file", "-p", "write",
        ])
        .arg(policy))
    .lines()
    .filter(|l| l.starts_with("allow"))
    .count()
}

#[test]
fn the_module_links_into_the_full_policy_and_confines_the_agent() {
    let tools = ["make", "semodule", "sesearch", "checkmodule"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let have = tools
        && Path::new("/usr/share/selinux/devel/Makefile").exists()
        && Path::new("/var/lib/selinux/default").exists();
    if !require(
        "selinux-policy-dev, selinux-policy-default, semodule-utils, policycoreutils, setools (the test command installs them)",
        have,
    ) {
        return;
    }
    let dir = TempDir::new("selinux");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../selinux");
    for f in ["croncommander.te", "croncommander.fc", "croncommander.if"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    ok(Command::new("make")
        .args([
            "-f",
            "/usr/share/selinux/devel/Makefile",
            "croncommander.pp",
        ])
        .current_dir(dir.path()));

    // A scratch copy of the policy store: the machine's own is not touched.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    ok(Command::new("cp")
        .args(["-a", "/var/lib/selinux"])
        .arg(root.join("var/lib/")));
    ok(Command::new("cp")
        .args(["-a", "/etc/selinux"])
        .arg(root.join("etc/")));
    ok(Command::new("semodule")
        .arg("-p")
        .arg(&root)
        .args(["-n", "-i"])
        .arg(dir.path().join("croncommander.pp")));
    let policy = std::fs::read_dir(root.join("etc/selinux/default/policy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("policy.")
        })
        .expect("a linked binary policy");

    // Positive controls: the domains exist and get what they need, so an
    // empty answer below means "denied", not "unknown type".
    assert!(writes(&policy, "cc_agent_t", "cc_agent_var_lib_t") > 0);
    assert!(writes(&policy, "cc_privhelper_t", "cc_privhelper_var_lib_t") > 0);

    for target in ["etc_t", "system_cron_spool_t", "shadow_t"] {
        assert_eq!(
            writes(&policy, "cc_agent_t", target),
            0,
            "cc_agent_t may write {target}"
        );
    }
    assert!(
        writes(&policy, "cc_privhelper_t", "system_cron_spool_t") > 0,
        "the helper cannot write /etc/cron.d"
    );
    assert_eq!(
        writes(&policy, "cc_privhelper_t", "shadow_t"),
        0,
        "the helper may write shadow_t"
    );
}
