//! Aggregating samples into medians, and printing the table.

use crate::held::HeldSummary;
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
    /// Operations (requests, connections) over the whole run, warm-up
    /// included, to divide the proxies' CPU time by.
    pub ops: Option<u64>,
}

/// The median of each field over repeats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub workload: String,
    pub setup: Setup,
    pub unit: &'static str,
    pub value: f64,
    pub ratio_to_direct: Option<f64>,
    /// Against the reference relay of the same workload.
    pub ratio_to_reference: Option<f64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub proxy_cpu_seconds: Option<[f64; 2]>,
    pub proxy_peak_rss_mib: Option<[f64; 2]>,
    /// Both proxies' CPU time per operation, µs (median over repeats).
    pub proxy_cpu_us_per_op: Option<f64>,
    /// [`Summary::proxy_cpu_us_per_op`] against the reference relay's.
    pub cpu_ratio_to_reference: Option<f64>,
    pub repeats: usize,
}

/// The median (the upper one of an even count; NaN when empty).
pub fn median_f(mut v: Vec<f64>) -> f64 {
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
            let per_op: Vec<f64> = g
                .iter()
                .filter_map(|s| {
                    let [c, v] = s.proxies?;
                    let ops = s.ops.filter(|&n| n > 0)?;
                    Some((c.cpu_seconds + v.cpu_seconds) * 1e6 / ops as f64)
                })
                .collect();
            Summary {
                unit: g[0].unit,
                value: median_f(g.iter().map(|s| s.value).collect()),
                ratio_to_direct: None,
                ratio_to_reference: None,
                proxy_cpu_us_per_op: (!per_op.is_empty()).then(|| median_f(per_op)),
                cpu_ratio_to_reference: None,
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
    let reference: BTreeMap<String, (f64, Option<f64>)> = out
        .iter()
        .filter(|s| s.setup == Setup::Reference)
        .map(|s| (s.workload.clone(), (s.value, s.proxy_cpu_us_per_op)))
        .collect();
    for s in &mut out {
        s.ratio_to_direct = direct.get(&s.workload).map(|d| s.value / d);
        if let Some(&(value, cpu)) = reference.get(&s.workload) {
            s.ratio_to_reference = Some(s.value / value);
            s.cpu_ratio_to_reference = s.proxy_cpu_us_per_op.zip(cpu).map(|(a, b)| a / b);
        }
    }
    out
}

/// Writes `json` to `out` and `md` beside it (`.md`), creating the folder,
/// and says where.
pub fn write_results(
    out: &std::path::Path,
    json: &impl serde::Serialize,
    md: &str,
) -> anyhow::Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(json)?)?;
    std::fs::write(out.with_extension("md"), md)?;
    eprintln!(
        "wrote {} and {}",
        out.display(),
        out.with_extension("md").display()
    );
    Ok(())
}

/// Starts a Markdown table: the header row and the alignment row, the first
/// column left-aligned and the others right-aligned.
pub fn header(t: &mut String, columns: &[&str]) {
    let _ = writeln!(t, "| {} |", columns.join(" | "));
    let align: Vec<&str> = (0..columns.len())
        .map(|i| if i == 0 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(t, "| {} |", align.join(" | "));
}

/// A Markdown table of the summaries.
pub fn table(rows: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| workload | setup | result | × direct | × reference | p50 µs | p99 µs | p99.9 µs | proxy CPU s (client/server) | proxy CPU µs per op (both) | CPU/op × reference | proxy peak RSS MiB (client/server) |"
    );
    let _ = writeln!(
        t,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let ratio = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.2}"));
    let opt = |v: Option<u64>| v.map_or("".into(), |v| v.to_string());
    for r in rows {
        let pair = |v: Option<[f64; 2]>, prec: usize| {
            v.map_or(String::new(), |[a, b]| format!("{a:.prec$} / {b:.prec$}"))
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.setup.name(),
            r.value,
            r.unit,
            ratio(r.ratio_to_direct),
            ratio(r.ratio_to_reference),
            opt(r.p50_us),
            opt(r.p99_us),
            opt(r.p999_us),
            pair(r.proxy_cpu_seconds, 2),
            r.proxy_cpu_us_per_op
                .map_or(String::new(), |x| format!("{x:.1}")),
            ratio(r.cpu_ratio_to_reference),
            pair(r.proxy_peak_rss_mib, 1),
        );
    }
    t
}

fn find<'a>(rows: &'a [Summary], workload: &str, setup: Setup) -> Option<&'a Summary> {
    rows.iter()
        .find(|r| r.workload == workload && r.setup == setup)
}

/// Issue 13's targets, each with meshlite's number, the reference relay's,
/// plaintext (direct) where it applies, and whether it is met.
pub fn targets(rows: &[Summary], held: &[HeldSummary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| target | meshlite | reference relay | direct (plaintext) | ratio | met |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | --- |");
    let mut row =
        |what: &str, ml: String, rf: String, direct: String, ratio: String, met: Option<bool>| {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(t, "| {what} | {ml} | {rf} | {direct} | {ratio} | {met} |");
        };
    let h_ml = held.iter().find(|h| h.setup == Setup::Mtls);
    let h_rf = held.iter().find(|h| h.setup == Setup::Reference);
    let two = |v: [f64; 2], unit: &str| format!("{:.1} / {:.1} {unit}", v[0], v[1]);
    let na = String::new;
    let max = |v: [f64; 2]| v[0].max(v[1]);
    let n = h_ml.map_or(0, |h| h.held);
    row(
        &format!(
            "RSS per held idle mTLS connection, per proxy (client / server), {n} held: ≤ 8 KiB"
        ),
        h_ml.map_or_else(na, |h| two(h.kib_per_conn, "KiB")),
        h_rf.map_or_else(na, |h| two(h.kib_per_conn, "KiB")),
        na(),
        h_ml.zip(h_rf).map_or_else(na, |(a, b)| {
            format!("{:.2}×", max(a.kib_per_conn) / max(b.kib_per_conn))
        }),
        h_ml.map(|h| max(h.kib_per_conn) <= 8.0),
    );
    let settle = |h: &HeldSummary| match h.settled_s {
        Some(s) => format!(
            "after {s:.0} s ({} MiB, idle {})",
            two(h.after_rss_mib, ""),
            two(h.idle_rss_mib, "")
        ),
        None => format!("not within the wait ({} MiB)", two(h.after_rss_mib, "")),
    };
    row(
        &format!("RSS after {n} connections close: within 20 MiB of idle within 60 s"),
        h_ml.map_or_else(na, settle),
        h_rf.map_or_else(na, settle),
        na(),
        na(),
        h_ml.map(|h| h.settled_s.is_some_and(|s| s <= 60.0)),
    );
    let value = |r: &Summary| {
        let prec = if r.value < 100.0 { 2 } else { 0 };
        format!("{:.prec$} {}", r.value, r.unit)
    };
    let by_ratio = |w: &str, what: &str, min: f64| {
        let (ml, rf, d) = (
            find(rows, w, Setup::Mtls),
            find(rows, w, Setup::Reference),
            find(rows, w, Setup::Direct),
        );
        (
            what.to_string(),
            ml.map_or_else(na, value),
            rf.map_or_else(na, value),
            d.map_or_else(na, value),
            ml.and_then(|r| r.ratio_to_reference)
                .map_or_else(na, |x| format!("{x:.2}×")),
            ml.and_then(|r| r.ratio_to_reference).map(|x| x >= min),
        )
    };
    for (w, what, min) in [
        ("rr c16", "rr c16 req/s: ≥ 1.2× the reference", 1.2),
        ("rr c64", "rr c64 req/s: ≥ 1.2× the reference", 1.2),
    ] {
        let (a, b, c, d, e, f) = by_ratio(w, what, min);
        row(&a, b, c, d, e, f);
    }
    let cpu = |r: &Summary| {
        r.proxy_cpu_us_per_op
            .map_or_else(String::new, |x| format!("{x:.1} µs"))
    };
    let (ml, rf) = (
        find(rows, "rr c64", Setup::Mtls),
        find(rows, "rr c64", Setup::Reference),
    );
    row(
        "CPU per request at c64 (both proxies): ≤ 0.85× the reference",
        ml.map_or_else(na, cpu),
        rf.map_or_else(na, cpu),
        na(),
        ml.and_then(|r| r.cpu_ratio_to_reference)
            .map_or_else(na, |x| format!("{x:.2}×")),
        ml.and_then(|r| r.cpu_ratio_to_reference).map(|x| x <= 0.85),
    );
    row(
        "idle RSS per proxy (client / server): ≤ 5 MiB",
        h_ml.map_or_else(na, |h| two(h.idle_rss_mib, "MiB")),
        h_rf.map_or_else(na, |h| two(h.idle_rss_mib, "MiB")),
        na(),
        na(),
        h_ml.map(|h| max(h.idle_rss_mib) <= 5.0),
    );
    let w = "rr c1 pinned";
    let p50 = |s: Setup| find(rows, w, s).and_then(|r| r.p50_us);
    let d = p50(Setup::Direct);
    let us = |v: Option<u64>| v.map_or_else(String::new, |v| format!("{v} µs"));
    let plus = |v: Option<u64>| {
        v.zip(d).map_or_else(String::new, |(v, d)| {
            format!(" (direct + {})", v as i64 - d as i64)
        })
    };
    row(
        "rr c1, all pinned to one core, p50: ≤ direct + 20 µs",
        format!("{}{}", us(p50(Setup::Mtls)), plus(p50(Setup::Mtls))),
        format!(
            "{}{}",
            us(p50(Setup::Reference)),
            plus(p50(Setup::Reference))
        ),
        us(d),
        na(),
        p50(Setup::Mtls).zip(d).map(|(v, d)| v <= d + 20),
    );
    for (w, what) in [
        ("bulk s1", "bulk 1 stream: ahead of the reference"),
        (
            "churn c1 resumed",
            "new connections/s, c1, resumed: ahead of the reference",
        ),
        (
            "churn c16 resumed",
            "new connections/s, c16, resumed: ahead of the reference",
        ),
        (
            "churn c1 full",
            "new connections/s, c1, full handshakes: ahead of the reference",
        ),
        (
            "churn c16 full",
            "new connections/s, c16, full handshakes: ahead of the reference",
        ),
    ] {
        let (a, b, c, d, e, f) = by_ratio(w, what, 1.0);
        row(&a, b, c, d, e, f);
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
            ops: None,
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
            sample(Setup::Reference, 10.0),
        ];
        let s = summarize(&samples);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].ratio_to_reference, Some(0.5));
        assert_eq!(s[0].value, 20.0);
        assert_eq!(s[1].value, 5.0);
        assert_eq!(s[1].ratio_to_direct, Some(0.25));
        assert_eq!(s[1].p50_us, Some(5));
        assert!(table(&s).contains("| w | mtls | 5.00 x | 0.25 | 0.50 |"));
    }
}
