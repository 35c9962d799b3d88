//! Aggregating samples into medians, and printing the table.

use crate::procs::{Setup, Usage};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One measurement of one workload under one setup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub workload: String,
    pub setup: Setup,
    /// The headline number: Gbit/s, requests/s or connections/s.
    pub value: f64,
    pub unit: &'static str,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    /// Client-side proxy, then server-side proxy.
    pub proxies: Option<[Usage; 2]>,
}

/// The median of each field over repeats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub workload: String,
    pub setup: Setup,
    pub unit: &'static str,
    pub value: f64,
    pub ratio_to_direct: Option<f64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub proxy_cpu_seconds: Option<[f64; 2]>,
    pub proxy_peak_rss_mib: Option<[f64; 2]>,
    pub repeats: usize,
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn median_u(v: Vec<Option<u64>>) -> Option<u64> {
    let mut v: Vec<u64> = v.into_iter().flatten().collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Medians per (workload, setup), in first-seen order, with ratios to the
/// direct setup of the same workload.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut order: Vec<(String, Setup)> = Vec::new();
    let mut groups: BTreeMap<(String, String), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        let key = (s.workload.clone(), format!("{:?}", s.setup));
        if !groups.contains_key(&key) {
            order.push((s.workload.clone(), s.setup));
        }
        groups.entry(key).or_default().push(s);
    }
    let mut out: Vec<Summary> = order
        .into_iter()
        .map(|(workload, setup)| {
            let g = &groups[&(workload.clone(), format!("{setup:?}"))];
            let proxies: Vec<[Usage; 2]> = g.iter().filter_map(|s| s.proxies).collect();
            let per = |f: fn(&Usage) -> f64| -> Option<[f64; 2]> {
                (!proxies.is_empty()).then(|| {
                    [
                        median_f(proxies.iter().map(|p| f(&p[0])).collect()),
                        median_f(proxies.iter().map(|p| f(&p[1])).collect()),
                    ]
                })
            };
            Summary {
                unit: g[0].unit,
                value: median_f(g.iter().map(|s| s.value).collect()),
                ratio_to_direct: None,
                p50_us: median_u(g.iter().map(|s| s.p50_us).collect()),
                p99_us: median_u(g.iter().map(|s| s.p99_us).collect()),
                p999_us: median_u(g.iter().map(|s| s.p999_us).collect()),
                proxy_cpu_seconds: per(|u| u.cpu_seconds),
                proxy_peak_rss_mib: per(|u| u.peak_rss_mib),
                repeats: g.len(),
                workload,
                setup,
            }
        })
        .collect();
    let direct: BTreeMap<String, f64> = out
        .iter()
        .filter(|s| s.setup == Setup::Direct)
        .map(|s| (s.workload.clone(), s.value))
        .collect();
    for s in &mut out {
        s.ratio_to_direct = direct.get(&s.workload).map(|d| s.value / d);
    }
    out
}

/// A Markdown table of the summaries.
pub fn table(rows: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| workload | setup | result | × direct | p50 µs | p99 µs | p99.9 µs | proxy CPU s (client/server) | proxy peak RSS MiB (client/server) |"
    );
    let _ = writeln!(
        t,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let opt = |v: Option<u64>| v.map_or("".into(), |v| v.to_string());
    for r in rows {
        let pair = |v: Option<[f64; 2]>, prec: usize| {
            v.map_or(String::new(), |[a, b]| format!("{a:.prec$} / {b:.prec$}"))
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.setup.name(),
            r.value,
            r.unit,
            r.ratio_to_direct
                .map_or(String::new(), |x| format!("{x:.2}")),
            opt(r.p50_us),
            opt(r.p99_us),
            opt(r.p999_us),
            pair(r.proxy_cpu_seconds, 2),
            pair(r.proxy_peak_rss_mib, 1),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(setup: Setup, value: f64) -> Sample {
        Sample {
            workload: "w".into(),
            setup,
            value,
            unit: "x",
            p50_us: Some(value as u64),
            p99_us: None,
            p999_us: None,
            proxies: None,
        }
    }

    #[test]
    fn summaries_take_medians_and_ratios_to_direct() {
        let samples = [
            sample(Setup::Direct, 10.0),
            sample(Setup::Mtls, 4.0),
            sample(Setup::Direct, 30.0),
            sample(Setup::Mtls, 5.0),
            sample(Setup::Direct, 20.0),
            sample(Setup::Mtls, 100.0),
        ];
        let s = summarize(&samples);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].value, 20.0);
        assert_eq!(s[1].value, 5.0);
        assert_eq!(s[1].ratio_to_direct, Some(0.25));
        assert_eq!(s[1].p50_us, Some(5));
        assert!(table(&s).contains("| w | mtls | 5.00 x | 0.25 |"));
    }
}
