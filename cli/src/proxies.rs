//! `kubectl meshlite check --proxy -n NS` and `kubectl meshlite identity POD`:
//! what each proxy presents, read from its admin port's `/identity` through
//! the API server's pod proxy subresource.

use crate::kubeapi::{
    Settings, expected_identity, meshed_pods, namespace_bundle, proxy_identity, proxy_ready,
};
use crate::pem::{certs, info, relative, rfc3339};
use crate::report::{Line, Report};
use meshlite_contract::api::ProxyIdentity;
use time::OffsetDateTime;

/// The share of a leaf's lifetime left under which a proxy is late renewing
/// (it renews at about half).
const LATE_RENEWAL: f64 = 0.25;

/// Decides one proxy's line from its answer and the namespace's bundle.
pub fn proxy_line(
    pod: &str,
    ready: bool,
    expected: &str,
    answer: Result<&ProxyIdentity, String>,
    bundle: Option<&str>,
    now: OffsetDateTime,
) -> Line {
    let check = format!("proxy {pod}");
    let logs = format!("kubectl logs {pod} -c meshlite-proxy");
    if !ready {
        return Line::fail(check, "the proxy is not ready", logs);
    }
    let id = match answer {
        Ok(id) => id,
        Err(e) => return Line::fail(check, format!("its /identity cannot be read: {e}"), logs),
    };
    let Some(bundle) = bundle else {
        return Line::fail(
            check,
            "the namespace has no ConfigMap meshlite-trust-bundle to verify against",
            "kubectl meshlite check (the trust-bundle line)",
        );
    };
    let uris = match meshlite_certd::ca::verify_workload_chain(&id.certificate_chain, bundle, now) {
        Ok(uris) => uris,
        Err(e) => {
            return Line::fail(
                check,
                format!(
                    "its certificate does not verify against the namespace's trust bundle: {e}"
                ),
                format!("it should renew on its own; {logs}"),
            );
        }
    };
    if uris != [expected] {
        return Line::fail(
            check,
            format!("it presents {uris:?}, not {expected}"),
            format!("{logs}; kubectl -n meshlite-system logs deploy/meshlite-certd"),
        );
    }
    let leaf = certs(&id.certificate_chain).and_then(|c| info(&c[0]));
    let Ok(leaf) = leaf else {
        return Line::fail(check, "its certificate does not parse", logs);
    };
    let lifetime = (leaf.not_after - leaf.not_before).as_seconds_f64();
    let left = (leaf.not_after - now).as_seconds_f64();
    let msg = format!(
        "ready, {expected}, serial {}, expires {} ({})",
        leaf.serial,
        rfc3339(leaf.not_after),
        relative(leaf.not_after, now)
    );
    if lifetime > 0.0 && left / lifetime < LATE_RENEWAL {
        Line::warn(
            check,
            format!("{msg}: renewal is late (it renews at about half the lifetime)"),
            format!("can it reach certd? {logs}"),
        )
    } else {
        Line::ok(check, msg)
    }
}

/// `check --proxy -n NS`.
pub async fn check_proxies(
    client: &kube::Client,
    system_ns: &str,
    ns: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Report> {
    let settings = Settings::load(client, system_ns).await?;
    let bundle = namespace_bundle(client, ns).await?;
    let pods = meshed_pods(client, ns).await?;
    let mut report = Report::default();
    if pods.is_empty() {
        report.push(Line::warn(
            "proxies",
            format!("no meshed pod in namespace {ns}"),
            format!("label it: kubectl label namespace {ns} meshlite.io/inject=enabled, then restart its workloads"),
        ));
    }
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ready = proxy_ready(pod);
        let answer = if ready {
            proxy_identity(client, ns, &name)
                .await
                .map_err(|e| format!("{e:#}"))
        } else {
            Err("not ready".into())
        };
        report.push(proxy_line(
            &name,
            ready,
            &expected_identity(pod, &settings.trust_domain),
            answer.as_ref().map_err(Clone::clone),
            bundle.as_deref(),
            now,
        ));
    }
    Ok(report)
}

/// `identity POD`: the lines it prints.
pub fn identity_text(pod: &str, ns: &str, id: &ProxyIdentity, now: OffsetDateTime) -> String {
    let mut out = format!(
        "pod         {ns}/{pod}\nspiffe id   {}\nserial      {}\n",
        id.spiffe_id, id.serial
    );
    let parse =
        |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    let when = |s: &str| match parse(s) {
        Some(t) => format!("{s} ({})", relative(t, now)),
        None => s.to_string(),
    };
    out.push_str(&format!(
        "notBefore   {}\nnotAfter    {}\nissuer      {}\n",
        when(&id.not_before),
        when(&id.not_after),
        id.issuer
    ));
    let roots = certs(&id.trust_bundle).unwrap_or_default();
    out.push_str(&format!("trusts      {} root(s)\n", roots.len()));
    for r in roots {
        if let Ok(i) = info(&r) {
            out.push_str(&format!(
                "  - {} (sha256 {}…, expires {})\n",
                i.subject,
                &crate::pem::fingerprint(&r)[..16],
                rfc3339(i.not_after)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;
    use meshlite_certd::ca::Ca;

    fn issued(ca: &Ca, id: &str, lifetime_s: u64) -> ProxyIdentity {
        let key = rcgen_key();
        let spiffe: meshlite_contract::SpiffeId = id.parse().unwrap();
        let leaf = ca
            .issue_workload(
                &key,
                &spiffe,
                std::time::Duration::from_secs(lifetime_s),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        ProxyIdentity {
            spiffe_id: id.into(),
            serial: String::new(),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            certificate_chain: leaf.chain_pem,
            trust_bundle: ca.bundle_pem().into(),
        }
    }

    fn rcgen_key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

    #[test]
    fn a_proxy_passes_only_with_a_current_certificate_for_its_identity() {
        let ca = Ca::generate_root("cluster.local").unwrap();
        let other = Ca::generate_root("cluster.local").unwrap();
        let now = OffsetDateTime::now_utc();
        let id = issued(&ca, ID, 3600);
        let good = proxy_line("cart-0", true, ID, Ok(&id), Some(ca.bundle_pem()), now);
        assert_eq!(good.status, Status::Ok, "{good}");
        assert!(good.message.contains("expires"), "{good}");

        let wrong_bundle = proxy_line("cart-0", true, ID, Ok(&id), Some(other.bundle_pem()), now);
        assert_eq!(wrong_bundle.status, Status::Fail, "{wrong_bundle}");
        let wrong_id = proxy_line(
            "cart-0",
            true,
            "spiffe://cluster.local/ns/shop/sa/web",
            Ok(&id),
            Some(ca.bundle_pem()),
            now,
        );
        assert_eq!(wrong_id.status, Status::Fail, "{wrong_id}");
        let later = now + time::Duration::minutes(50);
        assert_eq!(
            proxy_line("cart-0", true, ID, Ok(&id), Some(ca.bundle_pem()), later).status,
            Status::Warn
        );
        let expired = now + time::Duration::hours(2);
        assert_eq!(
            proxy_line("cart-0", true, ID, Ok(&id), Some(ca.bundle_pem()), expired).status,
            Status::Fail
        );
        assert_eq!(
            proxy_line("cart-0", false, ID, Ok(&id), Some(ca.bundle_pem()), now).status,
            Status::Fail
        );
        assert_eq!(
            proxy_line(
                "cart-0",
                true,
                ID,
                Err("503".into()),
                Some(ca.bundle_pem()),
                now
            )
            .status,
            Status::Fail
        );
    }
}
