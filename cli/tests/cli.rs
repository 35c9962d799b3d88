//! The plugin as a user runs it, without a cluster: its bad inputs each get a
//! clear error and the documented exit code (2: the command could not run).
//! What it reports on a real install is proven on the real-cluster tier
//! (tests/tests/cluster/plugin.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn plugin(args: &[&str], kubeconfig: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-meshlite"));
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_command() {
    let out = plugin(&["--help"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["check", "identity", "ca"] {
        assert!(text.contains(cmd), "--help does not list {cmd}:\n{text}");
    }
    let out = plugin(&["ca", "rotate", "--help"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--dry-run") && text.contains("--timeout"),
        "{text}"
    );
}

#[test]
fn a_missing_kubeconfig_is_named() {
    let out = plugin(&["--kubeconfig", "/nonexistent/kubeconfig", "check"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/kubeconfig"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_duration_is_refused_before_anything_runs() {
    let out = plugin(&["ca", "rotate", "--timeout", "soon"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("soon"), "{}", stderr(&out));
}

#[test]
fn identity_needs_a_pod() {
    let out = plugin(&["identity"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("pod"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_api_server_is_an_error_not_a_failed_check() {
    let dir = tempfile_dir();
    let path = dir.join("kubeconfig");
    // Port 1 on loopback: nothing listens, so the connection is refused at once.
    std::fs::write(
        &path,
        r#"apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: "t"}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"#,
    )
    .unwrap();
    for args in [
        &["check"][..],
        &["check", "--proxy", "-n", "shop"],
        &["ca", "rotate", "--dry-run"],
    ] {
        let out = plugin(args, Some(&path));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        assert!(
            stderr(&out).starts_with("kubectl meshlite"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshlite-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
