//! The cost of client address preservation (`--preserve-client-address`),
//! measured where it applies: across a veth between two network namespaces, a
//! client pod and a server pod, built as `proxy/tests/client_address_netns.rs`
//! builds them. On loopback the proxy never preserves (a loopback client is
//! `not_applicable`), so `meshlite-bench` cannot show the cost.
//!
//! Three pod pairs, built alike (one veth, IPv4, the same sysctls), each
//! measured in the same run, interleaved, workload by workload:
//!
//! - **direct**: the client pod connects to the server pod's app; no rules, no
//!   proxy.
//! - **mtls** (preservation off): the server pod gets the default `meshlite-proxy
//!   init` rules and an inbound proxy; the client pod redirects the app's port to
//!   its outbound proxy (`strict`). The app sees the server pod's own address.
//! - **mtls, address preserved**: the same with `init --preserve-client-address`
//!   and the server proxy run with `--preserve-client-address`. The app sees the
//!   client pod's address.
//!
//! Both server proxies start as the injector starts a preserving one (root,
//! bounding set NET_RAW + SETUID + SETGID, `no_new_privs`; the proxy switches to
//! UID 2102), so the flag is the only difference between the two mesh paths.
//!
//! **It cannot measure the wrong thing quietly.** The app records the peer
//! address of every connection; after each measurement the path checks that
//! every one came from the address it must (the client pod's, or under
//! preservation off the server pod's own) and fails otherwise, and at the end
//! the preserving proxy's `preserved` count must equal the connections the app
//! saw.
//!
//! **Cleanup.** The namespaces and proxies go when the paths drop. Release
//! builds abort on panic and a signal ends the process where it stands, so
//! [`install_cleanup`] also removes them from a panic hook and on SIGINT,
//! SIGTERM and SIGHUP.

pub mod table;

use crate::measure::{Plan, measure};
use crate::procs::{Pair, ProxyProc, Setup, Usage};
use crate::report::Sample;
use crate::workloads::{self, Peers};
use anyhow::{Context, bail, ensure};
use meshlite_contract::{OUTBOUND_PORT, PROXY_UID};
use meshlite_proxy::testing::TestCa;
use meshlite_proxy::testing::netns::{self, Netns};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path as FsPath;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Prefix of the namespaces' tags (`mlcab…`), apart from every test's.
pub const TAG: &str = "cab";
/// The server pod's app port, redirected on both sides.
const APP_PORT: u16 = 8080;
/// The workloads, in the order each repeat runs them.
pub const WORKLOADS: [&str; 4] = ["bulk s1", "rr c1", "rr c16", "churn c16 resumed"];
/// CapEff of a proxy that kept CAP_NET_RAW (bit 13) and nothing else.
const NET_RAW_ONLY: u64 = 1 << 13;

/// The tools a run needs, for the iptables backend `backend` of `init`.
pub fn tools(backend: &str) -> Vec<String> {
    let mut t: Vec<String> = ["ip", "setpriv", "iptables"].map(String::from).into();
    for op in ["save", "restore"] {
        t.push(format!("iptables-{backend}-{op}"));
    }
    t
}

/// What every path shares: the proxy binary, the credentials, the backend.
#[derive(Debug)]
pub struct Env {
    bin: String,
    backend: String,
    creds: tempfile::TempDir,
}

impl Env {
    /// Credentials for the client and server identities, readable by the
    /// proxy UID, from a throwaway CA.
    pub fn new(bin: &FsPath, backend: &str) -> anyhow::Result<Env> {
        let bin = bin
            .to_str()
            .context("the proxy binary's path is not UTF-8")?
            .to_string();
        let creds = tempfile::tempdir()?;
        netns::sh(&format!("chmod a+rx {}", creds.path().display()));
        let ca = TestCa::new("meshlite client-address bench CA");
        for who in ["client", "server"] {
            let id = format!("spiffe://cluster.local/ns/bench/sa/{who}");
            netns::write_creds(&ca, &creds.path().join(who), &id);
        }
        Ok(Env {
            bin,
            backend: backend.into(),
            creds,
        })
    }
}

/// One measured path: its two pods, its proxies (none for direct), the app's
/// peer log, and a runtime whose threads live in the client pod, so the
/// workloads' sockets do.
#[derive(Debug)]
pub struct Path {
    pub setup: Setup,
    /// Where the client connects: the app, at the server pod's address.
    pub entry: SocketAddr,
    /// The address the app must see every connection from.
    pub expected_peer: IpAddr,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    /// Both proxies' use half a second after they were ready.
    pub idle: Option<[Usage; 2]>,
    /// Every peer the app saw over the run, with its connection count.
    pub seen: BTreeMap<IpAddr, u64>,
    peers: Arc<Peers>,
    rt: tokio::runtime::Runtime,
    pair: Option<Pair>,
    /// Held, never read: the client pod lives as long as the path.
    _client: Netns,
    server: Netns,
}

impl Path {
    /// Builds the pods for `setup` (direct, mtls or mtls-preserve) on
    /// 10.215.`subnet`.0/24 and starts the app and the proxies.
    pub fn start(setup: Setup, subnet: u8, env: &Env) -> anyhow::Result<Path> {
        let letter = match setup {
            Setup::Direct => 'd',
            Setup::Mtls => 'o',
            Setup::MtlsPreserve => 'p',
            other => bail!("{} is not a client-address path", other.name()),
        };
        let client = new_netns(&format!("{TAG}{letter}c"));
        let server = new_netns(&format!("{TAG}{letter}s"));
        let (client_ip, server_ip): (IpAddr, IpAddr) = (
            format!("10.215.{subnet}.1").parse()?,
            format!("10.215.{subnet}.2").parse()?,
        );
        netns::link(
            &client,
            &[&format!("{client_ip}/24")],
            &server,
            &[&format!("{server_ip}/24")],
        );
        for ns in [&client, &server] {
            // Churn opens thousands of connections a second to one address;
            // with the default (reuse of TIME_WAIT ports on loopback only) the
            // client pod runs out of ports within seconds. Every pod alike.
            ns.exec("echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse");
        }
        let name = client.name.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || netns::enter(&name))
            .build()?;
        let entry = SocketAddr::new(server_ip, APP_PORT);
        let peers = Arc::new(Peers::default());
        let app = server
            .run(move || std::net::TcpListener::bind(entry))
            .with_context(|| format!("binding the app on {entry} in {}", server.name))?;
        app.set_nonblocking(true)?;
        {
            let _in_rt = rt.enter();
            let app = tokio::net::TcpListener::from_std(app)?;
            rt.spawn(workloads::serve(app, Some(peers.clone())));
        }
        let pair = match setup {
            Setup::Direct => None,
            _ => Some(mesh(
                &client,
                &server,
                entry,
                setup == Setup::MtlsPreserve,
                env,
            )?),
        };
        let idle = pair.as_ref().map(|p| {
            std::thread::sleep(Duration::from_millis(500));
            [p.client.usage(), p.server.usage()]
        });
        Ok(Path {
            setup,
            entry,
            expected_peer: if setup == Setup::Mtls {
                server_ip
            } else {
                client_ip
            },
            client_ip,
            server_ip,
            idle,
            seen: BTreeMap::new(),
            peers,
            rt,
            pair,
            _client: client,
            server,
        })
    }

    /// Runs one workload on this path and checks whom the app saw.
    pub fn measure(&mut self, workload: &str, plan: &Plan) -> anyhow::Result<Sample> {
        let s = self
            .rt
            .block_on(measure(
                workload,
                self.setup,
                self.entry,
                self.pair.as_ref(),
                plan,
            ))
            .with_context(|| format!("{workload} on {}", self.setup.name()))?;
        let seen = self.peers.take();
        let whose = if self.expected_peer == self.client_ip {
            "the client pod's address"
        } else {
            "the server pod's own address"
        };
        ensure!(
            !seen.is_empty() && seen.keys().all(|ip| *ip == self.expected_peer),
            "{workload} on {}: the app saw connections from {seen:?}, but every one must come \
             from {} ({whose}); this run would not measure what it claims",
            self.setup.name(),
            self.expected_peer
        );
        for (ip, n) in seen {
            *self.seen.entry(ip).or_default() += n;
        }
        Ok(s)
    }

    /// The server proxy's `meshlite_client_address_connections_total` by
    /// result; with preservation on, `preserved` must equal the connections
    /// the app saw (each connection to the app is one the proxy made).
    pub fn check_metric(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        if self.pair.is_none() {
            return Ok(BTreeMap::new());
        }
        let text = self.server.admin_get("/metrics");
        let prefix = "meshlite_client_address_connections_total{result=\"";
        let counts: BTreeMap<String, f64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(prefix)?;
                let (result, value) = rest.split_once("\"} ")?;
                Some((result.to_string(), value.trim().parse().ok()?))
            })
            .collect();
        let app: u64 = self.seen.values().sum();
        let preserved = counts.get("preserved").copied().unwrap_or(0.0);
        let want = if self.setup == Setup::MtlsPreserve {
            app as f64
        } else {
            0.0
        };
        ensure!(
            preserved == want,
            "{}: the server proxy counted {preserved} preserved connections, the app saw {app} \
             (expected {want} preserved); counts: {counts:?}",
            self.setup.name()
        );
        Ok(counts)
    }
}

/// The mesh path's proxies, as the netns test starts them: the server pod's
/// rules from the real `init`, its proxy as container root; the client pod's
/// app port redirected to its outbound proxy, run as the proxy UID.
fn mesh(
    client: &Netns,
    server: &Netns,
    entry: SocketAddr,
    preserve: bool,
    env: &Env,
) -> anyhow::Result<Pair> {
    let flag = if preserve {
        " --preserve-client-address"
    } else {
        ""
    };
    server.exec(&format!(
        "{} init --iptables-backend {} --ipv6 off{flag}",
        env.bin, env.backend
    ));
    let mut extra = vec!["--no-outbound", "--max-connections", "100000"];
    if preserve {
        extra.push("--preserve-client-address");
    }
    let creds = env.creds.path();
    let server_proxy = spawn(netns::container_root_command(
        server,
        &env.bin,
        &creds.join("server"),
        &extra,
    ))?;
    server.wait_proxy_ready();
    let want_caps = if preserve { NET_RAW_ONLY } else { 0 };
    let (uid, caps) = uid_and_caps(server_proxy.pid())?;
    ensure!(
        uid == PROXY_UID && caps == want_caps,
        "the server proxy runs as UID {uid} with CapEff {caps:#x}; expected UID {PROXY_UID} \
         with {want_caps:#x}"
    );
    client.exec(&format!(
        "iptables -t nat -A OUTPUT -p tcp -o eth0 --dport {APP_PORT} -m owner ! --uid-owner \
         {PROXY_UID} -j REDIRECT --to-ports {OUTBOUND_PORT}"
    ));
    let client_proxy = spawn(netns::proxy_command(
        client,
        &env.bin,
        &creds.join("client"),
        &[
            "--no-inbound",
            "--outbound-mode",
            "strict",
            "--max-connections",
            "100000",
        ],
    ))?;
    client.wait_proxy_ready();
    Ok(Pair {
        client: client_proxy,
        server: server_proxy,
        entry,
    })
}

/// The real UID and effective capabilities of `pid`, from /proc.
fn uid_and_caps(pid: u32) -> anyhow::Result<(u32, u64)> {
    let field = |name: &str| -> anyhow::Result<String> {
        let value = netns::proc_status_field(pid, name).map_err(anyhow::Error::msg)?;
        // The real UID is the first of `Uid:`'s four.
        Ok(value
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    };
    Ok((
        field("Uid:")?.parse()?,
        u64::from_str_radix(&field("CapEff:")?, 16)?,
    ))
}

/// What a death without destructors must undo: namespace names, and proxy
/// pids with their start times (so a reused pid is never killed).
struct Left {
    netns: Vec<String>,
    procs: Vec<(u32, u64)>,
}

static LEFT: Mutex<Left> = Mutex::new(Left {
    netns: Vec::new(),
    procs: Vec::new(),
});

fn left() -> std::sync::MutexGuard<'static, Left> {
    LEFT.lock().unwrap_or_else(PoisonError::into_inner)
}

fn new_netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    left().netns.push(ns.name.clone());
    ns
}

fn spawn(mut cmd: Command) -> anyhow::Result<ProxyProc> {
    cmd.env("RUST_LOG", "warn");
    let child = cmd.spawn().context("spawning meshlite-proxy")?;
    if let Some(t) = start_time(child.id()) {
        left().procs.push((child.id(), t));
    }
    Ok(ProxyProc { child, admin: None })
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Kills what is still ours and deletes the namespaces. Never blocks: a
/// panic may come while the list is held.
fn cleanup() {
    let left = match LEFT.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for &(pid, started) in &left.procs {
        if start_time(pid) == Some(started) {
            // SAFETY: kill has no memory preconditions; the pid is our
            // child's, checked by its start time.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    for name in &left.netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
    }
}

/// Removes the namespaces and proxies on a panic and on SIGINT, SIGTERM or
/// SIGHUP. Call first in `main`, before any other thread exists: the signals
/// are blocked in this thread and so in every thread started later, and one
/// thread waits for them (`Command` unblocks them in the children it starts).
pub fn install_cleanup() -> anyhow::Result<()> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        cleanup();
    }));
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset, which
    // initialises it; the pointers are to live locals.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        ensure!(rc == 0, "pthread_sigmask: error {rc}");
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a live local.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("signal {sig}: removing the benchmark's network namespaces and proxies");
        cleanup();
        std::process::exit(128 + sig);
    });
    Ok(())
}

/// Every workload on every path, `repeats` times, interleaved; the two mesh
/// paths swap places on every other repeat, so neither always runs right
/// after the other.
pub fn run(
    paths: &mut [Path],
    workloads: &[&str],
    repeats: usize,
    plan: &Plan,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for repeat in 0..repeats {
        eprintln!("repeat {}/{repeats}", repeat + 1);
        for w in workloads {
            let mut order: Vec<usize> = (0..paths.len()).collect();
            if repeat % 2 == 1 {
                order[1..].reverse();
            }
            for i in order {
                let s = paths[i].measure(w, plan)?;
                eprintln!(
                    "  {w:>17} {:>23}: {:.2} {}",
                    paths[i].setup.name(),
                    s.value,
                    s.unit
                );
                samples.push(s);
            }
        }
    }
    Ok(samples)
}
