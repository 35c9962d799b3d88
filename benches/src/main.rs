//! `meshlite-bench`: runs every workload against direct, plain-relay, mTLS and
//! reference-relay setups, prints a table and issue 13's targets, and writes
//! JSON. Method: `benches/README.md`.

use anyhow::Context;
use clap::Parser;
use meshlite_benches::held::{self, HeldSample};
use meshlite_benches::measure::{PlanArgs, measure};
use meshlite_benches::procs::{self, Pair, PairOptions, Setup, Usage};
use meshlite_benches::report::{self, Sample};
use meshlite_benches::workloads;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "meshlite throughput, latency and churn against a plaintext baseline")]
struct Args {
    #[command(flatten)]
    size: PlanArgs,
    /// Use X25519 only (no post-quantum hybrid) in the mTLS pair.
    #[arg(long)]
    classic_kx: bool,
    /// Worker threads of each proxy (1 = a current-thread runtime); the
    /// reference relay gets the same.
    #[arg(long)]
    proxy_workers: Option<usize>,
    /// Connections held open per pair in the `held` workload [default: 5000; --quick 500].
    #[arg(long)]
    held: Option<usize>,
    /// How long the `held` workload waits for RSS to come back after the close, seconds.
    #[arg(long, default_value_t = 60)]
    settle_wait: u64,
    /// Run this meshlite-proxy binary instead of building the worktree's (to
    /// measure a saved "before" build against the current one).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "benches/results/latest.json")]
    out: PathBuf,
}

struct Ctx {
    bin: PathBuf,
    ref_bin: PathBuf,
    dir: tempfile::TempDir,
    args: Args,
}

fn start_pair(
    ctx: &Ctx,
    setup: Setup,
    backend: SocketAddr,
    opts: &PairOptions,
) -> anyhow::Result<Pair> {
    if setup == Setup::Reference {
        return Pair::start_reference(&ctx.ref_bin, ctx.dir.path(), backend, opts);
    }
    Pair::start(&ctx.bin, ctx.dir.path(), setup, backend, opts)
}

/// The held workload on fresh mTLS and reference pairs in front of an echo server.
async fn held_run(ctx: &Ctx, opts: &PairOptions, out: &mut Vec<HeldSample>) -> anyhow::Result<()> {
    let n = ctx.args.held.unwrap_or(5000);
    let echo = meshlite_proxy::testing::echo_server().await;
    for setup in [Setup::Mtls, Setup::Reference] {
        let pair = start_pair(ctx, setup, echo, opts)?;
        let s = held::run(
            setup,
            &pair,
            n,
            64,
            Duration::from_secs(ctx.args.settle_wait),
        )
        .await
        .with_context(|| format!("held {}", setup.name()))?;
        eprintln!(
            "  {:>10} {:>15}: {:.1} / {:.1} KiB per connection, idle {:.1} / {:.1} MiB, settled {:?} s",
            format!("held {n}"),
            setup.name(),
            s.kib_per_conn[0],
            s.kib_per_conn[1],
            s.idle[0].rss_mib,
            s.idle[1].rss_mib,
            s.settled_s
        );
        out.push(s);
    }
    Ok(())
}

/// The unpinned suite, on a two-worker runtime shared by client and server.
fn unpinned(
    ctx: &Ctx,
    samples: &mut Vec<Sample>,
    idle: &mut Vec<(String, [Usage; 2])>,
    held: &mut Vec<HeldSample>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = workloads::start_server().await?;
        let base = PairOptions {
            classic_kx: ctx.args.classic_kx,
            worker_threads: ctx.args.proxy_workers,
            ..Default::default()
        };
        let plain = start_pair(ctx, Setup::PlainRelay, server, &base)?;
        let mtls = start_pair(ctx, Setup::Mtls, server, &base)?;
        let refr = start_pair(ctx, Setup::Reference, server, &base)?;
        let no_resumption = PairOptions {
            no_resumption: true,
            ..base.clone()
        };
        let full = start_pair(ctx, Setup::Mtls, server, &no_resumption)?;
        let ref_full = start_pair(ctx, Setup::Reference, server, &no_resumption)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle.push((
            "plain relay".into(),
            [plain.client.usage(), plain.server.usage()],
        ));
        idle.push(("mtls".into(), [mtls.client.usage(), mtls.server.usage()]));
        idle.push((
            "reference relay".into(),
            [refr.client.usage(), refr.server.usage()],
        ));
        let setups: [(Setup, SocketAddr, Option<&Pair>); 4] = [
            (Setup::Direct, server, None),
            (Setup::PlainRelay, plain.entry, Some(&plain)),
            (Setup::Mtls, mtls.entry, Some(&mtls)),
            (Setup::Reference, refr.entry, Some(&refr)),
        ];
        let wanted = |w: &str| ctx.args.size.wanted(w);
        for repeat in 0..ctx.args.size.repeats {
            eprintln!("repeat {}/{}", repeat + 1, ctx.args.size.repeats);
            if wanted("held") {
                held_run(ctx, &base, held).await?;
            }
            for w in [
                "bulk s1", "bulk s4", "bulk s16", "rr c1", "rr c16", "rr c64",
            ] {
                if !wanted(w) {
                    continue;
                }
                for (setup, entry, pair) in setups {
                    let s = measure(w, setup, entry, pair, &ctx.args.size.plan())
                        .await
                        .with_context(|| format!("{w} {}", setup.name()))?;
                    eprintln!("  {w:>10} {:>11}: {:.2} {}", setup.name(), s.value, s.unit);
                    samples.push(s);
                }
            }
            for c in [1, 16] {
                let resumed = format!("churn c{c} resumed");
                let full_name = format!("churn c{c} full");
                for (name, setup, entry, pair) in [
                    (&resumed, Setup::Direct, server, None),
                    (&resumed, Setup::PlainRelay, plain.entry, Some(&plain)),
                    (&resumed, Setup::Mtls, mtls.entry, Some(&mtls)),
                    (&resumed, Setup::Reference, refr.entry, Some(&refr)),
                    (&full_name, Setup::Direct, server, None),
                    (&full_name, Setup::Mtls, full.entry, Some(&full)),
                    (
                        &full_name,
                        Setup::Reference,
                        ref_full.entry,
                        Some(&ref_full),
                    ),
                ] {
                    if !wanted(name) {
                        continue;
                    }
                    let s = measure(name, setup, entry, pair, &ctx.args.size.plan()).await?;
                    eprintln!(
                        "  {name:>10} {:>11}: {:.0} {}",
                        setup.name(),
                        s.value,
                        s.unit
                    );
                    samples.push(s);
                }
            }
        }
        Ok(())
    })
}

/// Request/response at concurrency 1 with everything on CPU 0: removes
/// cross-core wake-ups, leaving the proxies' own added latency.
fn pinned(ctx: &Ctx, samples: &mut Vec<Sample>) -> anyhow::Result<()> {
    let w = "rr c1 pinned";
    if !ctx.args.size.wanted(w) {
        return Ok(());
    }
    let bin = ctx.bin.clone();
    let ref_bin = ctx.ref_bin.clone();
    let dir: PathBuf = ctx.dir.path().to_path_buf();
    let args = Args::parse_from(std::env::args());
    let classic = ctx.args.classic_kx;
    let out = std::thread::spawn(move || -> anyhow::Result<Vec<Sample>> {
        procs::pin_self(0)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let server = workloads::start_server().await?;
            let opts = PairOptions {
                pin_cpu: Some(0),
                classic_kx: classic,
                worker_threads: Some(1),
                ..Default::default()
            };
            let plain = Pair::start(&bin, &dir, Setup::PlainRelay, server, &opts)?;
            let mtls = Pair::start(&bin, &dir, Setup::Mtls, server, &opts)?;
            let refr = Pair::start_reference(&ref_bin, &dir, server, &opts)?;
            let mut out = Vec::new();
            for _ in 0..args.size.repeats {
                for (setup, entry, pair) in [
                    (Setup::Direct, server, None),
                    (Setup::PlainRelay, plain.entry, Some(&plain)),
                    (Setup::Mtls, mtls.entry, Some(&mtls)),
                    (Setup::Reference, refr.entry, Some(&refr)),
                ] {
                    let s = measure(w, setup, entry, pair, &args.size.plan()).await?;
                    eprintln!(
                        "  {w} {:>11}: p50 {:?} µs p99 {:?} µs",
                        setup.name(),
                        s.p50_us,
                        s.p99_us
                    );
                    out.push(s);
                }
            }
            Ok(out)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("pinned run panicked"))??;
    samples.extend(out);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.size = args.size.quickened();
    if args.size.quick {
        args.held = Some(args.held.unwrap_or(500));
    }
    // The held workload: this process holds the client and the echo server
    // side of each connection.
    let need = 2 * args.held.unwrap_or(5000) as u64 + 512;
    procs::raise_fd_limit(need)?;
    meshlite_proxy::tls::install_provider();
    let bin = match &args.proxy_bin {
        Some(b) => b.clone(),
        None => procs::build_proxy()?,
    };
    let ref_bin = procs::build_reference()?;
    let dir = tempfile::tempdir()?;
    procs::write_credentials(dir.path())?;
    let ctx = Ctx {
        bin,
        ref_bin,
        dir,
        args,
    };

    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = loadavg();
    eprintln!("load average before: {}", load_before.trim());
    let mut samples = Vec::new();
    let mut idle = Vec::new();
    let mut held_samples = Vec::new();
    unpinned(&ctx, &mut samples, &mut idle, &mut held_samples)?;
    pinned(&ctx, &mut samples)?;

    let load_after = loadavg();
    eprintln!("load average after: {}", load_after.trim());
    let summary = report::summarize(&samples);
    let held_summary = held::summarize(&held_samples);
    let targets = report::targets(&summary, &held_summary);
    let table = format!(
        "{}\n{}\n{targets}",
        report::table(&summary),
        held::table(&held_summary)
    );
    println!("\n{table}");
    for (setup, [c, s]) in &idle {
        println!(
            "idle RSS, {setup}: client proxy {:.1} MiB ({:.1} anonymous), server proxy {:.1} MiB ({:.1} anonymous)",
            c.rss_mib, c.anon_mib, s.rss_mib, s.anon_mib
        );
    }
    let mut config = ctx.args.size.json();
    config["classic_kx"] = ctx.args.classic_kx.into();
    let json = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "loadavg": { "before": load_before.trim(), "after": load_after.trim() },
        "config": config,
        "idle": idle.iter().map(|(s, u)| serde_json::json!({"setup": s, "client": u[0], "server": u[1]})).collect::<Vec<_>>(),
        "summary": summary,
        "samples": samples,
        "held_summary": held_summary,
        "held_samples": held_samples,
    });
    report::write_results(&ctx.args.out, &json, &table)?;
    Ok(())
}
