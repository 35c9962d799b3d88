//! The soak: the proxy pair holding many connections, and taking steady new
//! ones, while certd rotates both proxies' certificates several times.
//!
//! The question it answers: does rotation, or time, break connections or leak
//! memory and file descriptors? The setup is the mTLS pair of
//! [`crate::procs::Pair`] (release binary, explicit mode, strict, with the
//! server identity pinned), except that the proxies get their certificates
//! from certd, in embedded mode in this process, with a leaf lifetime short
//! enough (below the CSR API's ten-minute minimum; embedded mode only) that
//! each proxy renews several times during the run.
//!
//! - **Held connections** are opened with bounded concurrency before the clock
//!   starts, each checked by an echo at open. Every `ping_every` (spread over
//!   the connections) each sends one byte that must come back, so a connection
//!   that rotation silently broke is found; at the end each is pinged once
//!   more and closed with a half-close that must propagate. A held connection
//!   that fails is counted and re-opened.
//! - **New connections** arrive at `rate` per second for the whole run, with
//!   bounded concurrency: connect, 64 bytes echoed, half-close, EOF.
//! - Every `sample_every` a sampler thread records, per proxy, RSS and open fds
//!   from `/proc`, and the renewals and `notAfter` from the admin `/metrics`.
//!
//! Every I/O step has a timeout, every loop ends at the deadline, and the whole
//! run is bounded; failures are counted by phase and reason.

use crate::procs::{CertdCreds, Pair, PairOptions, ProxyProc, Setup};
use anyhow::Context;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout};

/// What one run does.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// Connections held open for the whole run.
    pub held: usize,
    /// New connections per second, for the whole run.
    pub rate: u32,
    /// How long the held connections are held once all are open.
    pub duration: Duration,
    /// Leaf certificate lifetime; the proxies renew at about half of it.
    pub lifetime: Duration,
    /// How often each held connection proves it still echoes.
    pub ping_every: Duration,
    pub sample_every: Duration,
    /// Most new connections in flight at once.
    pub churn_concurrency: usize,
    /// Most held connections being opened at once.
    pub open_concurrency: usize,
    /// Budget for each step: a connect, an echo, a close.
    pub io_timeout: Duration,
    /// Renewals each proxy must have made for the run to pass.
    pub min_renewals: u64,
}

/// Where a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening a held connection, or its first echo.
    HeldOpen,
    /// A periodic (or the final) one-byte echo on a held connection.
    HeldPing,
    /// The half-close at the end that must come back as EOF.
    HeldClose,
    /// A new connection of the churn.
    Churn,
    /// A held connection's task was still running after the run's budget.
    Stuck,
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The TCP connect to the outbound proxy failed.
    Connect,
    /// Reset or broken pipe: the proxies' mTLS handshake failing shows as this.
    Reset,
    /// EOF where bytes were due.
    Closed,
    /// Bytes came back, but not the ones sent.
    WrongEcho,
    /// No answer within the step's budget.
    Timeout,
    Other,
}

impl Reason {
    /// The reason for an I/O error after the connection was established.
    pub fn of(e: &io::Error) -> Reason {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => Reason::Reset,
            UnexpectedEof => Reason::Closed,
            TimedOut => Reason::Timeout,
            _ => Reason::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Reset => "reset",
            Reason::Closed => "closed",
            Reason::WrongEcho => "wrong echo",
            Reason::Timeout => "timeout",
            Reason::Other => "other",
        }
    }
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::HeldOpen => "held open",
            Phase::HeldPing => "held ping",
            Phase::HeldClose => "held close",
            Phase::Churn => "new connection",
            Phase::Stuck => "held, stuck",
        }
    }
}

/// One failed step, with the error's text.
#[derive(Debug)]
pub struct Failure {
    pub reason: Reason,
    pub detail: String,
}

impl Failure {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            detail: detail.into(),
        }
    }

    fn io(e: &io::Error) -> Self {
        Failure::new(Reason::of(e), e.to_string())
    }
}

/// Errors kept verbatim (the first few) so a failed run says what happened.
const EXAMPLES: usize = 20;
const EXAMPLES_PER_KIND: u64 = 3;

/// Counters shared by the connection tasks and the sampler.
#[derive(Debug)]
pub struct State {
    alive: AtomicUsize,
    peak_alive: AtomicUsize,
    held_opens: AtomicU64,
    churn_ok: AtomicU64,
    churn_failed: AtomicU64,
    failures: Mutex<BTreeMap<(Phase, Reason), u64>>,
    examples: Mutex<Vec<String>>,
    /// Time for a whole new connection (connect, echo, close), microseconds.
    churn_us: Mutex<Histogram<u64>>,
}

impl State {
    fn new() -> anyhow::Result<Self> {
        Ok(State {
            alive: AtomicUsize::new(0),
            peak_alive: AtomicUsize::new(0),
            held_opens: AtomicU64::new(0),
            churn_ok: AtomicU64::new(0),
            churn_failed: AtomicU64::new(0),
            failures: Mutex::default(),
            examples: Mutex::default(),
            churn_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        })
    }

    fn fail(&self, phase: Phase, f: Failure) {
        if phase == Phase::Churn {
            self.churn_failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let seen = failures.entry((phase, f.reason)).or_default();
        *seen += 1;
        let mut ex = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        // The first few of each kind, so one kind cannot hide the others.
        if *seen <= EXAMPLES_PER_KIND && ex.len() < EXAMPLES {
            ex.push(format!(
                "{}: {}: {}",
                phase.name(),
                f.reason.name(),
                f.detail
            ));
        }
    }

    fn opened(&self) {
        self.held_opens.fetch_add(1, Ordering::Relaxed);
        let now = self.alive.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_alive.fetch_max(now, Ordering::Relaxed);
    }

    fn failed_total(&self) -> u64 {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.values().sum()
    }
}

async fn connect(entry: SocketAddr, budget: Duration) -> Result<TcpStream, Failure> {
    let s = timeout(budget, TcpStream::connect(entry))
        .await
        .map_err(|_| Failure::new(Reason::Timeout, "connect"))?
        .map_err(|e| Failure::new(Reason::Connect, e.to_string()))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Sends `out` (at most 64 bytes) and requires exactly it back.
async fn echo(s: &mut TcpStream, out: &[u8], budget: Duration) -> Result<(), Failure> {
    let mut back = [0u8; 64];
    let back = &mut back[..out.len()];
    timeout(budget, async {
        s.write_all(out).await?;
        s.read_exact(back).await
    })
    .await
    .map_err(|_| Failure::new(Reason::Timeout, "echo"))?
    .map_err(|e| Failure::io(&e))?;
    if back != out {
        return Err(Failure::new(
            Reason::WrongEcho,
            format!("sent {out:02x?}, got {back:02x?}"),
        ));
    }
    Ok(())
}

/// Half-closes and requires the echo server's EOF to come back through the
/// pair, with nothing before it.
pub async fn close(mut s: TcpStream, budget: Duration) -> Result<(), Failure> {
    let mut rest = [0u8; 16];
    let n = timeout(budget, async {
        s.shutdown().await?;
        s.read(&mut rest).await
    })
    .await
    .map_err(|_| Failure::new(Reason::Timeout, "waiting for EOF after the half-close"))?
    .map_err(|e| Failure::io(&e))?;
    if n != 0 {
        return Err(Failure::new(
            Reason::WrongEcho,
            format!("{n} unexpected bytes before EOF"),
        ));
    }
    Ok(())
}

/// The bytes a connection echoes at open: its number and a marker, so a
/// crossed connection is caught.
fn hello(id: usize, generation: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(id as u64).to_le_bytes());
    b[8..12].copy_from_slice(&generation.to_le_bytes());
    b[12..].copy_from_slice(b"SOAK");
    b
}

/// Opens a connection that will be held, and proves it with an echo naming it.
pub async fn open_held(
    entry: SocketAddr,
    id: usize,
    generation: u32,
    budget: Duration,
) -> Result<TcpStream, Failure> {
    let mut s = connect(entry, budget).await?;
    echo(&mut s, &hello(id, generation), budget).await?;
    Ok(s)
}

/// Pings `s` every `ping_every`, starting at `first`, until `end`; then once more.
async fn keep(
    s: &mut TcpStream,
    mut next: Instant,
    end: Instant,
    plan: &Plan,
) -> Result<(), Failure> {
    let mut byte = 0u8;
    loop {
        let last = next >= end;
        tokio::time::sleep_until(next.min(end)).await;
        byte = byte.wrapping_add(1);
        echo(s, &[byte], plan.io_timeout).await?;
        if last {
            return Ok(());
        }
        next += plan.ping_every;
    }
}

/// One held connection for the whole run: opened during the ramp (holding a
/// permit of `ramp`), then kept until the deadline that `go` announces.
async fn hold(
    entry: SocketAddr,
    id: usize,
    plan: Arc<Plan>,
    state: Arc<State>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut go: watch::Receiver<Option<Instant>>,
) {
    let mut conn = match open_held(entry, id, 0, plan.io_timeout).await {
        Ok(s) => {
            state.opened();
            Some(s)
        }
        Err(f) => {
            state.fail(Phase::HeldOpen, f);
            None
        }
    };
    // Counted before the permit goes, so the ramp's end sees every open.
    drop(permit);
    // The sender lives until the end of the run; if it went, stop at once.
    let end = match go.wait_for(Option::is_some).await {
        Ok(end) => (*end).unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    };
    // Spread the pings over the interval, by connection number.
    let spread = plan.ping_every.mul_f64(id as f64 / plan.held.max(1) as f64);
    let mut next = Instant::now() + spread;
    let mut generation = 0u32;
    loop {
        let mut s = match conn.take() {
            Some(s) => s,
            None => {
                if Instant::now() + plan.io_timeout >= end {
                    return;
                }
                generation += 1;
                match open_held(entry, id, generation, plan.io_timeout).await {
                    Ok(s) => {
                        state.opened();
                        s
                    }
                    Err(f) => {
                        state.fail(Phase::HeldOpen, f);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        };
        let kept = keep(&mut s, next, end, &plan).await;
        state.alive.fetch_sub(1, Ordering::Relaxed);
        match kept {
            Ok(()) => {
                if let Err(f) = close(s, plan.io_timeout).await {
                    state.fail(Phase::HeldClose, f);
                }
                return;
            }
            Err(f) => {
                state.fail(Phase::HeldPing, f);
                next = Instant::now() + plan.ping_every;
            }
        }
    }
}

/// One new connection: connect, 64 bytes echoed, half-close, EOF.
async fn one_new(entry: SocketAddr, n: u64, plan: &Plan) -> Result<(), Failure> {
    let mut s = connect(entry, plan.io_timeout).await?;
    let mut msg = [0u8; 64];
    for (i, b) in msg.iter_mut().enumerate() {
        *b = (n as u8).wrapping_add(i as u8);
    }
    echo(&mut s, &msg, plan.io_timeout).await?;
    close(s, plan.io_timeout).await
}

/// New connections at `plan.rate` per second until `go` announces the end
/// and it has passed. Returns how long it kept starting them.
async fn churn(
    entry: SocketAddr,
    plan: Arc<Plan>,
    state: Arc<State>,
    go: watch::Receiver<Option<Instant>>,
) -> Duration {
    let start = Instant::now();
    let slots = Arc::new(Semaphore::new(plan.churn_concurrency));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.rate.max(1));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if go.borrow().is_some_and(|end| Instant::now() >= end) {
            break;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        n += 1;
        let (plan, state) = (plan.clone(), state.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            match one_new(entry, n, &plan).await {
                Ok(()) => {
                    state.churn_ok.fetch_add(1, Ordering::Relaxed);
                    let us = t.elapsed().as_micros().max(1) as u64;
                    let mut h = state.churn_us.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = h.record(us);
                }
                Err(f) => state.fail(Phase::Churn, f),
            }
            drop(slot);
        });
    }
    let ran = start.elapsed();
    // Wait for the ones in flight (each is bounded by its timeouts).
    let _ = slots.acquire_many(plan.churn_concurrency as u32).await;
    ran
}

/// One proxy at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProxyPoint {
    pub rss_mib: f64,
    pub anon_mib: f64,
    pub cpu_seconds: f64,
    pub fds: usize,
    /// Successful certificate requests to certd (the first one included).
    pub certs_issued: u64,
    /// Failed certificate requests.
    pub cert_failures: u64,
    /// The current certificate's notAfter (Unix seconds).
    pub not_after: i64,
    pub handshake_failures: u64,
    pub refused: u64,
}

/// The whole harness at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Point {
    /// Seconds since the ramp began.
    pub t_s: f64,
    pub held_alive: usize,
    pub churn_ok: u64,
    pub failed: u64,
    /// Client-side (outbound) proxy, then server-side (inbound).
    pub proxies: [ProxyPoint; 2],
}

/// The sum of the samples of metric `name` whose labels contain `labels`
/// (Prometheus text format; `name` without labels matches the bare series).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn proxy_point(p: &ProxyProc) -> ProxyPoint {
    let u = p.usage();
    let m = p.metrics();
    let renewals = metric(&m, "meshlite_certificate_renewals_total", "");
    let ok = metric(&m, "meshlite_certificate_renewals_total", "result=\"ok\"");
    ProxyPoint {
        rss_mib: u.rss_mib,
        anon_mib: u.anon_mib,
        cpu_seconds: u.cpu_seconds,
        fds: p.open_fds(),
        certs_issued: ok as u64,
        cert_failures: (renewals - ok) as u64,
        not_after: metric(&m, "meshlite_identity_cert_not_after_timestamp_seconds", "") as i64,
        handshake_failures: metric(&m, "meshlite_tls_handshake_failures_total", "") as u64,
        refused: metric(&m, "meshlite_refused_connections_total", "") as u64,
    }
}

fn point(t0: std::time::Instant, pair: &Pair, state: &State) -> Point {
    Point {
        t_s: t0.elapsed().as_secs_f64(),
        held_alive: state.alive.load(Ordering::Relaxed),
        churn_ok: state.churn_ok.load(Ordering::Relaxed),
        failed: state.failed_total(),
        proxies: [proxy_point(&pair.client), proxy_point(&pair.server)],
    }
}

/// One line of progress.
pub fn progress_line(p: &Point, held: usize) -> String {
    let proxy = |who: &str, x: &ProxyPoint| {
        format!(
            "{who} rss {:.1} MiB fds {} certs {}",
            x.rss_mib, x.fds, x.certs_issued
        )
    };
    format!(
        "[{:>5.0}s] held {}/{held}  new ok {}  failed {}  | {} | {}",
        p.t_s,
        p.held_alive,
        p.churn_ok,
        p.failed,
        proxy("client", &p.proxies[0]),
        proxy("server", &p.proxies[1]),
    )
}

/// Start, peak and end of one quantity of one proxy.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Span {
    /// Idle, before any connection.
    pub start: f64,
    /// The first sample after the ramp: every held connection open.
    pub ramped: f64,
    pub peak: f64,
    /// The last sample under load (before the held connections closed).
    pub end: f64,
    /// After every connection closed.
    pub after: f64,
}

/// What a run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub plan: Plan,
    pub ramp_s: f64,
    /// From the start of the ramp to the last connection closed.
    pub total_s: f64,
    /// Most held connections alive at once.
    pub held_peak: usize,
    /// Held connections alive at the last sample before the close.
    pub held_at_end: usize,
    /// Held connections opened, re-opens after a failure included.
    pub held_opens: u64,
    pub churn_ok: u64,
    pub churn_failed: u64,
    /// Over the time new connections were being started.
    pub churn_per_s: f64,
    pub churn_p50_ms: f64,
    pub churn_p99_ms: f64,
    pub churn_max_ms: f64,
    pub failures: Vec<(Phase, Reason, u64)>,
    pub failed: u64,
    pub examples: Vec<String>,
    /// Per proxy (client, server): renewals after the first certificate.
    pub renewals: [u64; 2],
    /// Per proxy: distinct notAfter values the samples saw, minus one.
    pub not_after_changes: [u64; 2],
    /// Per proxy: when a sample first saw each new certificate (seconds
    /// since the ramp began; within `sample_every` of the renewal).
    pub renewals_seen_at_s: [Vec<f64>; 2],
    pub cert_failures: [u64; 2],
    pub certd_issued: u64,
    pub handshake_failures: [u64; 2],
    pub refused: [u64; 2],
    pub rss_mib: [Span; 2],
    /// The anonymous part of the RSS (heap and stacks).
    pub anon_mib: [Span; 2],
    pub fds: [Span; 2],
    pub cpu_seconds: [f64; 2],
    /// See [`Series::settled_s`].
    pub settled_s: Option<f64>,
    pub passed: bool,
}

fn span(series: &Series, ramp_s: f64, i: usize, f: fn(&ProxyPoint) -> f64) -> Span {
    let (idle, under_load, after) = (&series.idle, &series.load[..], &series.after);
    let all = std::iter::once(idle).chain(under_load).chain([after]);
    let ramped = under_load.iter().find(|p| p.t_s >= ramp_s);
    Span {
        start: f(&idle.proxies[i]),
        ramped: ramped.map_or(f64::NAN, |p| f(&p.proxies[i])),
        peak: all.map(|p| f(&p.proxies[i])).fold(f64::MIN, f64::max),
        end: under_load.last().map_or(f64::NAN, |p| f(&p.proxies[i])),
        after: f(&after.proxies[i]),
    }
}

/// When proxy `i`'s samples first showed each notAfter after the first.
pub fn renewals_seen_at(points: &[Point], i: usize) -> Vec<f64> {
    let mut seen: Vec<i64> = Vec::new();
    let mut at = Vec::new();
    for p in points {
        let t = p.proxies[i].not_after;
        if t > 0 && !seen.contains(&t) {
            if !seen.is_empty() {
                at.push(p.t_s);
            }
            seen.push(t);
        }
    }
    at
}

/// Puts the samples and the counters together, and decides pass or fail.
fn summarize(
    plan: &Plan,
    state: &State,
    series: &Series,
    [ramp_s, churn_s, total_s]: [f64; 3],
    certd_issued: u64,
) -> Summary {
    let (idle, load, after) = (&series.idle, &series.load[..], &series.after);
    let span = |i, f| span(series, ramp_s, i, f);
    let failures: Vec<(Phase, Reason, u64)> = state
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(&(ph, r), &n)| (ph, r, n))
        .collect();
    let failed = failures.iter().map(|f| f.2).sum();
    let h = state.churn_us.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |us: u64| us as f64 / 1000.0;
    let per = |f: fn(&ProxyPoint) -> u64| [f(&after.proxies[0]), f(&after.proxies[1])];
    let renewals = per(|p| p.certs_issued.saturating_sub(1));
    let churn_ok = state.churn_ok.load(Ordering::Relaxed);
    let churn_failed = state.churn_failed.load(Ordering::Relaxed);
    let renewals_seen = [0, 1].map(|i| renewals_seen_at(&series.all(), i));
    Summary {
        plan: plan.clone(),
        ramp_s,
        total_s,
        held_peak: state.peak_alive.load(Ordering::Relaxed),
        held_at_end: load.last().map_or(0, |p| p.held_alive),
        held_opens: state.held_opens.load(Ordering::Relaxed),
        churn_ok,
        churn_failed,
        churn_per_s: (churn_ok + churn_failed) as f64 / churn_s.max(1e-9),
        churn_p50_ms: ms(h.value_at_quantile(0.5)),
        churn_p99_ms: ms(h.value_at_quantile(0.99)),
        churn_max_ms: ms(h.max()),
        passed: failed == 0 && renewals.iter().all(|&r| r >= plan.min_renewals),
        failures,
        failed,
        examples: state
            .examples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        renewals,
        not_after_changes: renewals_seen.clone().map(|r| r.len() as u64),
        renewals_seen_at_s: renewals_seen,
        cert_failures: per(|p| p.cert_failures),
        certd_issued,
        handshake_failures: per(|p| p.handshake_failures),
        refused: per(|p| p.refused),
        rss_mib: [0, 1].map(|i| span(i, |p| p.rss_mib)),
        anon_mib: [0, 1].map(|i| span(i, |p| p.anon_mib)),
        fds: [0, 1].map(|i| span(i, |p| p.fds as f64)),
        cpu_seconds: [0, 1].map(|i| after.proxies[i].cpu_seconds - idle.proxies[i].cpu_seconds),
        settled_s: series.settled_s,
    }
}

/// The summary as Markdown (printed, and written to `results/soak.md`).
pub fn render(s: &Summary) -> String {
    let p = &s.plan;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "soak: {} held connections for {:.0} s after a {:.1} s ramp, {} new connections/s, \
         leaf lifetime {:.0} s, ping every {:.0} s",
        p.held,
        p.duration.as_secs_f64(),
        s.ramp_s,
        p.rate,
        p.lifetime.as_secs_f64(),
        p.ping_every.as_secs_f64(),
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "| | |\n| --- | --- |");
    let _ = writeln!(
        t,
        "| result | **{}** |",
        if s.passed { "pass" } else { "FAIL" }
    );
    let _ = writeln!(t, "| run | {:.0} s |", s.total_s);
    let _ = writeln!(
        t,
        "| held | {} target, {} reached, {} alive at the end; {} opens |",
        p.held, s.held_peak, s.held_at_end, s.held_opens
    );
    let _ = writeln!(
        t,
        "| new connections | {} ok, {} failed ({:.1}/s); connect+echo+close p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms |",
        s.churn_ok, s.churn_failed, s.churn_per_s, s.churn_p50_ms, s.churn_p99_ms, s.churn_max_ms
    );
    let reasons = if s.failures.is_empty() {
        "none".to_string()
    } else {
        s.failures
            .iter()
            .map(|(ph, r, n)| format!("{}: {} {n}", ph.name(), r.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(t, "| failed connections | **{}** ({reasons}) |", s.failed);
    let _ = writeln!(
        t,
        "| renewals (client / server) | {} / {} (notAfter changes seen: {} / {}; failed requests {} / {}; certd issued {} in all) |",
        s.renewals[0],
        s.renewals[1],
        s.not_after_changes[0],
        s.not_after_changes[1],
        s.cert_failures[0],
        s.cert_failures[1],
        s.certd_issued
    );
    let seen = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        t,
        "| new certificate first seen at (s) | client {}; server {} |",
        seen(&s.renewals_seen_at_s[0]),
        seen(&s.renewals_seen_at_s[1])
    );
    let _ = writeln!(
        t,
        "| proxies' handshake failures / refusals | client {} / {}, server {} / {} |",
        s.handshake_failures[0], s.refused[0], s.handshake_failures[1], s.refused[1]
    );
    let _ = writeln!(
        t,
        "| memory after close | {} |",
        match s.settled_s {
            Some(secs) => format!(
                "both proxies back within {SETTLED_MIB:.0} MiB of idle RSS {secs:.0} s after the close"
            ),
            None => format!(
                "not back within {SETTLED_MIB:.0} MiB of idle RSS {:.0} s after the close",
                SETTLE_WAIT.as_secs_f64()
            ),
        }
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| proxy | RSS MiB idle / ramped / peak / end / after close | anonymous MiB idle / end / after close | fds idle / peak / end / after close | KiB per held connection | CPU s |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, who) in ["client (outbound)", "server (inbound)"].iter().enumerate() {
        let (r, a, f) = (s.rss_mib[i], s.anon_mib[i], s.fds[i]);
        let per_conn = (r.end - r.start) * 1024.0 / s.held_at_end.max(1) as f64;
        let _ = writeln!(
            t,
            "| {who} | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} / {:.0} | {per_conn:.1} | {:.1} |",
            r.start,
            r.ramped,
            r.peak,
            r.end,
            r.after,
            a.start,
            a.end,
            a.after,
            f.start,
            f.peak,
            f.end,
            f.after,
            s.cpu_seconds[i]
        );
    }
    if !s.examples.is_empty() {
        let _ = writeln!(t, "\nfirst errors:");
        for e in &s.examples {
            let _ = writeln!(t, "- {e}");
        }
    }
    t
}

/// The samples of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Series {
    /// Before any connection.
    pub idle: Point,
    /// Every `sample_every` from the start of the ramp to the close.
    pub load: Vec<Point>,
    /// After every connection closed: once both proxies' RSS is back within
    /// [`SETTLED_MIB`] of idle, or [`SETTLE_WAIT`] after the close.
    pub after: Point,
    /// Seconds from the close until both proxies were back within
    /// [`SETTLED_MIB`] of their idle RSS; `None` if not within [`SETTLE_WAIT`].
    pub settled_s: Option<f64>,
}

/// How close to idle RSS counts as having given the memory back (issue 13's bar).
pub const SETTLED_MIB: f64 = 20.0;
/// How long after the close the proxies are watched for that.
pub const SETTLE_WAIT: Duration = Duration::from_secs(60);

impl Series {
    fn all(&self) -> Vec<Point> {
        std::iter::once(self.idle)
            .chain(self.load.iter().copied())
            .chain([self.after])
            .collect()
    }
}

/// Namespace of the two workloads.
const NAMESPACE: &str = "soak";

/// Starts embedded certd with a token for each proxy and leaves of `lifetime`.
async fn start_certd(
    dir: &Path,
    lifetime: Duration,
) -> anyhow::Result<(meshlite_certd::app::Running, CertdCreds)> {
    let tokens = dir.join("tokens");
    let mut known = String::new();
    for who in ["client", "server"] {
        let token = format!("soak-{who}-token");
        std::fs::write(dir.join(format!("{who}.token")), &token)?;
        let _ = writeln!(known, "{token} {NAMESPACE} {who}");
    }
    std::fs::write(&tokens, known)?;
    let ca_dir = dir.join("ca");
    let running = meshlite_certd::app::start_loopback(&ca_dir, &tokens, lifetime)
        .await
        .context("starting embedded certd")?;
    let addr = running.addr;
    let creds = CertdCreds {
        url: format!("https://{addr}"),
        bundle: ca_dir.join(meshlite_certd::app::CA_DIR_CERT),
        namespace: NAMESPACE.into(),
        token_dir: dir.to_path_buf(),
    };
    Ok((running, creds))
}

/// Samples every `every` on a thread of its own (so a busy runtime does not
/// skew the clock), printing each sample, until `stop`.
fn sampler(
    t0: std::time::Instant,
    every: Duration,
    pair: Arc<Pair>,
    state: Arc<State>,
    held: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Point>> {
    std::thread::spawn(move || {
        let mut points = Vec::new();
        let mut next = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let p = point(t0, &pair, &state);
            eprintln!("{}", progress_line(&p, held));
            points.push(p);
            next += every;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < next {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        points
    })
}

/// The run's result: the summary and the samples behind it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub summary: Summary,
    pub series: Series,
}

/// Runs the soak against the proxy binary `bin`. Needs a multi-thread runtime.
pub async fn run(bin: &Path, plan: Plan) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let (certd, creds) = start_certd(dir.path(), plan.lifetime).await?;
    let app = meshlite_proxy::testing::echo_server().await;
    let opts = PairOptions {
        certd: Some(creds),
        ..Default::default()
    };
    // Pair::start waits for readiness with blocking sleeps, while certd, on
    // this runtime, must answer the proxies' first requests.
    let pair =
        tokio::task::block_in_place(|| Pair::start(bin, dir.path(), Setup::Mtls, app, &opts))?;
    let pair = Arc::new(pair);
    let entry = pair.entry;
    let plan = Arc::new(plan);
    let state = Arc::new(State::new()?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = std::time::Instant::now();
    let idle = tokio::task::block_in_place(|| point(t0, &pair, &state));
    eprintln!("idle: {}", progress_line(&idle, plan.held));

    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(
        t0,
        plan.sample_every,
        pair.clone(),
        state.clone(),
        plan.held,
        stop.clone(),
    );
    let (go_tx, go) = watch::channel(None::<Instant>);
    let churning = tokio::spawn(churn(entry, plan.clone(), state.clone(), go.clone()));
    let ramp = Arc::new(Semaphore::new(plan.open_concurrency));
    let mut held = Vec::with_capacity(plan.held);
    for id in 0..plan.held {
        let permit = ramp.clone().acquire_owned().await?;
        held.push(tokio::spawn(hold(
            entry,
            id,
            plan.clone(),
            state.clone(),
            permit,
            go.clone(),
        )));
    }
    let _ = ramp.acquire_many(plan.open_concurrency as u32).await?;
    let ramp_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "ramp: {} of {} held connections open after {ramp_s:.1} s; holding for {:?}",
        state.alive.load(Ordering::Relaxed),
        plan.held,
        plan.duration
    );
    let end = Instant::now() + plan.duration;
    go_tx.send_replace(Some(end));

    // Everything ends by itself at `end`, plus each step's timeouts; anything
    // still running after that budget is stuck, and counted so.
    let budget = end + plan.io_timeout * 4 + Duration::from_secs(10);
    for task in held {
        if timeout_at(budget, task).await.is_none() {
            state.fail(
                Phase::Stuck,
                Failure::new(Reason::Timeout, "past the run's end"),
            );
        }
    }
    let churned = tokio::time::timeout_at(budget, churning).await;
    let total_s = t0.elapsed().as_secs_f64();
    let churn_s = churned
        .ok()
        .and_then(Result::ok)
        .map_or(total_s, |d| d.as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let load = sampling
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    // Let the proxies finish closing, then watch their RSS come back down.
    let closed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled =
        |p: &Point| (0..2).all(|i| p.proxies[i].rss_mib <= idle.proxies[i].rss_mib + SETTLED_MIB);
    let (after, settled_s) = loop {
        let after = tokio::task::block_in_place(|| point(t0, &pair, &state));
        if settled(&after) {
            break (after, Some(closed.elapsed().as_secs_f64()));
        }
        if closed.elapsed() >= SETTLE_WAIT {
            break (after, None);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    eprintln!("after close: {}", progress_line(&after, plan.held));
    let series = Series {
        idle,
        load,
        after,
        settled_s,
    };
    let certd_issued = certd.metrics.requests("issued");
    let summary = summarize(
        &plan,
        &state,
        &series,
        [ramp_s, churn_s, total_s],
        certd_issued,
    );
    drop(pair);
    drop(certd);
    Ok(Report { summary, series })
}

async fn timeout_at<T>(deadline: Instant, task: tokio::task::JoinHandle<T>) -> Option<()> {
    tokio::time::timeout_at(deadline, task)
        .await
        .ok()
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP meshlite_certificate_renewals Certificate requests\n\
        # TYPE meshlite_certificate_renewals counter\n\
        meshlite_certificate_renewals_total{result=\"ok\"} 4\n\
        meshlite_certificate_renewals_total{result=\"connect\"} 1\n\
        meshlite_identity_cert_not_after_timestamp_seconds 1780000000\n\
        meshlite_tcp_connections_opened_total{direction=\"outbound\",tls=\"mtls\"} 12\n";

    #[test]
    fn metrics_are_read_by_name_and_label() {
        let name = "meshlite_certificate_renewals_total";
        assert_eq!(metric(METRICS, name, ""), 5.0);
        assert_eq!(metric(METRICS, name, "result=\"ok\""), 4.0);
        assert_eq!(
            metric(
                METRICS,
                "meshlite_identity_cert_not_after_timestamp_seconds",
                ""
            ),
            1.78e9
        );
        assert_eq!(metric(METRICS, "meshlite_certificate_renewals", ""), 0.0);
    }

    #[test]
    fn io_errors_map_to_reasons() {
        let e = |k| io::Error::new(k, "x");
        assert_eq!(
            Reason::of(&e(io::ErrorKind::ConnectionReset)),
            Reason::Reset
        );
        assert_eq!(Reason::of(&e(io::ErrorKind::BrokenPipe)), Reason::Reset);
        assert_eq!(Reason::of(&e(io::ErrorKind::UnexpectedEof)), Reason::Closed);
        assert_eq!(Reason::of(&e(io::ErrorKind::TimedOut)), Reason::Timeout);
        assert_eq!(Reason::of(&e(io::ErrorKind::InvalidData)), Reason::Other);
    }

    fn at(not_after: [i64; 2]) -> Point {
        let p = |n| ProxyPoint {
            not_after: n,
            ..Default::default()
        };
        Point {
            t_s: 0.0,
            held_alive: 0,
            churn_ok: 0,
            failed: 0,
            proxies: [p(not_after[0]), p(not_after[1])],
        }
    }

    #[test]
    fn renewals_are_the_new_not_afters_the_samples_saw() {
        let mut points = [
            at([0, 0]),
            at([10, 20]),
            at([10, 20]),
            at([30, 20]),
            at([50, 40]),
        ];
        for (i, p) in points.iter_mut().enumerate() {
            p.t_s = i as f64;
        }
        assert_eq!(renewals_seen_at(&points, 0), [3.0, 4.0]);
        assert_eq!(renewals_seen_at(&points, 1), [4.0]);
    }

    #[test]
    fn hello_names_the_connection_and_its_generation() {
        assert_ne!(hello(1, 0), hello(2, 0));
        assert_ne!(hello(1, 0), hello(1, 1));
        assert_eq!(&hello(7, 3)[12..], b"SOAK");
    }

    #[tokio::test]
    async fn a_held_connection_survives_pings_and_closes_cleanly() {
        let app = meshlite_proxy::testing::echo_server().await;
        let plan = Plan {
            held: 1,
            rate: 1,
            duration: Duration::from_millis(300),
            lifetime: Duration::from_secs(1),
            ping_every: Duration::from_millis(100),
            sample_every: Duration::from_secs(1),
            churn_concurrency: 1,
            open_concurrency: 1,
            io_timeout: Duration::from_secs(5),
            min_renewals: 0,
        };
        let mut s = open_held(app, 0, 0, plan.io_timeout).await.expect("open");
        let end = Instant::now() + plan.duration;
        keep(&mut s, Instant::now(), end, &plan)
            .await
            .expect("pings");
        close(s, plan.io_timeout).await.expect("close");
        one_new(app, 3, &plan).await.expect("a new connection");
    }
}
