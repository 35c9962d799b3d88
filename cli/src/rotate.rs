//! `kubectl meshlite ca rotate`: replaces the mesh CA with overlap, in four
//! steps, so no connection ever meets a certificate its peer does not trust:
//!
//! 1. **Add the new root to the bundle.** A new root is generated and kept in
//!    Secret `<ca-secret>-next`; its certificate is appended to `ca.crt` of
//!    the CA Secret. certd copies the bundle to every labelled namespace and
//!    to the webhook's `caBundle`.
//! 2. **Wait until every proxy trusts both roots**: every trust-bundle
//!    ConfigMap and `caBundle` holds the new root, and so does the bundle
//!    every ready proxy reports on `/identity`.
//! 3. **Sign with the new root**: `tls.crt`/`tls.key` of the CA Secret become
//!    the new root's. certd picks it up within its reconcile interval, and new
//!    leaves (and the injector's and certd's serving certificates) chain to it.
//!    The time is recorded on the `-next` Secret.
//! 4. **Remove the old root** once no leaf it signed can still be valid: the
//!    longest leaf lifetime (certd's `CERTD_LIFETIME_SECONDS`) plus certd's
//!    reconcile interval and a minute of clock skew after step 3, and every
//!    ready proxy and the injector present a certificate from the new root.
//!    Then the `-next` Secret is deleted: the rotation is over.
//!
//! The state lives in the cluster (the two Secrets), so every run works out
//! where the rotation is and goes on from there: a step already done is not
//! done again, and a run stopped at any point (a timeout, Ctrl-C, a crash)
//! resumes with the next `kubectl meshlite ca rotate`. Writes carry the
//! resourceVersion they read, so two runs at once cannot both apply a step.

use crate::kubeapi::{
    Settings, labelled_namespaces, meshed_pods, namespace_bundle, proxy_identity, proxy_ready,
};
use crate::pem::{certs, contains_all, fingerprint, fingerprints, relative, rfc3339, to_pem};
use crate::report::{EXIT_ERROR, EXIT_FAILED, EXIT_IN_PROGRESS, EXIT_OK};
use anyhow::{Context as _, anyhow};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use meshlite_certd::ca::Ca;
use meshlite_certd::kube::bootstrap::{CA_CRT, CaSecretRef, TLS_CRT, TLS_KEY, ca_from_secret};
use meshlite_contract::WEBHOOK_CONFIGURATION;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use time::OffsetDateTime;

/// Suffix of the Secret that holds the new root during a rotation.
pub const NEXT_SUFFIX: &str = "-next";
/// On the `-next` Secret: the SHA-256 of each root the bundle held when the
/// rotation began, comma-separated; step 4 removes exactly these.
pub const OLD_ROOTS_ANNOTATION: &str = "meshlite.io/rotation-old-roots";
/// On the `-next` Secret: when step 3 was applied (RFC 3339).
pub const SIGNING_SINCE_ANNOTATION: &str = "meshlite.io/rotation-signing-since";
/// Added to the wait of step 4 for clocks that disagree.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The CA Secret as the rotation sees it.
#[derive(Debug, Clone)]
pub struct Current {
    pub cert_pem: String,
    /// The effective bundle: `ca.crt`, or the chain's last certificate.
    pub bundle_pem: String,
}

/// The `-next` Secret.
#[derive(Debug, Clone)]
pub struct Next {
    pub cert_pem: String,
    pub key_pem: String,
    pub old_roots: BTreeSet<String>,
    pub signing_since: Option<OffsetDateTime>,
}

impl Next {
    /// The new root (the last certificate of its `tls.crt`), PEM.
    pub fn root_pem(&self) -> Result<String, String> {
        let chain = certs(&self.cert_pem)?;
        Ok(to_pem(&chain[chain.len() - 1]))
    }
}

/// What the rotation does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing in progress: generate the new root.
    Generate,
    /// Step 1.
    AddRoot,
    /// Step 2, then step 3.
    AwaitTrustThenSwitch,
    /// Step 3 is applied but its time is not recorded (a run stopped between
    /// the two writes): record now, which only makes step 4 wait longer.
    RecordSigningSince,
    /// Step 4's wait: no old leaf can be valid before `until`.
    AwaitOldLeaves { until: OffsetDateTime },
    /// Step 4.
    RemoveOldRoots,
    /// The bundle holds only the new root: delete `-next`.
    Finish,
}

/// The timing that step 4 depends on.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The longest lifetime certd gives a leaf.
    pub lifetime: Duration,
    /// How often certd re-reads the CA Secret.
    pub reconcile: Duration,
}

impl Timing {
    /// When no leaf signed before `since` (plus certd's pick-up delay) is valid.
    pub fn old_leaves_gone(&self, since: OffsetDateTime) -> OffsetDateTime {
        since + self.lifetime + self.reconcile + CLOCK_SKEW
    }
}

/// Decides the next step from the two Secrets. Pure, so every resume point
/// is unit-tested.
pub fn next_step(
    current: &Current,
    next: Option<&Next>,
    now: OffsetDateTime,
    timing: Timing,
) -> Result<Step, String> {
    let Some(next) = next else {
        return Ok(Step::Generate);
    };
    let root = next.root_pem()?;
    if !contains_all(&current.bundle_pem, &root) {
        return Ok(Step::AddRoot);
    }
    let signing_new = crate::pem::same_certs(&current.cert_pem, &next.cert_pem);
    if !signing_new {
        return Ok(Step::AwaitTrustThenSwitch);
    }
    let Some(since) = next.signing_since else {
        return Ok(Step::RecordSigningSince);
    };
    let held = fingerprints(&current.bundle_pem)?;
    if held.is_disjoint(&next.old_roots) {
        return Ok(Step::Finish);
    }
    let until = timing.old_leaves_gone(since);
    if now < until {
        return Ok(Step::AwaitOldLeaves { until });
    }
    Ok(Step::RemoveOldRoots)
}

/// The bundle without the old roots; an error if nothing would be left.
pub fn without_old_roots(bundle_pem: &str, old: &BTreeSet<String>) -> Result<String, String> {
    let kept: String = certs(bundle_pem)?
        .iter()
        .filter(|c| !old.contains(&fingerprint(c)))
        .map(|c| to_pem(c))
        .collect();
    if kept.is_empty() {
        return Err("removing the old roots would leave the bundle empty".into());
    }
    Ok(kept)
}

/// The plan `--dry-run` prints: every step, marked done, next or pending.
pub fn plan(step: &Step, timing: Timing, now: OffsetDateTime) -> String {
    let order = |s: &Step| match s {
        Step::Generate | Step::AddRoot => 1,
        Step::AwaitTrustThenSwitch => 2,
        Step::RecordSigningSince => 3,
        Step::AwaitOldLeaves { .. } | Step::RemoveOldRoots => 4,
        Step::Finish => 5,
    };
    let at = order(step);
    let mark = |n| {
        if n < at {
            "done   "
        } else if n == at {
            "next   "
        } else {
            "pending"
        }
    };
    let lifetime = timing.lifetime.as_secs();
    let wait4 = match step {
        Step::AwaitOldLeaves { until } => format!(
            " (not before {}, {})",
            rfc3339(*until),
            relative(*until, now)
        ),
        _ => format!(
            " (waits {lifetime} s of leaf lifetime + {} s reconcile + {} s clock skew after step 3)",
            timing.reconcile.as_secs(),
            CLOCK_SKEW.as_secs()
        ),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "[{}] 1. add a new root to the trust bundle (generated now, kept in Secret <ca-secret>{NEXT_SUFFIX})\n",
        mark(1)
    ));
    out.push_str(&format!(
        "[{}] 2. wait until every trust-bundle ConfigMap, the webhook's caBundle and every ready proxy trust both roots\n",
        mark(2)
    ));
    out.push_str(&format!("[{}] 3. sign with the new root\n", mark(3)));
    out.push_str(&format!(
        "[{}] 4. remove the old root once no leaf it signed can be valid{wait4}, and every ready proxy presents a leaf from the new root\n",
        mark(4)
    ));
    if at == 5 {
        out.push_str("[next   ] the bundle holds only the new root: delete the -next Secret; the rotation is over\n");
    }
    out
}

/// Options of `ca rotate`.
#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    /// How long this run may wait before it stops (resumable).
    pub timeout: Duration,
    /// Overrides certd's configured leaf lifetime.
    pub lifetime: Option<Duration>,
    pub reconcile: Duration,
    pub poll: Duration,
}

struct Rotation<'a> {
    client: &'a kube::Client,
    settings: Settings,
    secrets: Api<Secret>,
    at: CaSecretRef,
    next_name: String,
}

fn annotate(meta: &mut ObjectMeta, key: &str, value: String) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value);
}

fn data_str(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

impl Rotation<'_> {
    async fn read(&self) -> anyhow::Result<(Secret, Current, Option<(Secret, Next)>)> {
        let secret = self.secrets.get_opt(&self.at.name).await?.ok_or_else(|| {
            anyhow!(
                "Secret {}/{} not found: is meshlite installed?",
                self.at.namespace,
                self.at.name
            )
        })?;
        let ca = ca_from_secret(&secret, &self.at)
            .map_err(|e| anyhow!("the CA Secret is unusable: {e}"))?;
        let current = Current {
            cert_pem: ca.cert_pem().to_string(),
            bundle_pem: ca.bundle_pem().to_string(),
        };
        let next = match self.secrets.get_opt(&self.next_name).await? {
            None => None,
            Some(s) => {
                let cert_pem = data_str(&s, TLS_CRT)
                    .ok_or_else(|| anyhow!("Secret {} has no {TLS_CRT}", self.next_name))?;
                let key_pem = data_str(&s, TLS_KEY)
                    .ok_or_else(|| anyhow!("Secret {} has no {TLS_KEY}", self.next_name))?;
                let ann = s.metadata.annotations.clone().unwrap_or_default();
                let old_roots = ann
                    .get(OLD_ROOTS_ANNOTATION)
                    .map(|v| {
                        v.split(',')
                            .filter(|f| !f.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let signing_since = match ann.get(SIGNING_SINCE_ANNOTATION) {
                    None => None,
                    Some(t) => Some(
                        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                            .with_context(|| {
                                format!("annotation {SIGNING_SINCE_ANNOTATION} {t:?}")
                            })?,
                    ),
                };
                Some((
                    s,
                    Next {
                        cert_pem,
                        key_pem,
                        old_roots,
                        signing_since,
                    },
                ))
            }
        };
        Ok((secret, current, next))
    }

    async fn generate(&self, current: &Current) -> anyhow::Result<()> {
        let ca = Ca::generate_root(&self.settings.trust_domain)
            .map_err(|e| anyhow!("generating a root: {e}"))?;
        let old: Vec<String> = fingerprints(&current.bundle_pem)
            .map_err(|e| anyhow!(e))?
            .into_iter()
            .collect();
        let mut meta = ObjectMeta {
            name: Some(self.next_name.clone()),
            namespace: Some(self.at.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "meshlite".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        annotate(&mut meta, OLD_ROOTS_ANNOTATION, old.join(","));
        let secret = Secret {
            metadata: meta,
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    (
                        TLS_CRT.to_string(),
                        ByteString(ca.cert_pem().as_bytes().to_vec()),
                    ),
                    (
                        TLS_KEY.to_string(),
                        ByteString(ca.key_pem().as_bytes().to_vec()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                println!(
                    "generated the new root ({}); kept in Secret {}/{}",
                    subject(ca.cert_pem()),
                    self.at.namespace,
                    self.next_name
                );
                Ok(())
            }
            // Another run got there first; go on with its root.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e).context("creating the -next Secret"),
        }
    }

    /// Writes `data` over the CA Secret's keys, guarded by its resourceVersion.
    async fn update_ca(&self, mut secret: Secret, set: &[(&str, &str)]) -> anyhow::Result<bool> {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in set {
            data.insert((*k).to_string(), ByteString(v.as_bytes().to_vec()));
        }
        match self
            .secrets
            .replace(&self.at.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e).context("updating the CA Secret"),
        }
    }

    /// Step 2's condition: what does not trust `root` yet (empty: done).
    async fn not_yet_trusting(&self, root: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let mut waiting = Vec::new();
        let mut skipped = Vec::new();
        for ns in labelled_namespaces(self.client).await? {
            match namespace_bundle(self.client, &ns).await? {
                Some(b) if contains_all(&b, root) => {}
                _ => waiting.push(format!("ConfigMap {ns}/meshlite-trust-bundle")),
            }
            for pod in meshed_pods(self.client, &ns).await? {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if !proxy_ready(&pod) {
                    skipped.push(format!("{ns}/{name}"));
                    continue;
                }
                match proxy_identity(self.client, &ns, &name).await {
                    Ok(id) if contains_all(&id.trust_bundle, root) => {}
                    Ok(_) => waiting.push(format!("proxy {ns}/{name}")),
                    Err(e) => waiting.push(format!("proxy {ns}/{name} ({e:#})")),
                }
            }
        }
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(hook) = hooks.get_opt(WEBHOOK_CONFIGURATION).await? {
            for h in hook.webhooks.unwrap_or_default() {
                let ca = h
                    .client_config
                    .ca_bundle
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned());
                if !ca.is_some_and(|ca| contains_all(&ca, root)) {
                    waiting.push(format!("caBundle of webhook {}", h.name));
                }
            }
        }
        Ok((waiting, skipped))
    }

    /// Step 4's condition: what still presents a leaf the new root did not sign.
    async fn not_yet_renewed(&self, root: &str) -> anyhow::Result<Vec<String>> {
        let now = OffsetDateTime::now_utc();
        let mut waiting = Vec::new();
        for ns in labelled_namespaces(self.client).await? {
            for pod in meshed_pods(self.client, &ns).await? {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if !proxy_ready(&pod) {
                    continue;
                }
                match proxy_identity(self.client, &ns, &name).await {
                    Ok(id)
                        if meshlite_certd::ca::verify_workload_chain(
                            &id.certificate_chain,
                            root,
                            now,
                        )
                        .is_ok() => {}
                    Ok(_) => waiting.push(format!("proxy {ns}/{name}")),
                    Err(e) => waiting.push(format!("proxy {ns}/{name} ({e:#})")),
                }
            }
        }
        let injector = self
            .secrets
            .get_opt(meshlite_certd::kube::webhook_cert::INJECTOR_SECRET)
            .await?;
        if let Some(chain) = injector.as_ref().and_then(|s| data_str(s, TLS_CRT))
            && !serving_chain_verifies(&chain, root)
        {
            waiting.push("the injector's serving certificate".into());
        }
        Ok(waiting)
    }
}

/// Whether a serving chain (leaf first) verifies against `root` for serverAuth.
fn serving_chain_verifies(chain_pem: &str, root_pem: &str) -> bool {
    let (Ok(chain), Ok(roots)) = (certs(chain_pem), certs(root_pem)) else {
        return false;
    };
    let Ok(anchors) = roots
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(&chain[0]) else {
        return false;
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

fn subject(pem: &str) -> String {
    certs(pem)
        .ok()
        .and_then(|c| crate::pem::info(&c[0]).ok())
        .map(|i| i.subject)
        .unwrap_or_default()
}

/// Runs (or with `dry_run`, shows) the rotation from wherever it is; returns
/// the exit code: 0 done, 3 stopped at a wait (run again to resume).
pub async fn rotate(client: &kube::Client, system_ns: &str, opts: &Options) -> anyhow::Result<u8> {
    let settings = Settings::load(client, system_ns).await?;
    let at = CaSecretRef {
        namespace: settings.ca_namespace.clone(),
        name: settings.ca_secret.clone(),
    };
    let timing = Timing {
        lifetime: opts.lifetime.unwrap_or(settings.lifetime),
        reconcile: opts.reconcile,
    };
    let r = Rotation {
        client,
        secrets: Api::namespaced(client.clone(), &at.namespace),
        next_name: format!("{}{NEXT_SUFFIX}", at.name),
        at,
        settings,
    };
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut last_wait = String::new();
    loop {
        let (secret, current, next) = r.read().await?;
        let now = OffsetDateTime::now_utc();
        let step = next_step(&current, next.as_ref().map(|(_, n)| n), now, timing)
            .map_err(|e| anyhow!(e))?;
        if opts.dry_run {
            print!("{}", plan(&step, timing, now));
            println!("(dry run: nothing was changed)");
            return Ok(EXIT_OK);
        }
        let waited = |what: String, last: &mut String| {
            if *last != what {
                println!("{what}");
                *last = what;
            }
        };
        match step {
            Step::Generate => {
                println!(
                    "step 1/4: starting a rotation of the CA in Secret {}/{}",
                    r.at.namespace, r.at.name
                );
                r.generate(&current).await?;
            }
            Step::AddRoot => {
                let (_, n) = next.as_ref().ok_or_else(|| anyhow!("no -next Secret"))?;
                let root = n.root_pem().map_err(|e| anyhow!(e))?;
                let bundle = format!("{}{root}", current.bundle_pem);
                if r.update_ca(secret, &[(CA_CRT, &bundle)]).await? {
                    println!(
                        "step 1/4: added the new root to the trust bundle ({CA_CRT}); certd distributes it"
                    );
                }
            }
            Step::AwaitTrustThenSwitch => {
                let (_, n) = next.as_ref().ok_or_else(|| anyhow!("no -next Secret"))?;
                let root = n.root_pem().map_err(|e| anyhow!(e))?;
                let (waiting, skipped) = r.not_yet_trusting(&root).await?;
                if waiting.is_empty() {
                    if !skipped.is_empty() {
                        println!(
                            "step 2/4: not ready, so not asked (they read the bundle when they start): {}",
                            skipped.join(", ")
                        );
                    }
                    println!("step 2/4: every bundle and ready proxy trusts both roots");
                    if r.update_ca(secret, &[(TLS_CRT, &n.cert_pem), (TLS_KEY, &n.key_pem)])
                        .await?
                    {
                        println!(
                            "step 3/4: certd signs with the new root from its next reconcile pass"
                        );
                    }
                } else {
                    waited(
                        format!(
                            "step 2/4: waiting for {} to trust the new root",
                            waiting.join(", ")
                        ),
                        &mut last_wait,
                    );
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(stopped("step 2"));
                    }
                    tokio::time::sleep(opts.poll).await;
                }
            }
            Step::RecordSigningSince => {
                let (mut s, _) = next.ok_or_else(|| anyhow!("no -next Secret"))?;
                annotate(&mut s.metadata, SIGNING_SINCE_ANNOTATION, rfc3339(now));
                match r
                    .secrets
                    .replace(&r.next_name, &PostParams::default(), &s)
                    .await
                {
                    Ok(_) => println!(
                        "step 3/4: signing with the new root since {}; the old root can go at {}",
                        rfc3339(now),
                        rfc3339(timing.old_leaves_gone(now))
                    ),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e).context("recording the switch on the -next Secret"),
                }
            }
            Step::AwaitOldLeaves { until } => {
                let left = until - now;
                let stop_at = OffsetDateTime::now_utc() + (deadline - tokio::time::Instant::now());
                waited(
                    format!(
                        "step 4/4: leaves of the old root may be valid until {} ({}); waiting",
                        rfc3339(until),
                        relative(until, now)
                    ),
                    &mut last_wait,
                );
                if until > stop_at {
                    println!(
                        "step 4/4: that is past this run's --timeout; run `kubectl meshlite ca rotate` again after {}",
                        rfc3339(until)
                    );
                    return Ok(EXIT_IN_PROGRESS);
                }
                // Nothing it waits for can come sooner: sleep through, and
                // look at the Secrets again only when the wait is over.
                tokio::time::sleep(left.try_into().unwrap_or(opts.poll)).await;
            }
            Step::RemoveOldRoots => {
                let (_, n) = next.as_ref().ok_or_else(|| anyhow!("no -next Secret"))?;
                let root = n.root_pem().map_err(|e| anyhow!(e))?;
                let waiting = r.not_yet_renewed(&root).await?;
                if !waiting.is_empty() {
                    waited(
                        format!(
                            "step 4/4: waiting for {} to present a certificate from the new root",
                            waiting.join(", ")
                        ),
                        &mut last_wait,
                    );
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(stopped("step 4"));
                    }
                    tokio::time::sleep(opts.poll).await;
                    continue;
                }
                let kept =
                    without_old_roots(&current.bundle_pem, &n.old_roots).map_err(|e| anyhow!(e))?;
                if r.update_ca(secret, &[(CA_CRT, &kept)]).await? {
                    println!(
                        "step 4/4: removed the old root from the trust bundle; certd distributes it"
                    );
                }
            }
            Step::Finish => {
                match r
                    .secrets
                    .delete(&r.next_name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e).context("deleting the -next Secret"),
                }
                println!(
                    "rotation complete: the bundle holds only the new root ({})",
                    subject(&current.cert_pem)
                );
                return Ok(EXIT_OK);
            }
        }
    }
}

fn stopped(at: &str) -> u8 {
    println!("stopped at {at} (--timeout); run `kubectl meshlite ca rotate` again to resume");
    EXIT_IN_PROGRESS
}

/// Reports why a run stopped: 2 when the API server could not be used (the
/// rotation may simply be resumed), 1 when the rotation refused to go on.
pub fn refuse(e: &anyhow::Error) -> u8 {
    eprintln!("kubectl meshlite ca rotate: {e:#}");
    if e.chain().any(|c| c.downcast_ref::<kube::Error>().is_some()) {
        EXIT_ERROR
    } else {
        EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        lifetime: Duration::from_secs(600),
        reconcile: Duration::from_secs(30),
    };

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn roots() -> (Ca, Ca) {
        (
            Ca::generate_root("cluster.local").unwrap(),
            Ca::generate_root("cluster.local").unwrap(),
        )
    }

    fn next_of(new: &Ca, old: &Ca, since: Option<OffsetDateTime>) -> Next {
        Next {
            cert_pem: new.cert_pem().into(),
            key_pem: new.key_pem().into(),
            old_roots: fingerprints(old.bundle_pem()).unwrap(),
            signing_since: since,
        }
    }

    #[test]
    fn every_resume_point_leads_to_the_right_step() {
        let (old, new) = roots();
        let both = format!("{}{}", old.bundle_pem(), new.bundle_pem());
        let start = Current {
            cert_pem: old.cert_pem().into(),
            bundle_pem: old.bundle_pem().into(),
        };
        assert_eq!(next_step(&start, None, now(), TIMING), Ok(Step::Generate));
        let n = next_of(&new, &old, None);
        assert_eq!(
            next_step(&start, Some(&n), now(), TIMING),
            Ok(Step::AddRoot)
        );
        let added = Current {
            cert_pem: old.cert_pem().into(),
            bundle_pem: both.clone(),
        };
        assert_eq!(
            next_step(&added, Some(&n), now(), TIMING),
            Ok(Step::AwaitTrustThenSwitch)
        );
        let switched = Current {
            cert_pem: new.cert_pem().into(),
            bundle_pem: both.clone(),
        };
        assert_eq!(
            next_step(&switched, Some(&n), now(), TIMING),
            Ok(Step::RecordSigningSince)
        );
        let since = now();
        let n = next_of(&new, &old, Some(since));
        assert_eq!(
            next_step(
                &switched,
                Some(&n),
                since + time::Duration::seconds(60),
                TIMING
            ),
            Ok(Step::AwaitOldLeaves {
                until: since + time::Duration::seconds(690)
            })
        );
        assert_eq!(
            next_step(
                &switched,
                Some(&n),
                since + time::Duration::seconds(690),
                TIMING
            ),
            Ok(Step::RemoveOldRoots)
        );
        let done = Current {
            cert_pem: new.cert_pem().into(),
            bundle_pem: new.bundle_pem().into(),
        };
        assert_eq!(next_step(&done, Some(&n), since, TIMING), Ok(Step::Finish));
    }

    #[test]
    fn the_new_root_must_be_trusted_before_anything_else_even_if_someone_removed_it() {
        let (old, new) = roots();
        // Signing already switched, but the new root is no longer in the bundle.
        let broken = Current {
            cert_pem: new.cert_pem().into(),
            bundle_pem: old.bundle_pem().into(),
        };
        let n = next_of(&new, &old, Some(now()));
        assert_eq!(
            next_step(&broken, Some(&n), now(), TIMING),
            Ok(Step::AddRoot)
        );
    }

    #[test]
    fn removing_the_old_roots_keeps_the_others_and_never_empties_the_bundle() {
        let (old, new) = roots();
        let extra = Ca::generate_root("cluster.local").unwrap();
        let all = format!(
            "{}{}{}",
            old.bundle_pem(),
            new.bundle_pem(),
            extra.bundle_pem()
        );
        let old_fp = fingerprints(old.bundle_pem()).unwrap();
        let kept = without_old_roots(&all, &old_fp).unwrap();
        assert!(crate::pem::same_certs(
            &kept,
            &format!("{}{}", new.bundle_pem(), extra.bundle_pem())
        ));
        assert!(without_old_roots(old.bundle_pem(), &old_fp).is_err());
    }

    #[test]
    fn the_plan_marks_what_is_done_and_what_waits() {
        let now = now();
        let p = plan(&Step::Generate, TIMING, now);
        assert!(p.starts_with("[next   ] 1."), "{p}");
        assert!(p.contains("[pending] 4."), "{p}");
        assert!(p.contains("600 s of leaf lifetime"), "{p}");
        let until = now + time::Duration::seconds(300);
        let p = plan(&Step::AwaitOldLeaves { until }, TIMING, now);
        assert!(
            p.contains("[done   ] 1.") && p.contains("[done   ] 3."),
            "{p}"
        );
        assert!(p.contains("[next   ] 4.") && p.contains("in 5m"), "{p}");
    }

    #[test]
    fn the_wait_covers_the_lifetime_the_reconcile_and_the_skew() {
        let since = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(
            (TIMING.old_leaves_gone(since) - since).whole_seconds(),
            600 + 30 + 60
        );
    }

    #[test]
    fn a_serving_chain_is_checked_against_the_given_root_only() {
        let (old, new) = roots();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dns = ["meshlite-injector.meshlite-system.svc".to_string()];
        let from_old = old.issue_serving(&key, &dns, &[]).unwrap().chain_pem;
        let from_new = new.issue_serving(&key, &dns, &[]).unwrap().chain_pem;
        assert!(serving_chain_verifies(&from_new, new.bundle_pem()));
        assert!(!serving_chain_verifies(&from_old, new.bundle_pem()));
        assert!(!serving_chain_verifies("junk", new.bundle_pem()));
    }
}
