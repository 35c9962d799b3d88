//! One measurement: a workload, named as in the tables (`bulk s1`, `rr c16`,
//! `churn c16 resumed`), under one setup, with the proxies' CPU time and peak
//! RSS over it. Shared by `meshlite-bench` and `meshlite-bench-client-address`.

use crate::procs::{Pair, Setup, Usage};
use crate::report::Sample;
use crate::workloads::{self, Rate};
use std::net::SocketAddr;
use std::time::Duration;

/// Warm-up before the measured window of the request/response and churn
/// workloads.
pub const WARMUP: Duration = Duration::from_secs(1);

/// How big each workload is.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Bytes per bulk run (split over the streams).
    pub bulk_bytes: u64,
    /// Measured window of a request/response run (after [`WARMUP`]).
    pub rr: Duration,
    /// Measured window of a churn run (after [`WARMUP`]).
    pub churn: Duration,
}

/// The size flags both harnesses take.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Repeats of the whole suite; each result is the median over repeats.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Bytes per bulk run (split over the streams).
    #[arg(long, default_value_t = 2 << 30)]
    pub bulk_bytes: u64,
    /// Measured seconds per request/response run (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    pub rr_seconds: u64,
    /// Measured seconds per churn run (after 1 s of warm-up).
    #[arg(long, default_value_t = 3)]
    pub churn_seconds: u64,
    /// A short smoke run (small sizes, one repeat).
    #[arg(long)]
    pub quick: bool,
    /// Only run workloads whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
}

impl PlanArgs {
    /// `--quick` applied: one repeat, 64 MiB bulk, 1 s windows.
    pub fn quickened(mut self) -> Self {
        if self.quick {
            self.repeats = 1;
            self.bulk_bytes = 64 << 20;
            self.rr_seconds = 1;
            self.churn_seconds = 1;
        }
        self
    }

    pub fn plan(&self) -> Plan {
        Plan {
            bulk_bytes: self.bulk_bytes,
            rr: Duration::from_secs(self.rr_seconds),
            churn: Duration::from_secs(self.churn_seconds),
        }
    }

    /// Whether `--only` lets `workload` run.
    pub fn wanted(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|o| workload.contains(o))
    }

    /// The sizes, for the JSON results.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "repeats": self.repeats, "bulk_bytes": self.bulk_bytes,
            "rr_seconds": self.rr_seconds, "churn_seconds": self.churn_seconds,
        })
    }
}

/// Both proxies' resource use now, client first.
pub fn usage(pair: Option<&Pair>) -> Option<[Usage; 2]> {
    pair.map(|p| [p.client.usage(), p.server.usage()])
}

/// CPU time since `before`; memory as it is now.
fn delta(before: Option<[Usage; 2]>, pair: Option<&Pair>) -> Option<[Usage; 2]> {
    let (b, a) = (before?, usage(pair)?);
    let d = |b: &Usage, a: &Usage| Usage {
        cpu_seconds: a.cpu_seconds - b.cpu_seconds,
        rss_mib: a.rss_mib,
        peak_rss_mib: a.peak_rss_mib,
        anon_mib: a.anon_mib,
    };
    Some([d(&b[0], &a[0]), d(&b[1], &a[1])])
}

fn rate_sample(workload: &str, setup: Setup, unit: &'static str, r: Rate) -> Sample {
    Sample {
        ops: Some(r.ops_total),
        workload: workload.into(),
        setup,
        value: r.per_second,
        unit,
        p50_us: Some(r.latency.p50_us),
        p99_us: Some(r.latency.p99_us),
        p999_us: Some(r.latency.p999_us),
        proxies: None,
    }
}

/// Runs `workload` against `entry` (through `pair`, if any), recording the
/// proxies' resource use. Every socket the workloads open is opened in a task
/// spawned on the current runtime, so the runtime's threads decide which
/// network namespace the client is in.
pub async fn measure(
    workload: &str,
    setup: Setup,
    entry: SocketAddr,
    pair: Option<&Pair>,
    plan: &Plan,
) -> anyhow::Result<Sample> {
    if let Some(p) = pair {
        p.client.reset_peak();
        p.server.reset_peak();
    }
    let before = usage(pair);
    let sample = if let Some(n) = workload.strip_prefix("bulk s") {
        let b = workloads::bulk(entry, n.parse()?, plan.bulk_bytes).await?;
        Sample {
            workload: workload.into(),
            setup,
            value: b.gbit_per_s,
            unit: "Gbit/s",
            p50_us: None,
            p99_us: None,
            p999_us: None,
            proxies: None,
            ops: None,
        }
    } else if let Some(c) = workload.strip_prefix("rr c") {
        let c = c.trim_end_matches(" pinned").parse()?;
        rate_sample(
            workload,
            setup,
            "req/s",
            workloads::request_response(entry, c, WARMUP, plan.rr).await?,
        )
    } else if let Some(c) = workload.strip_prefix("churn c") {
        let c = c.split(' ').next().unwrap_or("1").parse()?;
        rate_sample(
            workload,
            setup,
            "conn/s",
            workloads::churn(entry, c, WARMUP, plan.churn).await?,
        )
    } else {
        anyhow::bail!("unknown workload {workload}");
    };
    Ok(Sample {
        proxies: delta(before, pair),
        ..sample
    })
}
