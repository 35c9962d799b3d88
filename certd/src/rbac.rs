//! What certd's ServiceAccount must be allowed to do, as the authorizer sees
//! it: one [`Permission`] per verb, resource and scope that the code calls.
//!
//! `deploy/rbac-certd.yaml` grants exactly this list (tests/tests/manifests.rs
//! checks that), and `kubectl meshlite check` asks the API server about each
//! entry with a SubjectAccessReview, so a Role edited by hand shows up as the
//! permission it broke rather than as a failed issuance later.

/// One request certd makes: `namespace` `None` is cluster scope (every
/// namespace, for namespaced resources), `name` `None` any object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// What breaks without it, for the hint.
    pub used_for: &'static str,
}

/// The names [`required`] depends on (certd's flags).
#[derive(Debug, Clone)]
pub struct Names {
    pub signer: String,
    pub ca_namespace: String,
    pub ca_secret: String,
    pub injector_secret: String,
    pub webhook: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            signer: meshlite_contract::SIGNER_NAME.into(),
            ca_namespace: meshlite_contract::SYSTEM_NAMESPACE.into(),
            ca_secret: meshlite_contract::CA_SECRET.into(),
            injector_secret: crate::kube::webhook_cert::INJECTOR_SECRET.into(),
            webhook: meshlite_contract::WEBHOOK_CONFIGURATION.into(),
        }
    }
}

/// Every permission certd needs with the built-in signer.
pub fn required(n: &Names) -> Vec<Permission> {
    let p = |verb, group, resource, subresource, name: Option<&str>, ns: Option<&str>, used_for| {
        Permission {
            verb,
            group,
            resource,
            subresource,
            name: name.map(str::to_string),
            namespace: ns.map(str::to_string),
            used_for,
        }
    };
    let ns = Some(n.ca_namespace.as_str());
    let csr = "certificatesigningrequests";
    let cert = "certificates.k8s.io";
    let mut out = vec![p(
        "create",
        "authentication.k8s.io",
        "tokenreviews",
        "",
        None,
        None,
        "verifying proxies' tokens",
    )];
    for verb in ["create", "get", "watch", "delete"] {
        out.push(p(verb, cert, csr, "", None, None, "the CSR flow"));
    }
    out.push(p(
        "update",
        cert,
        csr,
        "approval",
        None,
        None,
        "approving CSRs",
    ));
    out.push(p("update", cert, csr, "status", None, None, "signing CSRs"));
    for verb in ["approve", "sign"] {
        out.push(p(
            verb,
            cert,
            "signers",
            "",
            Some(&n.signer),
            None,
            "approving and signing with the mesh signer",
        ));
    }
    out.push(p(
        "list",
        "",
        "namespaces",
        "",
        None,
        None,
        "finding labelled namespaces",
    ));
    for verb in ["get", "create", "update"] {
        out.push(p(
            verb,
            "",
            "configmaps",
            "",
            None,
            None,
            "the trust-bundle ConfigMaps",
        ));
    }
    for verb in ["get", "patch"] {
        out.push(p(
            verb,
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            Some(&n.webhook),
            None,
            "the webhook's caBundle",
        ));
    }
    for resource in ["pods", "services"] {
        for verb in ["list", "watch"] {
            out.push(p(verb, "", resource, "", None, None, "secure naming"));
        }
    }
    for verb in ["list", "watch"] {
        out.push(p(
            verb,
            "discovery.k8s.io",
            "endpointslices",
            "",
            None,
            None,
            "secure naming",
        ));
    }
    out.push(p(
        "get",
        "",
        "secrets",
        "",
        Some(&n.ca_secret),
        ns,
        "loading the CA",
    ));
    out.push(p(
        "get",
        "",
        "secrets",
        "",
        Some(&n.injector_secret),
        ns,
        "the injector's serving certificate",
    ));
    out.push(p(
        "update",
        "",
        "secrets",
        "",
        Some(&n.injector_secret),
        ns,
        "renewing the injector's serving certificate",
    ));
    out.push(p(
        "create",
        "",
        "secrets",
        "",
        None,
        ns,
        "bootstrapping the CA and the injector's certificate",
    ));
    out
}
