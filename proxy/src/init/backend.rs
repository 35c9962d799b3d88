//! Which iptables to drive: `nft` or `legacy`, and running its tools.
//!
//! Mixing the two in one network namespace makes rules invisible to one
//! another (linkerd/linkerd2#7749), so `auto` follows whichever already has
//! rules in this namespace, and otherwise whatever plain `iptables` is.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::InitError;
use super::rules::Family;

/// The iptables flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Detect from existing rules, then from `iptables --version`.
    Auto,
    /// `iptables-nft-*` (nf_tables kernel API).
    Nft,
    /// `iptables-legacy-*` (x_tables kernel API).
    Legacy,
}

impl Backend {
    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            // `auto` is resolved before any tool runs; plain names if it is not.
            Backend::Auto => "",
        }
    }

    /// The `iptables-restore`-style program for `family`.
    pub fn restore(self, family: Family) -> String {
        format!("{}{}-restore", prefix(family), self.suffix())
    }

    /// The `iptables-save`-style program for `family`.
    pub fn save(self, family: Family) -> String {
        format!("{}{}-save", prefix(family), self.suffix())
    }
}

fn prefix(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// Picks nft or legacy for `auto` from the tools' view of this namespace.
pub fn detect() -> Result<Backend, InitError> {
    let rules = |b: Backend| -> Option<usize> {
        let out = run(&b.save(Family::V4), &[], None).ok()?;
        Some(out.lines().filter(|l| l.starts_with("-A ")).count())
    };
    match (rules(Backend::Nft), rules(Backend::Legacy)) {
        (None, None) => {
            return Err(InitError::NotFound {
                program: "iptables-nft-save or iptables-legacy-save".into(),
            });
        }
        (Some(_), None) => return Ok(Backend::Nft),
        (None, Some(_)) => return Ok(Backend::Legacy),
        (Some(n), Some(l)) if n != l => {
            return Ok(if n > l { Backend::Nft } else { Backend::Legacy });
        }
        _ => {}
    }
    // Neither has more rules (typically both empty): follow the image's default.
    let version = run("iptables", &["--version"], None).unwrap_or_default();
    Ok(if version.contains("legacy") {
        Backend::Legacy
    } else {
        Backend::Nft
    })
}

/// Runs `program args`, feeding `stdin`; returns stdout or a classified error.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => InitError::NotFound {
                program: program.to_string(),
            },
            _ => InitError::Spawn {
                program: program.to_string(),
                source: e,
            },
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the program's own failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| InitError::Spawn {
        program: program.to_string(),
        source: e,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        let lower = stderr.to_lowercase();
        if lower.contains("permission denied")
            || lower.contains("operation not permitted")
            || lower.contains("must be root")
        {
            return Err(InitError::PermissionDenied {
                program: program.to_string(),
                stderr,
            });
        }
        return Err(InitError::Failed {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_follow_backend_and_family() {
        assert_eq!(Backend::Nft.restore(Family::V4), "iptables-nft-restore");
        assert_eq!(Backend::Legacy.save(Family::V6), "ip6tables-legacy-save");
        assert_eq!(Backend::Auto.restore(Family::V6), "ip6tables-restore");
    }

    #[test]
    fn a_missing_program_is_reported_by_name() {
        let err = run("meshlite-no-such-iptables", &[], None).unwrap_err();
        assert!(matches!(err, InitError::NotFound { .. }));
        assert!(
            err.to_string().contains("meshlite-no-such-iptables"),
            "{err}"
        );
    }

    #[test]
    fn a_failing_program_reports_status_and_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains('3'), "{text}");
        let err = run(
            "sh",
            &[
                "-c",
                "echo 'iptables: Permission denied (you must be root)' >&2; exit 4",
            ],
            None,
        )
        .unwrap_err();
        assert!(matches!(err, InitError::PermissionDenied { .. }), "{err}");
        assert!(err.to_string().contains("NET_ADMIN"), "{err}");
    }
}
