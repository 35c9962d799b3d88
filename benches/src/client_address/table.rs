//! The client-address benchmark's tables: each workload's result on the three
//! paths with the ratios between them, and what the proxies spent.

use crate::procs::Setup;
use crate::report::{Sample, Summary, header, median_f};
use std::fmt::Write;

const OFF: Setup = Setup::Mtls;
const ON: Setup = Setup::MtlsPreserve;

/// What the proxies spent per operation on one path for one workload
/// (medians over repeats). An operation is a request, a connection, or for
/// bulk a MiB moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cost {
    pub workload: String,
    pub setup: Setup,
    /// "req", "conn" or "MiB".
    pub per: &'static str,
    /// Both proxies' CPU time per operation, µs.
    pub both_cpu_us: f64,
    /// The server-side (inbound) proxy's alone, µs: where preservation works.
    pub server_cpu_us: f64,
    /// The server proxy's peak RSS during the workload.
    pub server_peak_rss_mib: f64,
}

/// The operations of a sample, and what one is called.
fn ops(s: &Sample, bulk_bytes: u64) -> (f64, &'static str) {
    match s.unit {
        "req/s" => (s.ops.unwrap_or(0) as f64, "req"),
        "conn/s" => (s.ops.unwrap_or(0) as f64, "conn"),
        _ => (bulk_bytes as f64 / f64::from(1 << 20), "MiB"),
    }
}

/// The proxies' costs per (workload, mesh path), from every sample.
pub fn costs(samples: &[Sample], bulk_bytes: u64) -> Vec<Cost> {
    let mut out: Vec<Cost> = Vec::new();
    for s in samples {
        if s.proxies.is_none()
            || out
                .iter()
                .any(|c| c.workload == s.workload && c.setup == s.setup)
        {
            continue;
        }
        let group: Vec<&Sample> = samples
            .iter()
            .filter(|o| o.workload == s.workload && o.setup == s.setup)
            .collect();
        let per_op = |f: &dyn Fn(&Sample) -> f64| {
            median_f(
                group
                    .iter()
                    .filter(|g| ops(g, bulk_bytes).0 > 0.0)
                    .map(|g| f(g) * 1e6 / ops(g, bulk_bytes).0)
                    .collect(),
            )
        };
        let proxies = |g: &Sample| g.proxies.unwrap_or_default();
        out.push(Cost {
            workload: s.workload.clone(),
            setup: s.setup,
            per: ops(s, bulk_bytes).1,
            both_cpu_us: per_op(&|g| proxies(g)[0].cpu_seconds + proxies(g)[1].cpu_seconds),
            server_cpu_us: per_op(&|g| proxies(g)[1].cpu_seconds),
            server_peak_rss_mib: median_f(
                group.iter().map(|g| proxies(g)[1].peak_rss_mib).collect(),
            ),
        });
    }
    out
}

fn find<'a>(rows: &'a [Summary], workload: &str, setup: Setup) -> Option<&'a Summary> {
    rows.iter()
        .find(|r| r.workload == workload && r.setup == setup)
}

fn workloads(rows: &[Summary]) -> Vec<&str> {
    let mut w: Vec<&str> = Vec::new();
    for r in rows {
        if !w.contains(&r.workload.as_str()) {
            w.push(&r.workload);
        }
    }
    w
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    a.zip(b)
        .map_or(String::new(), |(a, b)| format!("{:.3}", a / b))
}

/// Each workload's result on the three paths, the ratios, and latency.
pub fn results(rows: &[Summary]) -> String {
    let mut t = String::new();
    header(
        &mut t,
        &[
            "workload",
            "direct",
            "mtls, preservation off",
            "mtls, preservation on",
            "on ÷ off",
            "off × direct",
            "on × direct",
            "p50 µs direct / off / on",
            "p99 µs direct / off / on",
        ],
    );
    for w in workloads(rows) {
        let get = |s: Setup| find(rows, w, s);
        let value = |s: Setup| {
            get(s).map_or(String::new(), |r| {
                let prec = if r.value < 100.0 { 2 } else { 0 };
                format!("{:.prec$} {}", r.value, r.unit)
            })
        };
        let v = |s: Setup| get(s).map(|r| r.value);
        let lat = |f: fn(&Summary) -> Option<u64>| {
            let each: Vec<String> = [Setup::Direct, OFF, ON]
                .iter()
                .map(|&s| get(s).and_then(f).map_or("–".into(), |x| x.to_string()))
                .collect();
            if each.iter().all(|x| x == "–") {
                String::new()
            } else {
                each.join(" / ")
            }
        };
        let _ = writeln!(
            t,
            "| {w} | {} | {} | {} | {} | {} | {} | {} | {} |",
            value(Setup::Direct),
            value(OFF),
            value(ON),
            ratio(v(ON), v(OFF)),
            ratio(v(OFF), v(Setup::Direct)),
            ratio(v(ON), v(Setup::Direct)),
            lat(|r| r.p50_us),
            lat(|r| r.p99_us),
        );
    }
    t
}

/// What the proxies spent on the two mesh paths.
pub fn costs_table(costs: &[Cost]) -> String {
    let mut t = String::new();
    header(
        &mut t,
        &[
            "workload",
            "proxy CPU µs per op, both proxies: off / on",
            "on ÷ off",
            "server proxy CPU µs per op: off / on",
            "on ÷ off",
            "server proxy peak RSS MiB: off / on",
        ],
    );
    let mut seen: Vec<&str> = Vec::new();
    for c in costs {
        if seen.contains(&c.workload.as_str()) {
            continue;
        }
        seen.push(&c.workload);
        let get = |s: Setup| {
            costs
                .iter()
                .find(|o| o.workload == c.workload && o.setup == s)
        };
        let (off, on) = (get(OFF), get(ON));
        let pair = |f: fn(&Cost) -> f64, prec: usize| {
            let x = |c: Option<&Cost>| c.map_or("–".into(), |c| format!("{:.prec$}", f(c)));
            format!("{} / {}", x(off), x(on))
        };
        let r = |f: fn(&Cost) -> f64| ratio(on.map(f), off.map(f));
        let _ = writeln!(
            t,
            "| {} (per {}) | {} | {} | {} | {} | {} |",
            c.workload,
            c.per,
            pair(|c| c.both_cpu_us, 1),
            r(|c| c.both_cpu_us),
            pair(|c| c.server_cpu_us, 1),
            r(|c| c.server_cpu_us),
            pair(|c| c.server_peak_rss_mib, 1),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::Usage;
    use crate::report::summarize;

    fn sample(setup: Setup, value: f64, server_cpu: f64) -> Sample {
        let u = |cpu| Usage {
            cpu_seconds: cpu,
            peak_rss_mib: 9.0,
            ..Usage::default()
        };
        Sample {
            workload: "rr c1".into(),
            setup,
            value,
            unit: "req/s",
            p50_us: Some(10),
            p99_us: Some(20),
            p999_us: None,
            proxies: (setup != Setup::Direct).then(|| [u(1.0), u(server_cpu)]),
            ops: Some(1_000_000),
        }
    }

    #[test]
    fn tables_show_on_against_off_and_direct() {
        let samples = [
            sample(Setup::Direct, 100.0, 0.0),
            sample(OFF, 50.0, 1.0),
            sample(ON, 40.0, 1.5),
        ];
        let t = results(&summarize(&samples));
        assert!(
            t.contains("| rr c1 | 100 req/s | 50.00 req/s | 40.00 req/s | 0.800 | 0.500 | 0.400 | 10 / 10 / 10 | 20 / 20 / 20 |"),
            "{t}"
        );
        let c = costs(&samples, 0);
        assert_eq!(c.len(), 2);
        let t = costs_table(&c);
        assert!(
            t.contains("| rr c1 (per req) | 2.0 / 2.5 | 1.250 | 1.0 / 1.5 | 1.500 | 9.0 / 9.0 |"),
            "{t}"
        );
    }
}
