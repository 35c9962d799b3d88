//! Per-pod settings read from annotations: inbound mode, the skip lists and
//! whether the app sees its clients' own addresses.
//!
//! Each setting is looked up on the pod first and on its namespace second (the
//! pod wins, DESIGN.md section 3), then validated, so a typo in an annotation
//! denies the pod with a reason instead of silently meshing it differently.
//!
//! A namespace annotated `meshlite.io/mode-enforced: "true"` turns its mode
//! into a floor: a pod may ask for strict where the namespace says permissive,
//! but not the reverse, and under an enforced strict floor a pod may neither
//! skip inbound ports of its own nor opt out of injection (each would accept
//! plaintext the namespace owner ruled out). The namespace's own skip lists
//! still apply: they are the owner's decision.

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshlite_contract::{
    CLIENT_ADDRESS_ANNOTATION, INJECT_LABEL, MODE_ANNOTATION, MODE_ENFORCED_ANNOTATION, Mode,
    SKIP_INBOUND_PORTS_ANNOTATION, SKIP_OUTBOUND_CIDRS_ANNOTATION, SKIP_OUTBOUND_PORTS_ANNOTATION,
};

/// Annotations of one object, as the Kubernetes types carry them.
pub type Annotations = BTreeMap<String, String>;

/// The resolved, validated settings of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    pub mode: Mode,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    /// CIDRs in canonical `addr/len` text, IPv4 and IPv6 mixed.
    pub skip_outbound_cidrs: Vec<String>,
    /// `meshlite.io/client-address: preserve`: the inbound proxy connects to
    /// the app from each client's own address (the sidecar then needs
    /// CAP_NET_RAW, see sidecar.rs).
    pub preserve_client_address: bool,
}

/// An annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?} (from the {source_kind}): {reason}")]
pub struct SettingsError {
    pub annotation: &'static str,
    pub value: String,
    /// `pod` or `namespace`: where the bad value came from.
    pub source_kind: &'static str,
    pub reason: String,
}

impl PodSettings {
    /// Resolves the settings: pod annotation, else namespace annotation, else
    /// default; then holds the pod to the namespace's floor if it enforces one.
    pub fn resolve(
        pod: &Annotations,
        namespace: &Annotations,
        default_mode: Mode,
    ) -> Result<Self, SettingsError> {
        let floor = enforced_floor(pod, namespace, default_mode)?;
        let mode = match lookup(MODE_ANNOTATION, pod, namespace) {
            None => default_mode,
            Some((value, src)) => value.parse().map_err(|e: meshlite_contract::InvalidMode| {
                error(MODE_ANNOTATION, value, src, e.to_string())
            })?,
        };
        if floor == Some(Mode::Strict) {
            if mode == Mode::Permissive {
                let value = pod.get(MODE_ANNOTATION).map_or("", String::as_str);
                return Err(error(MODE_ANNOTATION, value, "pod", enforced_reason()));
            }
            if let Some(value) = pod.get(SKIP_INBOUND_PORTS_ANNOTATION) {
                return Err(error(
                    SKIP_INBOUND_PORTS_ANNOTATION,
                    value,
                    "pod",
                    format!(
                        "{}; skipped inbound ports would accept plaintext (the namespace's own \
                         {SKIP_INBOUND_PORTS_ANNOTATION} still applies)",
                        enforced_reason()
                    ),
                ));
            }
        }
        Ok(PodSettings {
            mode,
            skip_inbound_ports: ports(SKIP_INBOUND_PORTS_ANNOTATION, pod, namespace)?,
            skip_outbound_ports: ports(SKIP_OUTBOUND_PORTS_ANNOTATION, pod, namespace)?,
            skip_outbound_cidrs: cidrs(SKIP_OUTBOUND_CIDRS_ANNOTATION, pod, namespace)?,
            preserve_client_address: client_address(pod, namespace)?,
        })
    }
}

/// Checks that a pod which opted out (`meshlite.io/inject: disabled`) may:
/// not where the namespace enforces strict mode.
pub fn check_opt_out(
    pod: &Annotations,
    namespace: &Annotations,
    default_mode: Mode,
) -> Result<(), SettingsError> {
    if enforced_floor(pod, namespace, default_mode)? == Some(Mode::Strict) {
        return Err(error(
            INJECT_LABEL,
            meshlite_contract::INJECT_DISABLED,
            "pod",
            format!(
                "{}; an unmeshed pod would accept plaintext",
                enforced_reason()
            ),
        ));
    }
    Ok(())
}

/// The mode a namespace enforces, if it does (`meshlite.io/mode-enforced`).
/// The setting belongs to the namespace: on a pod it is refused, since
/// reading it there would let the pod decide.
fn enforced_floor(
    pod: &Annotations,
    namespace: &Annotations,
    default_mode: Mode,
) -> Result<Option<Mode>, SettingsError> {
    if let Some(value) = pod.get(MODE_ENFORCED_ANNOTATION) {
        return Err(error(
            MODE_ENFORCED_ANNOTATION,
            value,
            "pod",
            "this is a namespace setting; set it on the namespace".into(),
        ));
    }
    let enforced = match namespace.get(MODE_ENFORCED_ANNOTATION).map(|v| v.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(error(
                MODE_ENFORCED_ANNOTATION,
                other,
                "namespace",
                "expected \"true\" or \"false\"".into(),
            ));
        }
    };
    if !enforced {
        return Ok(None);
    }
    match namespace.get(MODE_ANNOTATION) {
        None => Ok(Some(default_mode)),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|e: meshlite_contract::InvalidMode| {
                error(MODE_ANNOTATION, value, "namespace", e.to_string())
            }),
    }
}

fn enforced_reason() -> String {
    format!(
        "the namespace enforces strict mode ({MODE_ENFORCED_ANNOTATION}: \"true\"), which a pod \
         cannot weaken; ask the namespace owner, or run the pod elsewhere"
    )
}

fn lookup<'a>(
    key: &str,
    pod: &'a Annotations,
    namespace: &'a Annotations,
) -> Option<(&'a str, &'static str)> {
    pod.get(key)
        .map(|v| (v.as_str(), "pod"))
        .or_else(|| namespace.get(key).map(|v| (v.as_str(), "namespace")))
}

fn error(
    annotation: &'static str,
    value: &str,
    src: &'static str,
    reason: String,
) -> SettingsError {
    SettingsError {
        annotation,
        value: value.to_string(),
        source_kind: src,
        reason,
    }
}

/// Splits a comma-separated list, ignoring blanks so `"80, 443,"` is fine.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `preserve` or `proxy` (the default: the app sees the pod's own address).
fn client_address(pod: &Annotations, namespace: &Annotations) -> Result<bool, SettingsError> {
    match lookup(CLIENT_ADDRESS_ANNOTATION, pod, namespace) {
        None => Ok(false),
        Some((value, src)) => match value.trim() {
            "preserve" => Ok(true),
            "proxy" => Ok(false),
            _ => Err(error(
                CLIENT_ADDRESS_ANNOTATION,
                value,
                src,
                "expected \"preserve\" (the app sees each client's own address) or \"proxy\" \
                 (the default: the app sees the pod's own address)"
                    .into(),
            )),
        },
    }
}

fn ports(
    key: &'static str,
    pod: &Annotations,
    namespace: &Annotations,
) -> Result<Vec<u16>, SettingsError> {
    let Some((value, src)) = lookup(key, pod, namespace) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in items(value) {
        match item.parse::<u16>() {
            Ok(port) if port != 0 => {
                if !out.contains(&port) {
                    out.push(port);
                }
            }
            _ => {
                return Err(error(
                    key,
                    value,
                    src,
                    format!("{item:?} is not a port (1-65535)"),
                ));
            }
        }
    }
    Ok(out)
}

fn cidrs(
    key: &'static str,
    pod: &Annotations,
    namespace: &Annotations,
) -> Result<Vec<String>, SettingsError> {
    let Some((value, src)) = lookup(key, pod, namespace) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in items(value) {
        let cidr = parse_cidr(item).ok_or_else(|| {
            error(
                key,
                value,
                src,
                format!("{item:?} is not a CIDR like 10.0.0.0/8 or fd00::/8"),
            )
        })?;
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// Parses `addr/len` (or a bare address, meaning a single host) into canonical text.
fn parse_cidr(s: &str) -> Option<String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some(format!("{addr}/{len}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_annotation_wins_over_namespace_and_namespace_over_default() {
        let ns = ann(&[
            (MODE_ANNOTATION, "strict"),
            (SKIP_INBOUND_PORTS_ANNOTATION, "9000"),
        ]);
        let pod = ann(&[(MODE_ANNOTATION, "permissive")]);
        let s = PodSettings::resolve(&pod, &ns, Mode::Permissive).unwrap();
        assert_eq!(s.mode, Mode::Permissive);
        assert_eq!(s.skip_inbound_ports, vec![9000]);
        let s = PodSettings::resolve(&Annotations::new(), &ns, Mode::Permissive).unwrap();
        assert_eq!(s.mode, Mode::Strict);
        let s =
            PodSettings::resolve(&Annotations::new(), &Annotations::new(), Mode::Strict).unwrap();
        assert_eq!(s.mode, Mode::Strict);
        assert!(s.skip_outbound_cidrs.is_empty());
    }

    #[test]
    fn client_address_is_off_unless_asked_for_and_the_pod_wins() {
        let resolve = |pod: &[(&str, &str)], ns: &[(&str, &str)]| {
            PodSettings::resolve(&ann(pod), &ann(ns), Mode::Permissive)
                .unwrap()
                .preserve_client_address
        };
        assert!(!resolve(&[], &[]));
        assert!(resolve(&[(CLIENT_ADDRESS_ANNOTATION, "preserve")], &[]));
        assert!(resolve(&[], &[(CLIENT_ADDRESS_ANNOTATION, " preserve ")]));
        assert!(!resolve(
            &[(CLIENT_ADDRESS_ANNOTATION, "proxy")],
            &[(CLIENT_ADDRESS_ANNOTATION, "preserve")]
        ));
    }

    #[test]
    fn lists_tolerate_spaces_blanks_and_duplicates() {
        let pod = ann(&[
            (SKIP_OUTBOUND_PORTS_ANNOTATION, " 5432, 6379,,5432 "),
            (
                SKIP_OUTBOUND_CIDRS_ANNOTATION,
                "10.0.0.0/8, fd00::/8,169.254.169.254",
            ),
        ]);
        let s = PodSettings::resolve(&pod, &Annotations::new(), Mode::Permissive).unwrap();
        assert_eq!(s.skip_outbound_ports, vec![5432, 6379]);
        assert_eq!(
            s.skip_outbound_cidrs,
            vec!["10.0.0.0/8", "fd00::/8", "169.254.169.254/32"]
        );
    }

    #[test]
    fn bad_values_are_refused_naming_annotation_value_and_source() {
        let cases = [
            (MODE_ANNOTATION, "STRICT"),
            (SKIP_INBOUND_PORTS_ANNOTATION, "80,http"),
            (SKIP_OUTBOUND_PORTS_ANNOTATION, "0"),
            (SKIP_OUTBOUND_PORTS_ANNOTATION, "70000"),
            (SKIP_OUTBOUND_CIDRS_ANNOTATION, "10.0.0.0/33"),
            (SKIP_OUTBOUND_CIDRS_ANNOTATION, "10.0.0.0/8;rm -rf"),
            (CLIENT_ADDRESS_ANNOTATION, "Preserve"),
            (CLIENT_ADDRESS_ANNOTATION, "true"),
        ];
        for (key, value) in cases {
            let err =
                PodSettings::resolve(&Annotations::new(), &ann(&[(key, value)]), Mode::Permissive)
                    .unwrap_err();
            assert_eq!(err.annotation, key);
            assert_eq!(err.source_kind, "namespace");
            assert!(err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn an_enforced_strict_namespace_cannot_be_weakened_by_its_pods() {
        let ns = ann(&[
            (MODE_ANNOTATION, "strict"),
            (MODE_ENFORCED_ANNOTATION, "true"),
            (SKIP_INBOUND_PORTS_ANNOTATION, "9000"),
        ]);
        let weaker = [
            ann(&[(MODE_ANNOTATION, "permissive")]),
            ann(&[(SKIP_INBOUND_PORTS_ANNOTATION, "8080")]),
        ];
        for pod in weaker {
            let err = PodSettings::resolve(&pod, &ns, Mode::Permissive).unwrap_err();
            assert_eq!(err.source_kind, "pod");
            assert!(err.to_string().contains(MODE_ENFORCED_ANNOTATION), "{err}");
        }
        let err = check_opt_out(&Annotations::new(), &ns, Mode::Permissive).unwrap_err();
        assert_eq!(err.annotation, INJECT_LABEL);
        // Stricter, silent and the namespace's own skip list are all fine.
        for pod in [ann(&[(MODE_ANNOTATION, "strict")]), Annotations::new()] {
            let s = PodSettings::resolve(&pod, &ns, Mode::Permissive).unwrap();
            assert_eq!(s.mode, Mode::Strict);
            assert_eq!(s.skip_inbound_ports, vec![9000]);
        }
    }

    #[test]
    fn enforcement_reads_only_the_namespace_and_is_a_floor_not_a_ceiling() {
        // The floor without a namespace mode is the cluster default.
        let ns = ann(&[(MODE_ENFORCED_ANNOTATION, "true")]);
        let pod = ann(&[(MODE_ANNOTATION, "permissive")]);
        assert!(PodSettings::resolve(&pod, &ns, Mode::Strict).is_err());
        assert!(check_opt_out(&Annotations::new(), &ns, Mode::Strict).is_err());
        // An enforced permissive floor lets a pod be stricter, and opt out.
        let ns = ann(&[
            (MODE_ANNOTATION, "permissive"),
            (MODE_ENFORCED_ANNOTATION, "true"),
        ]);
        let s = PodSettings::resolve(&ann(&[(MODE_ANNOTATION, "strict")]), &ns, Mode::Permissive)
            .unwrap();
        assert_eq!(s.mode, Mode::Strict);
        assert!(check_opt_out(&Annotations::new(), &ns, Mode::Permissive).is_ok());
        // Unenforced (absent or "false"): the pod wins, as before.
        for ns in [
            ann(&[(MODE_ANNOTATION, "strict")]),
            ann(&[
                (MODE_ANNOTATION, "strict"),
                (MODE_ENFORCED_ANNOTATION, "false"),
            ]),
        ] {
            let s = PodSettings::resolve(&pod, &ns, Mode::Permissive).unwrap();
            assert_eq!(s.mode, Mode::Permissive);
            assert!(check_opt_out(&Annotations::new(), &ns, Mode::Permissive).is_ok());
        }
        // A pod cannot set enforcement, and a bad value is refused.
        let err = PodSettings::resolve(
            &ann(&[(MODE_ENFORCED_ANNOTATION, "false")]),
            &Annotations::new(),
            Mode::Permissive,
        )
        .unwrap_err();
        assert_eq!(
            (err.annotation, err.source_kind),
            (MODE_ENFORCED_ANNOTATION, "pod")
        );
        let err = PodSettings::resolve(
            &Annotations::new(),
            &ann(&[(MODE_ENFORCED_ANNOTATION, "yes")]),
            Mode::Permissive,
        )
        .unwrap_err();
        assert_eq!(
            (err.annotation, err.source_kind),
            (MODE_ENFORCED_ANNOTATION, "namespace")
        );
    }
}
