//! Held idle connections: what each one costs a proxy in RSS, and whether the
//! memory comes back once they close.
//!
//! A freshly started pair in front of an echo server; its idle RSS is read,
//! then `n` connections are opened (with the soak's [`open_held`]: connect,
//! mTLS through the pair, a 16-byte echo naming the connection) and left idle.
//! One second later the RSS is read again: the growth over `n` is the cost of
//! one held idle connection. Then every connection half-closes and waits for
//! the EOF to come back (the soak's [`close`]), and the RSS is watched for up
//! to `settle_wait` until it is back within [`SETTLED_MIB`] of idle.

use crate::procs::{Pair, Setup, Usage};
use crate::soak::{SETTLED_MIB, close, open_held};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// One held-connections run on one pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldSample {
    pub setup: Setup,
    pub held: usize,
    /// Client-side proxy, then server-side proxy: before any connection.
    pub idle: [Usage; 2],
    /// With every connection open and idle.
    pub loaded: [Usage; 2],
    /// (loaded − idle) RSS over the connections, KiB.
    pub kib_per_conn: [f64; 2],
    /// When RSS was back within [`SETTLED_MIB`] of idle, or at the end of the wait.
    pub after: [Usage; 2],
    /// Seconds from the close until both proxies were back within
    /// [`SETTLED_MIB`] of idle; `None` if not within the wait.
    pub settled_s: Option<f64>,
}

fn usage(pair: &Pair) -> [Usage; 2] {
    [pair.client.usage(), pair.server.usage()]
}

/// Opens `n` connections through `entry` (at most `concurrency` at once).
async fn open_all(
    entry: SocketAddr,
    n: usize,
    concurrency: usize,
    budget: Duration,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for id in 0..n {
        let slot = slots.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let s = open_held(entry, id, 0, budget).await;
            drop(slot);
            s
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        match t.await? {
            Ok(s) => out.push(s),
            Err(f) => anyhow::bail!("held connection failed to open: {f:?}"),
        }
    }
    Ok(out)
}

/// Runs the held workload on `pair` (started just before, in front of an
/// echo server).
pub async fn run(
    setup: Setup,
    pair: &Pair,
    n: usize,
    concurrency: usize,
    settle_wait: Duration,
) -> anyhow::Result<HeldSample> {
    let budget = Duration::from_secs(10);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = usage(pair);
    let conns = open_all(pair.entry, n, concurrency, budget).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = usage(pair);
    let kib = |i: usize| (loaded[i].rss_mib - idle[i].rss_mib) * 1024.0 / n.max(1) as f64;
    let kib_per_conn = [kib(0), kib(1)];
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut closing = Vec::with_capacity(n);
    for s in conns {
        let slot = slots.clone().acquire_owned().await?;
        closing.push(tokio::spawn(async move {
            let r = close(s, budget).await;
            drop(slot);
            r
        }));
    }
    for c in closing {
        if let Err(f) = c.await? {
            anyhow::bail!("held connection failed to close: {f:?}");
        }
    }
    let closed = Instant::now();
    let (after, settled_s) = loop {
        let after = usage(pair);
        if (0..2).all(|i| after[i].rss_mib <= idle[i].rss_mib + SETTLED_MIB) {
            break (after, Some(closed.elapsed().as_secs_f64()));
        }
        if closed.elapsed() >= settle_wait {
            break (after, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Ok(HeldSample {
        setup,
        held: n,
        idle,
        loaded,
        kib_per_conn,
        after,
        settled_s,
    })
}

/// Medians of the held runs of one setup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldSummary {
    pub setup: Setup,
    pub held: usize,
    pub kib_per_conn: [f64; 2],
    pub idle_rss_mib: [f64; 2],
    pub idle_anon_mib: [f64; 2],
    pub loaded_rss_mib: [f64; 2],
    pub after_rss_mib: [f64; 2],
    /// The slowest settle over the repeats; `None` if any run did not settle.
    pub settled_s: Option<f64>,
    pub repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One summary per setup, in first-seen order.
pub fn summarize(samples: &[HeldSample]) -> Vec<HeldSummary> {
    let mut setups: Vec<Setup> = Vec::new();
    for s in samples {
        if !setups.contains(&s.setup) {
            setups.push(s.setup);
        }
    }
    setups
        .into_iter()
        .map(|setup| {
            let g: Vec<&HeldSample> = samples.iter().filter(|s| s.setup == setup).collect();
            let per = |f: &dyn Fn(&HeldSample, usize) -> f64| {
                [0, 1].map(|i| median(g.iter().map(|s| f(s, i)).collect()))
            };
            HeldSummary {
                setup,
                held: g[0].held,
                kib_per_conn: per(&|s, i| s.kib_per_conn[i]),
                idle_rss_mib: per(&|s, i| s.idle[i].rss_mib),
                idle_anon_mib: per(&|s, i| s.idle[i].anon_mib),
                loaded_rss_mib: per(&|s, i| s.loaded[i].rss_mib),
                after_rss_mib: per(&|s, i| s.after[i].rss_mib),
                settled_s: g
                    .iter()
                    .map(|s| s.settled_s)
                    .try_fold(0.0f64, |m, s| s.map(|s| m.max(s))),
                repeats: g.len(),
            }
        })
        .collect()
}

/// A Markdown table of the held summaries.
pub fn table(rows: &[HeldSummary]) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| setup | held | KiB per held connection (client/server) | idle RSS MiB | idle anonymous MiB | RSS held MiB | RSS after close MiB | back within {SETTLED_MIB:.0} MiB of idle |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let two = |v: [f64; 2]| format!("{:.1} / {:.1}", v[0], v[1]);
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.setup.name(),
            r.held,
            two(r.kib_per_conn),
            two(r.idle_rss_mib),
            two(r.idle_anon_mib),
            two(r.loaded_rss_mib),
            two(r.after_rss_mib),
            r.settled_s
                .map_or("no".to_string(), |s| format!("after {s:.0} s")),
        );
    }
    t
}
