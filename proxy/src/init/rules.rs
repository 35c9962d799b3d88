//! The redirect rules as `iptables-restore` text: a pure function of the
//! [`RuleConfig`], one text per IP family.
//!
//! Everything lives in two chains of the `nat` table that we own:
//!
//! - `MESHLITE_OUTPUT`, jumped to from `OUTPUT`: the pod's own TCP connections go
//!   to the outbound port, except the proxy's own (by UID, so it can reach the
//!   real destination), loopback destinations, skipped ports and skipped CIDRs.
//! - `MESHLITE_INBOUND`, jumped to from `PREROUTING`: TCP arriving at the pod
//!   goes to the inbound port, except the admin port (kubelet probes) and the
//!   skipped inbound ports.
//!
//! With client address preservation, two more chains of ours, in `raw` and
//! `mangle`, come from [`render_preserve`].
//!
//! The text is applied with `--noflush`: declaring our chains flushes them, and
//! the two jumps are only added when the current table lacks them, so running
//! init twice leaves exactly one set of rules and touches nothing else.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

/// Chain for outbound (locally generated) connections.
pub const OUTPUT_CHAIN: &str = "MESHLITE_OUTPUT";
/// Chain for inbound connections.
pub const INBOUND_CHAIN: &str = "MESHLITE_INBOUND";
/// `raw` chain of client address preservation: the conntrack zone.
pub const RAW_CHAIN: &str = "MESHLITE_RAW";
/// `mangle` chain of client address preservation: the marks.
pub const MANGLE_CHAIN: &str = "MESHLITE_MANGLE";

/// The mark of the proxy's transparent connections and of the app's replies
/// to them: the proxy UID in hex, under a 12-bit mask, so other users of the
/// mark keep the other bits.
pub const PRESERVE_MARK: u32 = 0x836;
pub const PRESERVE_MASK: u32 = 0xfff;
/// The routing table holding `local default dev lo`.
pub const ROUTE_TABLE: u32 = 2102;
/// The policy rule's priority: after `local` (0), before `main` (32766).
pub const ROUTE_PRIORITY: u32 = 32000;
/// The conntrack zone of the original direction of the proxy's transparent
/// connections (see `crate::client_addr` for the collision it prevents).
pub const CONNTRACK_ZONE: u16 = 2102;

/// IP family of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// A CIDR such as `10.0.0.0/8` or `fd00::/8`; a bare address means one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A CIDR that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8")]
pub struct InvalidCidr(pub String);

impl FromStr for Cidr {
    type Err = InvalidCidr;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidCidr(s.to_string());
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// What the rules redirect and what they exempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Also install the `raw` and `mangle` rules (and, in [`super::route`],
    /// the policy routing) of client address preservation.
    pub preserve_client_address: bool,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            proxy_uid: meshlite_contract::PROXY_UID,
            outbound_port: meshlite_contract::OUTBOUND_PORT,
            inbound_port: meshlite_contract::INBOUND_PORT,
            admin_port: meshlite_contract::ADMIN_PORT,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            preserve_client_address: false,
        }
    }
}

/// The jump from `OUTPUT` into our chain, exactly as `iptables-save` prints it.
pub fn output_jump() -> String {
    format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}")
}

/// The jump from `PREROUTING` into our chain, exactly as `iptables-save` prints it.
pub fn inbound_jump() -> String {
    format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}")
}

/// The `iptables-restore --noflush` input for `family`. `current_nat` is the
/// current `iptables-save -t nat` output (empty for a fresh namespace); jumps
/// already in it are not added again.
pub fn render(cfg: &RuleConfig, family: Family, current_nat: &str) -> String {
    let mut out = String::new();
    // `writeln!` into a String cannot fail.
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    line("*nat".into());
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        line(format!(":{chain} - [0:0]"));
    }
    // The declarations above flush existing chains in iptables-legacy, but
    // flushing explicitly makes it hold for every backend.
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        line(format!("-F {chain}"));
    }

    // Inbound: the admin port stays reachable for kubelet probes.
    let mut inbound_skips = vec![cfg.admin_port];
    inbound_skips.extend(
        cfg.skip_inbound_ports
            .iter()
            .copied()
            .filter(|p| *p != cfg.admin_port),
    );
    for port in inbound_skips {
        line(format!(
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    line(format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        cfg.inbound_port
    ));

    // Outbound: the proxy's own connections first, or it would loop into itself.
    line(format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        cfg.proxy_uid
    ));
    line(format!(
        "-A {OUTPUT_CHAIN} -d {} -j RETURN",
        family.loopback()
    ));
    for port in &cfg.skip_outbound_ports {
        line(format!(
            "-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    for cidr in cfg
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        line(format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"));
    }
    line(format!(
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_port
    ));

    for jump in [inbound_jump(), output_jump()] {
        if !has_line(current_nat, &jump) {
            line(jump);
        }
    }
    line("COMMIT".into());
    out
}

/// The jump from `raw`'s `OUTPUT` into [`RAW_CHAIN`].
pub fn raw_jump() -> String {
    format!("-A OUTPUT -p tcp -j {RAW_CHAIN}")
}

/// The jump from `mangle`'s `OUTPUT` into [`MANGLE_CHAIN`].
pub fn mangle_jump() -> String {
    format!("-A OUTPUT -p tcp -j {MANGLE_CHAIN}")
}

/// The `raw` and `mangle` tables of client address preservation, as
/// `iptables-restore --noflush` input; `current_raw` and `current_mangle` are
/// `iptables-save -t raw` / `-t mangle`, so jumps already there are not added.
///
/// A transparent connection of the proxy is one whose socket belongs to the
/// proxy UID and whose source is not a local address: nothing else the proxy
/// opens looks like that. For those:
///
/// - `raw`: the original direction goes into its own conntrack zone, so the
///   proxy leg `client:P -> pod:app` never shares a tuple with a redirected
///   connection from the same client (see `crate::client_addr`). The reply
///   direction stays in the default zone, where the app's packets look it up.
/// - `mangle`: the connection is marked; the app's replies get the mark back
///   and are rerouted (the mark changed in `OUTPUT`) by the policy rule to
///   `local default dev lo`, so they reach the proxy's socket instead of
///   leaving the pod. Replies belong to an existing connection, so `nat`'s
///   REDIRECT to the outbound port never sees them.
pub fn render_preserve(cfg: &RuleConfig, current_raw: &str, current_mangle: &str) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    let ours = format!(
        "-p tcp -m owner --uid-owner {} -m addrtype ! --src-type LOCAL",
        cfg.proxy_uid
    );
    let mark = format!("{PRESERVE_MARK:#x}/{PRESERVE_MASK:#x}");
    for (table, chain, jump, current) in [
        ("raw", RAW_CHAIN, raw_jump(), current_raw),
        ("mangle", MANGLE_CHAIN, mangle_jump(), current_mangle),
    ] {
        line(format!("*{table}"));
        line(format!(":{chain} - [0:0]"));
        line(format!("-F {chain}"));
        if table == "raw" {
            line(format!(
                "-A {chain} {ours} -j CT --zone-orig {CONNTRACK_ZONE}"
            ));
        } else {
            line(format!("-A {chain} {ours} -j CONNMARK --set-xmark {mark}"));
            line(format!(
                "-A {chain} -p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark --nfmask {PRESERVE_MASK:#x} --ctmask {PRESERVE_MASK:#x}"
            ));
        }
        if !has_line(current, &jump) {
            line(jump);
        }
        line("COMMIT".into());
    }
    out
}

fn has_line(text: &str, wanted: &str) -> bool {
    text.lines().any(|l| l.trim_end() == wanted)
}

/// The rules of our chains and jumps in `iptables-save` output, in order; used
/// to compare runs and by tests.
pub fn our_rules(save_output: &str) -> Vec<String> {
    save_output
        .lines()
        .filter(|l| {
            l.starts_with("-A ")
                && [OUTPUT_CHAIN, INBOUND_CHAIN, RAW_CHAIN, MANGLE_CHAIN]
                    .iter()
                    .any(|c| l.contains(c))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;
