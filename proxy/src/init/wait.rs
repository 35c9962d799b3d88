//! `meshlite-proxy wait-ready`: blocks until the proxy's `/ready` answers 200.
//!
//! Legacy injection mode (clusters before 1.29) runs it as the proxy
//! container's postStart hook: the kubelet starts the app containers only after
//! that hook returns, so the app never sends traffic before the proxy can carry it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Flags of `meshlite-proxy wait-ready`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], meshlite_contract::ADMIN_PORT)))]
    pub admin: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

/// The proxy did not become ready in time.
#[derive(Debug, thiserror::Error)]
#[error("proxy at {admin} not ready after {waited:?}: {last}")]
pub struct NotReady {
    pub admin: SocketAddr,
    pub waited: Duration,
    pub last: String,
}

/// Polls `GET /ready` every 200 ms until it answers 200.
pub fn run(args: &WaitReadyArgs) -> Result<(), NotReady> {
    let start = Instant::now();
    let deadline = Duration::from_secs(args.timeout_secs);
    loop {
        let last = match ready_status(args.admin) {
            Ok(200) => return Ok(()),
            Ok(code) => format!("/ready answered {code}"),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(NotReady {
                admin: args.admin,
                waited: start.elapsed(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One `GET /ready`; the status code.
pub fn ready_status(admin: SocketAddr) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&admin, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head)?;
    // "HTTP/1.x NNN ..."
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP status line")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(status: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        addr
    }

    #[test]
    fn returns_once_ready_answers_200() {
        let admin = serve_once("200 OK");
        run(&WaitReadyArgs {
            admin,
            timeout_secs: 5,
        })
        .unwrap();
    }

    #[test]
    fn gives_up_with_the_last_status_when_never_ready() {
        let admin = serve_once("503 Service Unavailable");
        let err = run(&WaitReadyArgs {
            admin,
            timeout_secs: 0,
        })
        .unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
    }
}
