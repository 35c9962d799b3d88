//! `meshlite-testapp`: the one program in the real-cluster tier's test images.
//!
//! The cluster has no registry and no internet, so tests/cluster/images.sh packs
//! this binary (and its shared libraries) into two images of its own:
//! - `meshlite.io/pause:dev`, the pod sandbox image, runs `pause`: sleep until
//!   SIGTERM or SIGINT, reaping any children, as the kubelet expects of pause.
//! - `meshlite.io/testapp:dev` runs `serve` in server pods and `call` through
//!   `kubectl exec` in client pods.
//!
//! `serve PORT` answers each connection's first line with
//! `<name> from=<peer address> got=<line>`, so a test sees which pod answered,
//! what it received, and which address the connection came from. A first line
//! `GET ...` is an HTTP request (a kubelet probe): it gets `200 ok` and a close.
//! `call ADDR MSG` connects, sends MSG and a newline, and prints the answer.
//! `hold ADDR SECS` keeps one connection open for SECS seconds, sending a line
//! every second and printing how many answers came back (a long-lived stream
//! across certificate rotations).
//! `repeat ADDR SECS` makes a new connection every second for SECS seconds,
//! each a `call`: every failure is printed as `FAIL tick=<n> <why>` when it
//! happens, and `repeat: <ok> ok, <failed> failed` every 10 ticks and at the
//! end (new handshakes, and so new certificates, across a CA rotation).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["pause"] => pause(),
        ["serve", port] => serve(port),
        ["call", addr, msg] => call(addr, msg),
        ["hold", addr, secs] => hold(addr, secs),
        ["repeat", addr, secs] => repeat(addr, secs),
        _ => Err(
            "usage: meshlite-testapp pause | serve PORT | call ADDR MSG | hold ADDR SECS | repeat ADDR SECS"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshlite-testapp: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result = std::result::Result<(), String>;

/// PID 1 of a pod sandbox: wait for a termination signal, reaping children.
fn pause() -> Result {
    // SAFETY: plain libc calls on a signal set owned by this frame; blocking the
    // signals first means sigwait sees them instead of the default action
    // (which PID 1 does not get).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            if sig == libc::SIGCHLD {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                continue;
            }
            return Ok(());
        }
    }
}

fn serve(port: &str) -> Result {
    let listener =
        TcpListener::bind(format!("0.0.0.0:{port}")).map_err(|e| format!("bind :{port}: {e}"))?;
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "testapp".into());
    println!("serving on :{port} as {name}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let from = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let Ok(write_half) = conn.try_clone() else {
                return;
            };
            let mut writer = write_half;
            let mut lines = BufReader::new(conn).lines();
            while let Some(Ok(line)) = lines.next() {
                println!("conn from={from} got={line}");
                if line.starts_with("GET ") {
                    // An HTTP probe: skip its headers, answer 200, close.
                    while lines
                        .next()
                        .is_some_and(|l| l.is_ok_and(|l| !l.trim().is_empty()))
                    {
                    }
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    );
                    return;
                }
                if writeln!(writer, "{name} from={from} got={line}").is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn connect(addr: &str) -> std::result::Result<TcpStream, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {addr}: no address"))?;
    let conn = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

fn call(addr: &str, msg: &str) -> Result {
    let mut conn = connect(addr)?;
    writeln!(conn, "{msg}").map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.is_empty() {
        return Err(format!("{addr} closed the connection without an answer"));
    }
    print!("{answer}");
    Ok(())
}

fn hold(addr: &str, secs: &str) -> Result {
    let secs: u64 = secs.parse().map_err(|e| format!("SECS {secs:?}: {e}"))?;
    let mut conn = connect(addr)?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut answered = 0;
    for tick in 0..secs {
        let mut answer = String::new();
        let ok = writeln!(conn, "tick {tick}").is_ok()
            && reader.read_line(&mut answer).is_ok_and(|n| n > 0);
        if !ok {
            break;
        }
        answered += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("answered {answered} of {secs}");
    if answered == secs {
        Ok(())
    } else {
        Err(format!(
            "the connection to {addr} broke after {answered} of {secs}"
        ))
    }
}

fn repeat(addr: &str, secs: &str) -> Result {
    let secs: u64 = secs.parse().map_err(|e| format!("SECS {secs:?}: {e}"))?;
    let (mut ok, mut failed) = (0u64, 0u64);
    for tick in 0..secs {
        let once = || -> Result {
            let mut conn = connect(addr)?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            writeln!(conn, "repeat {tick}").map_err(|e| format!("send: {e}"))?;
            let mut answer = String::new();
            BufReader::new(conn)
                .read_line(&mut answer)
                .map_err(|e| format!("read: {e}"))?;
            if answer.is_empty() {
                return Err("closed without an answer".into());
            }
            Ok(())
        };
        match once() {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                println!("FAIL tick={tick} {e}");
            }
        }
        if (tick + 1) % 10 == 0 {
            println!("repeat: {ok} ok, {failed} failed");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("repeat: {ok} ok, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} of {secs} connections to {addr} failed"))
    }
}
