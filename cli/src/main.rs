//! `kubectl-meshlite`: see the crate docs and cli/README.md.

use clap::{Parser, Subcommand};
use meshlite_cli::kubeapi::Connect;
use meshlite_cli::report::{EXIT_ERROR, EXIT_FAILED};
use meshlite_cli::{check, proxies, rotate};
use std::process::ExitCode;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl meshlite",
    version,
    about = "Checks a meshlite install, shows workload identities, rotates the mesh CA."
)]
struct Cli {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verifies the install (or with --proxy, each proxy of a namespace):
    /// one line per check, a hint on each problem; exits 1 on any failure.
    Check {
        /// Check the proxies of one namespace instead of the install.
        #[arg(long)]
        proxy: bool,
        /// The namespace whose proxies --proxy checks.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Shows a pod's SPIFFE ID, certificate serial and notAfter, as its proxy
    /// presents them now.
    Identity {
        pod: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// CA operations.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Rotates the mesh CA with overlap, in four resumable steps; exits 0
    /// when the rotation is complete and 3 when it stopped at a wait (run it
    /// again to resume).
    Rotate {
        /// Show the plan from where the rotation is, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long this run may wait for a step before it stops (resumable).
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        timeout: Duration,
        /// The longest leaf lifetime certd issues (default: CERTD_LIFETIME_SECONDS
        /// of ConfigMap meshlite-config, else certd's 1h).
        #[arg(long, value_parser = parse_duration)]
        leaf_lifetime: Option<Duration>,
        /// certd's --reconcile-interval-seconds.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        reconcile_interval: Duration,
        /// How often to look again while waiting.
        #[arg(long, default_value = "5s", value_parser = parse_duration, hide = true)]
        poll: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    meshlite_contract::duration::parse(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let client = match cli.connect.client().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubectl meshlite: {e:#}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let ns = &cli.connect.system_namespace;
    let now = OffsetDateTime::now_utc();
    let code = match cli.command {
        Command::Check { proxy: false, .. } => check::check_install(&client, ns, now)
            .await
            .map(|r| r.finish()),
        Command::Check {
            proxy: true,
            namespace,
        } => proxies::check_proxies(&client, ns, &namespace, now)
            .await
            .map(|r| r.finish()),
        Command::Identity { pod, namespace } => {
            match meshlite_cli::kubeapi::proxy_identity(&client, &namespace, &pod).await {
                Ok(id) => {
                    print!("{}", proxies::identity_text(&pod, &namespace, &id, now));
                    Ok(0)
                }
                Err(e) => {
                    eprintln!(
                        "kubectl meshlite identity: {e:#}\nhint: is {namespace}/{pod} meshed and its proxy ready? kubectl meshlite check --proxy -n {namespace}"
                    );
                    Ok(EXIT_FAILED)
                }
            }
        }
        Command::Ca {
            command:
                CaCommand::Rotate {
                    dry_run,
                    timeout,
                    leaf_lifetime,
                    reconcile_interval,
                    poll,
                },
        } => {
            let opts = rotate::Options {
                dry_run,
                timeout,
                lifetime: leaf_lifetime,
                reconcile: reconcile_interval,
                poll,
            };
            match rotate::rotate(&client, ns, &opts).await {
                Ok(code) => Ok(code),
                Err(e) => Ok(rotate::refuse(&e)),
            }
        }
    };
    match code {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("kubectl meshlite: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
