//! One line per check, with a hint on each failure, and the exit code.

use std::fmt;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "[ok]  ",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
        })
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    /// A stable name (`webhook`, `ca`, ...), printed first, for scripts.
    pub check: String,
    pub message: String,
    /// What to do about it; printed under warnings and failures.
    pub hint: Option<String>,
}

impl Line {
    pub fn ok(check: impl Into<String>, message: impl Into<String>) -> Line {
        Line {
            status: Status::Ok,
            check: check.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Line {
        Line {
            status: Status::Warn,
            check: check.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn fail(
        check: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Line {
        Line {
            status: Status::Fail,
            check: check.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.check, self.message)?;
        if self.status != Status::Ok
            && let Some(hint) = &self.hint
        {
            write!(f, "\n       hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every line of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<Line>,
}

/// Exit code when every check passed (warnings allowed).
pub const EXIT_OK: u8 = 0;
/// Exit code when a check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the command could not run (bad arguments, no API server).
pub const EXIT_ERROR: u8 = 2;
/// Exit code of `ca rotate` when it stopped at a wait: run it again to resume.
pub const EXIT_IN_PROGRESS: u8 = 3;

impl Report {
    pub fn push(&mut self, line: Line) {
        println!("{line}");
        self.lines.push(line);
    }

    pub fn worst(&self) -> Status {
        self.lines
            .iter()
            .map(|l| l.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// Prints the summary and returns the exit code.
    pub fn finish(&self) -> u8 {
        let count = |s| self.lines.iter().filter(|l| l.status == s).count();
        println!(
            "\n{} ok, {} warnings, {} failed",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        if self.worst() == Status::Fail {
            EXIT_FAILED
        } else {
            EXIT_OK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_fails_the_run_and_a_warning_does_not() {
        let mut r = Report::default();
        r.push(Line::ok("a", "fine"));
        r.push(Line::warn("b", "soon", "rotate"));
        assert_eq!(r.finish(), EXIT_OK);
        r.push(Line::fail("c", "broken", "fix it"));
        assert_eq!(r.finish(), EXIT_FAILED);
    }

    #[test]
    fn hints_are_printed_under_problems_only() {
        let mut ok = Line::ok("a", "fine");
        ok.hint = Some("never shown".into());
        assert_eq!(ok.to_string(), "[ok]   a: fine");
        assert_eq!(
            Line::fail("ca", "expired", "rotate").to_string(),
            "[FAIL] ca: expired\n       hint: rotate"
        );
    }
}
