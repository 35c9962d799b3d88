//! Running the proxies as processes, and reading their resource use.

use anyhow::{Context, bail};
use meshlite_proxy::testing::TestCa;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which proxying is in the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    Direct,
    PlainRelay,
    Mtls,
    /// The reference: a plain tokio-rustls mTLS relay pair (`meshlite-ref-relay`).
    Reference,
    /// The mTLS pair with client address preservation on, in network
    /// namespaces (`meshlite-bench-client-address` starts it, not [`Pair::start`]).
    MtlsPreserve,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::PlainRelay => "plain relay",
            Setup::Mtls => "mtls",
            Setup::Reference => "reference relay",
            Setup::MtlsPreserve => "mtls, address preserved",
        }
    }
}

/// Options for starting a pair.
#[derive(Debug, Clone, Default)]
pub struct PairOptions {
    /// Pin both proxies to this CPU.
    pub pin_cpu: Option<usize>,
    pub no_resumption: bool,
    pub classic_kx: bool,
    pub worker_threads: Option<usize>,
    /// Get certificates from certd (and keep them renewed) instead of reading
    /// the PEM files [`write_credentials`] wrote.
    pub certd: Option<CertdCreds>,
}

/// How the proxies reach certd: its cluster-mode client, against certd's
/// embedded mode. The workloads are `ns/<namespace>/sa/client` and
/// `ns/<namespace>/sa/server`.
#[derive(Debug, Clone)]
pub struct CertdCreds {
    pub url: String,
    /// certd's CA: the proxies' trust bundle, which also verifies certd.
    pub bundle: PathBuf,
    pub namespace: String,
    /// Holds `client.token` and `server.token`, the bearer tokens certd knows.
    pub token_dir: PathBuf,
}

impl CertdCreds {
    fn args(&self, who: &str) -> Vec<String> {
        vec![
            "--certd-url".into(),
            self.url.clone(),
            "--token-file".into(),
            self.token_dir
                .join(format!("{who}.token"))
                .display()
                .to_string(),
            "--namespace".into(),
            self.namespace.clone(),
            "--service-account".into(),
            who.into(),
            "--trust-bundle".into(),
            self.bundle.display().to_string(),
        ]
    }

    /// The identity the server proxy gets, which the client proxy pins (there
    /// is no cluster for secure naming to answer from).
    pub fn server_identity(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/server",
            meshlite_contract::DEFAULT_TRUST_DOMAIN,
            self.namespace
        )
    }
}

/// Builds the release proxy binary and returns its path.
pub fn build_proxy() -> anyhow::Result<PathBuf> {
    build_release("meshlite-proxy", "meshlite-proxy")
}

/// Builds the release reference relay ([`Setup::Reference`]) and returns its path.
pub fn build_reference() -> anyhow::Result<PathBuf> {
    build_release("meshlite-benches", "meshlite-ref-relay")
}

fn build_release(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", package, "--bin", bin])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building {bin} failed");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("release").join(bin))
}

/// A free loopback port (bound and released; fine for a benchmark).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One proxy process, killed on drop.
#[derive(Debug)]
pub struct ProxyProc {
    pub child: Child,
    /// meshlite's admin port; the reference relay has none.
    pub admin: Option<SocketAddr>,
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Anonymous (heap, stacks) part of the RSS; the rest is the mapped binary
    /// and libraries.
    pub anon_mib: f64,
}

impl ProxyProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current CPU seconds, RSS and peak RSS since the last [`reset_peak`].
    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Usage {
            cpu_seconds: (ticks(11) + ticks(12)) / hz,
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            anon_mib: kib("RssAnon:") / 1024.0,
        }
    }

    /// Open file descriptors (sockets, mostly).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// The admin port's `/metrics` text, or empty if it did not answer.
    pub fn metrics(&self) -> String {
        self.admin
            .and_then(|a| admin_get(a, "/metrics"))
            .and_then(|r| r.split_once("\r\n\r\n").map(|(_, body)| body.to_string()))
            .unwrap_or_default()
    }

    /// Resets the peak-RSS watermark (Linux `clear_refs` 5).
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }
}

/// A client-side and a server-side proxy in front of `backend`.
#[derive(Debug)]
pub struct Pair {
    pub client: ProxyProc,
    pub server: ProxyProc,
    /// Where the client application connects.
    pub entry: SocketAddr,
}

fn command(bin: &Path, opts: &PairOptions) -> Command {
    match opts.pin_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

fn spawn(bin: &Path, args: &[String], opts: &PairOptions) -> anyhow::Result<Child> {
    let mut cmd = command(bin, opts);
    cmd.arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn().context("spawning meshlite-proxy")
}

/// A GET on a proxy's admin port: the whole response, head and body.
fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn ready(admin: SocketAddr) -> bool {
    admin_get(admin, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

impl Pair {
    /// Starts the pair for `setup` (not [`Setup::Direct`]) in front of `backend`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        setup: Setup,
        backend: SocketAddr,
        opts: &PairOptions,
    ) -> anyhow::Result<Pair> {
        let inbound = free_port()?;
        let outbound = free_port()?;
        let (admin_c, admin_s) = (free_port()?, free_port()?);
        let creds = |who: &str| {
            if let Some(certd) = &opts.certd {
                return certd.args(who);
            }
            let d = dir.join(who);
            vec![
                "--cert".into(),
                d.join("cert.pem").display().to_string(),
                "--key".into(),
                d.join("key.pem").display().to_string(),
                "--trust-bundle".into(),
                d.join("bundle.pem").display().to_string(),
            ]
        };
        let mut common: Vec<String> = vec!["--max-connections".into(), "100000".into()];
        if opts.no_resumption {
            common.push("--no-tls-resumption".into());
        }
        if opts.classic_kx {
            common.extend(["--key-exchange".into(), "classic".into()]);
        }
        if let Some(w) = opts.worker_threads {
            common.extend(["--worker-threads".into(), w.to_string()]);
        }
        let mut server_args: Vec<String> = vec![
            "--no-outbound".into(),
            "--inbound-listen".into(),
            inbound.to_string(),
            "--inbound-backend".into(),
            backend.to_string(),
            "--admin-listen".into(),
            admin_s.to_string(),
        ];
        server_args.extend(creds("server"));
        server_args.extend(common.clone());
        let mode = if setup == Setup::PlainRelay {
            "disabled"
        } else {
            "strict"
        };
        let mut client_args: Vec<String> = vec![
            "--no-inbound".into(),
            "--outbound-listen".into(),
            outbound.to_string(),
            "--outbound-upstream".into(),
            inbound.to_string(),
            "--outbound-mode".into(),
            mode.into(),
            "--admin-listen".into(),
            admin_c.to_string(),
        ];
        client_args.extend(creds("client"));
        if let Some(certd) = &opts.certd {
            client_args.extend(["--outbound-expect-identity".into(), certd.server_identity()]);
        }
        client_args.extend(common);
        let server = ProxyProc {
            child: spawn(bin, &server_args, opts)?,
            admin: Some(admin_s),
        };
        let client = ProxyProc {
            child: spawn(bin, &client_args, opts)?,
            admin: Some(admin_c),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(ready(admin_c) && ready(admin_s)) {
            if Instant::now() > deadline {
                bail!("proxies did not become ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Pair {
            client,
            server,
            entry: outbound,
        })
    }

    /// Starts the reference relay pair ([`Setup::Reference`], binary `bin`) in
    /// front of `backend`, with the credentials in `dir` and the worker
    /// threads of `opts` (2 unless set, as meshlite's default).
    pub fn start_reference(
        bin: &Path,
        dir: &Path,
        backend: SocketAddr,
        opts: &PairOptions,
    ) -> anyhow::Result<Pair> {
        let (inbound, outbound) = (free_port()?, free_port()?);
        let workers = opts.worker_threads.unwrap_or(2).to_string();
        let start = |role: &str, listen: SocketAddr, to: SocketAddr| -> anyhow::Result<ProxyProc> {
            let mut cmd = command(bin, opts);
            cmd.args([role, &listen.to_string(), &to.to_string()])
                .arg(dir.join(role))
                .arg(&workers);
            if opts.no_resumption {
                cmd.arg("--no-resumption");
            }
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawning meshlite-ref-relay")?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                use std::io::BufRead;
                let _ = std::io::BufReader::new(out).read_line(&mut line);
            }
            let proc = ProxyProc { child, admin: None };
            if line.trim() != "ready" {
                bail!("meshlite-ref-relay {role} did not start");
            }
            Ok(proc)
        };
        let server = start("server", inbound, backend)?;
        let client = start("client", outbound, inbound)?;
        Ok(Pair {
            client,
            server,
            entry: outbound,
        })
    }
}

/// Writes credentials for the two proxies into `dir`.
pub fn write_credentials(dir: &Path) -> anyhow::Result<()> {
    let ca = TestCa::new("meshlite bench CA");
    for (who, id) in [
        ("client", "spiffe://cluster.local/ns/bench/sa/client"),
        ("server", "spiffe://cluster.local/ns/bench/sa/server"),
    ] {
        let d = dir.join(who);
        std::fs::create_dir_all(&d)?;
        ca.write_files(&d, id)?;
    }
    Ok(())
}

/// Raises this process's open-file limit to its hard limit (children, such
/// as the proxies, inherit it) and fails if that is below `need`.
pub fn raise_fd_limit(need: u64) -> anyhow::Result<u64> {
    // None: unlimited.
    let have = meshlite_proxy::config::raise_nofile_limit().unwrap_or(u64::MAX);
    if have < need {
        bail!(
            "RLIMIT_NOFILE: the hard limit is {have} open files, this run needs about {need} \
             per process (raise it with `ulimit -Hn` as root, or hold fewer connections)"
        );
    }
    Ok(have)
}

/// Pins the calling process (and the threads it creates later) to one CPU.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity are given a valid set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
