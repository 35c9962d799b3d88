//! `meshlite-soak`: holds thousands of connections through the proxy pair, and
//! opens new ones at a steady rate, while certd rotates the proxies'
//! certificates. Prints the failed connections (0 is the bar), RSS and fds per
//! proxy over time, and the renewals; exits non-zero if any connection failed
//! or a proxy renewed too few times. Method: `benches/README.md`, "Soak".

use clap::Parser;
use meshlite_benches::procs;
use meshlite_benches::report;
use meshlite_benches::soak::{self, Plan};
use meshlite_contract::duration::parse as parse_duration;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    about = "meshlite soak: held and new connections through the pair while certificates rotate"
)]
struct Args {
    /// Connections held open for the whole run [default: 5000; --quick 500].
    #[arg(long)]
    held: Option<usize>,
    /// New connections per second [default: 200; --quick 50].
    #[arg(long)]
    rate: Option<u32>,
    /// How long the connections are held once all are open [default: 5m; --quick 30s].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Leaf certificate lifetime; proxies renew at about half of it [default: 90s; --quick 20s].
    #[arg(long, value_parser = parse_duration)]
    lifetime: Option<Duration>,
    /// How often each held connection sends a byte that must echo back [default: 30s; --quick 5s].
    #[arg(long, value_parser = parse_duration)]
    ping_every: Option<Duration>,
    /// How often to sample and print the proxies' RSS, fds and renewals [default: 10s; --quick 5s].
    #[arg(long, value_parser = parse_duration)]
    sample_every: Option<Duration>,
    /// Most new connections in flight at once.
    #[arg(long, default_value_t = 256)]
    churn_concurrency: usize,
    /// Most held connections being opened at once.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Budget for each connect, echo and close.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    io_timeout: Duration,
    /// Renewals each proxy must make for the run to pass.
    #[arg(long, default_value_t = 2)]
    min_renewals: u64,
    /// A ~30-second smoke run with fewer connections (explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// Where to write the raw samples; the summary goes next to it as `.md`.
    #[arg(long, default_value = "benches/results/soak.json")]
    out: PathBuf,
}

impl Args {
    fn plan(&self) -> Plan {
        let q = self.quick;
        let secs = Duration::from_secs;
        Plan {
            held: self.held.unwrap_or(if q { 500 } else { 5000 }),
            rate: self.rate.unwrap_or(if q { 50 } else { 200 }),
            duration: self.duration.unwrap_or(secs(if q { 30 } else { 300 })),
            lifetime: self.lifetime.unwrap_or(secs(if q { 20 } else { 90 })),
            ping_every: self.ping_every.unwrap_or(secs(if q { 5 } else { 30 })),
            sample_every: self.sample_every.unwrap_or(secs(if q { 5 } else { 10 })),
            churn_concurrency: self.churn_concurrency.max(1),
            open_concurrency: self.open_concurrency.max(1),
            io_timeout: self.io_timeout,
            min_renewals: self.min_renewals,
        }
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let plan = args.plan();
    // Each proxy holds two sockets per connection (client side and upstream),
    // and so does this process (client and echo server).
    let need = 2 * (plan.held + plan.churn_concurrency) as u64 + 256;
    let limit = procs::raise_fd_limit(need)?;
    eprintln!("open-file limit {limit} (this run needs about {need} per process)");
    meshlite_proxy::tls::install_provider();
    let bin = procs::build_proxy()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(soak::run(&bin, plan))?;
    let md = soak::render(&report.summary);
    println!("\n{md}");
    report::write_results(&args.out, &report, &md)?;
    Ok(if report.summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
