//! `meshlite-proxy init`: installs the pod's iptables redirect rules, and with
//! `--preserve-client-address` the marks and policy routing of client address
//! preservation ([`route`]).
//!
//! Runs once per pod, as the `meshlite-init` init container (root, NET_ADMIN and
//! NET_RAW only). The rules come from the pure [`rules::render`]; this module
//! picks the backend ([`backend`]), reads the current `nat` table so re-running
//! is idempotent, and applies each family atomically with `iptables-restore
//! --noflush`. `--dry-run` prints the rules and touches nothing.

pub mod backend;
pub mod route;
pub mod rules;
pub mod wait;

use std::path::Path;

pub use backend::Backend;
pub use rules::{Cidr, Family, RuleConfig};

/// Flags of `meshlite-proxy init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Which iptables to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub iptables_backend: Backend,
    /// IPv6 rules: `auto` installs them when the kernel has IPv6.
    #[arg(long, value_enum, default_value = "auto")]
    pub ipv6: Ipv6,
    /// Inbound ports not redirected to the proxy (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports not redirected to the proxy (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs not redirected to the proxy (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// UID of the proxy, whose own connections are never redirected.
    #[arg(long, default_value_t = meshlite_contract::PROXY_UID)]
    pub proxy_uid: u32,
    /// The proxy's outbound port.
    #[arg(long, default_value_t = meshlite_contract::OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// The proxy's inbound port.
    #[arg(long, default_value_t = meshlite_contract::INBOUND_PORT)]
    pub inbound_port: u16,
    /// The proxy's admin port, kept reachable for kubelet probes.
    #[arg(long, default_value_t = meshlite_contract::ADMIN_PORT)]
    pub admin_port: u16,
    /// Also install what client address preservation needs (`meshlite-proxy
    /// run --preserve-client-address`): `raw` and `mangle` rules that mark the
    /// proxy's transparent connections, and the policy route that brings the
    /// app's replies back to the proxy. `=false` leaves them out.
    #[arg(long, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub preserve_client_address: bool,
}

/// Whether to install IPv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    Auto,
    On,
    Off,
}

impl InitArgs {
    /// The rule configuration these flags describe.
    pub fn rule_config(&self) -> RuleConfig {
        RuleConfig {
            proxy_uid: self.proxy_uid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            skip_inbound_ports: self.skip_inbound_ports.clone(),
            skip_outbound_ports: self.skip_outbound_ports.clone(),
            skip_outbound_cidrs: self.skip_outbound_cidrs.clone(),
            preserve_client_address: self.preserve_client_address,
        }
    }

    fn families(&self) -> Vec<Family> {
        let v6 = match self.ipv6 {
            Ipv6::On => true,
            Ipv6::Off => false,
            // Present exactly when the kernel has IPv6 enabled.
            Ipv6::Auto => Path::new("/proc/net/if_inet6").exists(),
        };
        if v6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

/// Why init failed. Each message names the program and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{program} not found in PATH: the image needs the iptables package (nft and legacy tools)"
    )]
    NotFound { program: String },
    #[error(
        "{program} was refused by the kernel: init must run as root with NET_ADMIN and NET_RAW ({stderr})"
    )]
    PermissionDenied { program: String, stderr: String },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("policy routing ({family:?}): {source}; init needs NET_ADMIN")]
    Route {
        family: Family,
        #[source]
        source: std::io::Error,
    },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the init step: prints (dry run) or applies the rules.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let cfg = args.rule_config();
    if args.dry_run {
        for family in args.families() {
            let program = Backend::Auto.restore(family);
            println!("# {program} --noflush <<EOF");
            print!("{}", rules::render(&cfg, family, ""));
            if cfg.preserve_client_address {
                print!("{}", rules::render_preserve(&cfg, "", ""));
            }
            println!("# EOF");
            if cfg.preserve_client_address {
                println!("# policy routing, over netlink:");
                for cmd in route::plan(family) {
                    println!("# {cmd}");
                }
            }
        }
        return Ok(());
    }
    let backend = match args.iptables_backend {
        Backend::Auto => backend::detect()?,
        chosen => chosen,
    };
    for family in args.families() {
        let installed = apply(backend, family, &cfg)?;
        // Plain output: the init container's log is where an operator looks,
        // and logging is not set up for this short-lived subcommand.
        println!(
            "meshlite-proxy init: {} {family:?} rules in place ({backend:?} backend)",
            installed.len()
        );
        if cfg.preserve_client_address {
            let done =
                route::install(family).map_err(|e| InitError::Route { family, source: e })?;
            println!(
                "meshlite-proxy init: {family:?} policy routing for client address preservation \
                 in place (rule {}, route {})",
                if done.rule_added { "added" } else { "kept" },
                if done.route_added { "added" } else { "kept" },
            );
        }
    }
    Ok(())
}

/// Applies one family's rules atomically; returns our rules now in place.
pub fn apply(backend: Backend, family: Family, cfg: &RuleConfig) -> Result<Vec<String>, InitError> {
    let save = backend.save(family);
    let current = backend::run(&save, &["-t", "nat"], None)?;
    let mut text = rules::render(cfg, family, &current);
    if cfg.preserve_client_address {
        let raw = backend::run(&save, &["-t", "raw"], None)?;
        let mangle = backend::run(&save, &["-t", "mangle"], None)?;
        text.push_str(&rules::render_preserve(cfg, &raw, &mangle));
    }
    // --wait: iptables-legacy takes a host-wide lock that a concurrent run may hold.
    backend::run(
        &backend.restore(family),
        &["--noflush", "--wait=10"],
        Some(&text),
    )?;
    let mut installed = rules::our_rules(&backend::run(&save, &["-t", "nat"], None)?);
    if cfg.preserve_client_address {
        for table in ["raw", "mangle"] {
            installed.extend(rules::our_rules(&backend::run(
                &save,
                &["-t", table],
                None,
            )?));
        }
    }
    tracing::info!(
        ?backend,
        ?family,
        rules = installed.len(),
        "installed redirect rules"
    );
    Ok(installed)
}
