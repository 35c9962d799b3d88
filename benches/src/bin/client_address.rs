//! `meshlite-bench-client-address`: the cost of client address preservation,
//! between two network namespaces (root only). Method:
//! [`meshlite_benches::client_address`] and benches/README.md, "Client address
//! preservation: its cost".

use anyhow::Context;
use clap::Parser;
use meshlite_benches::client_address::{self, Env, Path, table};
use meshlite_benches::measure::PlanArgs;
use meshlite_benches::procs::{self, Setup};
use meshlite_benches::report;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(about = "the cost of --preserve-client-address: direct, mTLS, mTLS preserving (root)")]
struct Args {
    #[command(flatten)]
    size: PlanArgs,
    /// The iptables backend `init` uses in the server pods.
    #[arg(long, default_value = "nft", value_parser = ["nft", "legacy"])]
    iptables_backend: String,
    /// Run this meshlite-proxy binary instead of building the worktree's.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Where to write the JSON results (and the tables, as .md beside it).
    #[arg(long, default_value = "benches/results/client-address.json")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    client_address::install_cleanup()?;
    let mut args = Args::parse();
    args.size = args.size.quickened();
    let tools = client_address::tools(&args.iptables_backend);
    meshlite_proxy::testing::netns::check_root_and(
        &tools.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow::anyhow!("meshlite-bench-client-address {e}"))?;
    let plan = args.size.plan();
    let bin = match &args.proxy_bin {
        Some(b) => b.clone(),
        None => procs::build_proxy()?,
    };
    let env = Env::new(&bin, &args.iptables_backend)?;
    let mut paths = Vec::new();
    for (setup, subnet) in [
        (Setup::Direct, 1),
        (Setup::Mtls, 2),
        (Setup::MtlsPreserve, 3),
    ] {
        paths.push(
            Path::start(setup, subnet, &env)
                .with_context(|| format!("starting {}", setup.name()))?,
        );
    }
    let workloads: Vec<&str> = client_address::WORKLOADS
        .into_iter()
        .filter(|w| args.size.wanted(w))
        .collect();
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = loadavg();
    eprintln!("load average before: {}", load_before.trim());
    let samples = client_address::run(&mut paths, &workloads, args.size.repeats, &plan)?;
    let load_after = loadavg();
    eprintln!("load average after: {}", load_after.trim());
    let mut checks = Vec::new();
    for p in &paths {
        let metric = p.check_metric()?;
        checks.push(serde_json::json!({
            "setup": p.setup, "expected_peer": p.expected_peer, "seen": p.seen,
            "client_address_connections_total": metric,
        }));
    }

    let summary = report::summarize(&samples);
    let costs = table::costs(&samples, args.size.bulk_bytes);
    let mut text = format!(
        "{}\n{}",
        table::results(&summary),
        table::costs_table(&costs)
    );
    for p in &paths {
        if let Some([c, s]) = p.idle {
            text.push_str(&format!(
                "\nidle RSS, {}: client proxy {:.1} MiB, server proxy {:.1} MiB ({:.1} anonymous)\n",
                p.setup.name(),
                c.rss_mib,
                s.rss_mib,
                s.anon_mib
            ));
        }
    }
    for p in &paths {
        let seen: u64 = p.seen.values().sum();
        text.push_str(&format!(
            "\nchecked, {}: all {seen} connections reached the app from {}\n",
            p.setup.name(),
            p.expected_peer
        ));
    }
    println!("\n{text}");
    let mut config = args.size.json();
    config["iptables_backend"] = args.iptables_backend.clone().into();
    let json = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "loadavg": { "before": load_before.trim(), "after": load_after.trim() },
        "config": config,
        "idle": paths.iter().filter_map(|p| Some(serde_json::json!({
            "setup": p.setup, "client": p.idle?[0], "server": p.idle?[1],
        }))).collect::<Vec<_>>(),
        "checks": checks,
        "summary": summary,
        "costs": costs,
        "samples": samples,
    });
    report::write_results(&args.out, &json, &text)?;
    Ok(())
}
