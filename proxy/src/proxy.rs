//! The proxy as one value: bind its listeners, then run until shutdown.
//!
//! [`Proxy::bind`] binds every listener (so tests and the local runner learn the
//! real addresses of ephemeral ports), and [`Bound::run`] accepts until the
//! shutdown future resolves, then drains: it reports not-ready, keeps accepting
//! for the drain-accept window (connections kube-proxy routes here until the
//! endpoint's removal is everywhere), stops accepting, lets established
//! connections finish until the drain timeout, and then closes whatever is left.

use crate::config::{Config, CredSource, PolicySource};
use crate::metrics::{Direction, Metrics};
use crate::outbound::FallbackCache;
use crate::policy::PolicyStore;
use crate::relay::{RelayEnd, RelayStats};
use crate::tls::CredStore;
use meshlite_contract::{AllowList, SpiffeId};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a connection handler needs, shared.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub config: Config,
    pub creds: CredStore,
    pub policy: PolicyStore,
    pub metrics: Arc<Metrics>,
    pub fallback: FallbackCache,
    pub naming: crate::naming::Naming,
    pub limiter: Arc<Semaphore>,
    /// The most connections open at once, for [`crate::trim`].
    pub open_peak: Arc<crate::trim::OpenPeak>,
    pub draining: AtomicBool,
    pub preserve: crate::client_addr::Preserve,
}

/// What an accepted connection's task hands to the task that relays it (see
/// [`ConnLog::relay`]): the connection's permit, the tracker that the drain
/// waits on, and the hard stop.
#[derive(Debug)]
struct Handoff {
    ctx: Arc<Ctx>,
    permit: OwnedSemaphorePermit,
    conns: TaskTracker,
    hard_stop: CancellationToken,
}

tokio::task_local! {
    /// Set for each task [`accept_loop`] spawns; taken once, by the relay.
    static HANDOFF: std::cell::RefCell<Option<Handoff>>;
}

impl Handoff {
    /// This task's hand-off, if it is an accepted connection's and the relay
    /// has not taken it yet.
    fn take() -> Option<Handoff> {
        HANDOFF.try_with(|h| h.borrow_mut().take()).ok().flatten()
    }
}

/// The one log line written when a connection closes.
#[derive(Debug, Clone)]
pub(crate) struct ConnLog {
    pub direction: Direction,
    pub client: SocketAddr,
    pub target: SocketAddr,
    pub peer: Option<SpiffeId>,
    /// `mtls`, or the reason the connection is plaintext.
    pub tls: &'static str,
    pub resumed: bool,
    pub started: Instant,
}

impl ConnLog {
    pub fn new(direction: Direction, client: SocketAddr, target: SocketAddr) -> Self {
        ConnLog {
            direction,
            client,
            target,
            peer: None,
            tls: "none",
            resumed: false,
            started: Instant::now(),
        }
    }

    /// Relays between the two legs, counting the connection as open meanwhile,
    /// and writes the close log line.
    ///
    /// On a connection accepted by [`accept_loop`], the relay runs in a task
    /// of its own, which takes over the connection's permit, its place in the
    /// drain and the hard stop, and this returns at once: the accepting
    /// task, sized for the handshake and the naming lookups (about 8 KiB), ends,
    /// and a held connection keeps only the relay's task (about 2 KiB: the
    /// two legs and the relay's state). Elsewhere (tests) it relays in place.
    pub async fn relay<C, S>(&self, mut client: C, mut server: S, ctx: &Ctx)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Some(handoff) = Handoff::take() else {
            self.run(&mut client, &mut server, ctx).await;
            return;
        };
        let log = self.clone();
        let conns = handoff.conns.clone();
        conns.spawn(async move {
            let Handoff {
                ctx,
                permit,
                hard_stop,
                ..
            } = handoff;
            // The legs are used where the task holds them, not moved again.
            tokio::select! {
                () = log.run(&mut client, &mut server, &ctx) => {}
                () = hard_stop.cancelled() => {}
            }
            drop(permit);
        });
    }

    async fn run<C, S>(&self, client: &mut C, server: &mut S, ctx: &Ctx)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let labels = crate::metrics::ConnLabels {
            direction: self.direction,
            tls: if self.tls == "mtls" {
                "mtls"
            } else {
                "plaintext"
            },
        };
        ctx.metrics.conn_opened.get_or_create(&labels).inc();
        let stats = crate::relay::relay(
            client,
            server,
            self.direction,
            &ctx.metrics,
            ctx.config.timeouts.idle,
        )
        .await;
        ctx.metrics.conn_closed.get_or_create(&labels).inc();
        self.finish(stats);
    }

    /// Records an established mTLS connection with its peer.
    pub fn mtls(&mut self, metrics: &Metrics, peer: Option<SpiffeId>, resumed: bool) {
        self.tls = "mtls";
        self.resumed = resumed;
        metrics
            .mtls_peers
            .get_or_create(&crate::metrics::PeerLabels {
                direction: self.direction,
                peer_identity: peer
                    .as_ref()
                    .map_or_else(|| "unknown".to_string(), ToString::to_string),
                resumed,
            })
            .inc();
        self.peer = peer;
    }

    fn finish(&self, stats: RelayStats) {
        let end = match &stats.end {
            RelayEnd::Closed => "closed".to_string(),
            RelayEnd::Idle => "idle_timeout".to_string(),
            RelayEnd::Error(e) => format!("error: {e}"),
        };
        tracing::debug!(
            direction = ?self.direction,
            client = %self.client,
            target = %self.target,
            peer = self.peer.as_ref().map(tracing::field::display),
            tls = self.tls,
            resumed = self.resumed,
            bytes_from_client = stats.from_client,
            bytes_from_server = stats.from_server,
            duration_ms = self.started.elapsed().as_millis() as u64,
            end,
            "connection closed"
        );
    }
}

/// Where an accepted connection goes: the fixed target (explicit mode) or the
/// original destination. `None` (counted and logged) when the connection was
/// not redirected — proxying it would loop back to ourselves — or the original
/// destination cannot be read.
pub(crate) fn resolve_target(
    target: crate::config::Target,
    tcp: &TcpStream,
    client: SocketAddr,
    listener: SocketAddr,
    ctx: &Ctx,
    direction: Direction,
) -> Option<SocketAddr> {
    match target {
        crate::config::Target::Fixed(addr) => Some(addr),
        crate::config::Target::OriginalDst => match crate::orig_dst::original_dst(tcp) {
            Ok(dst) if dst.0 == listener => {
                ctx.metrics.refuse(direction, "no_original_dst");
                tracing::debug!(%client, %listener, "refused a connection that was not redirected");
                None
            }
            Ok(dst) => Some(dst.0),
            Err(e) => {
                ctx.metrics.refuse(direction, "no_original_dst");
                tracing::warn!(%client, error = %e, "cannot read SO_ORIGINAL_DST");
                None
            }
        },
    }
}

/// Connects to `target` with the connect timeout and TCP_NODELAY.
pub(crate) async fn connect(
    target: SocketAddr,
    ctx: &Ctx,
    direction: Direction,
) -> Option<TcpStream> {
    let attempt = async {
        let sock = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.set_nodelay(true)?;
        sock.connect(target).await
    };
    match tokio::time::timeout(ctx.config.timeouts.connect, attempt).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            ctx.metrics.refuse(direction, "connect_failed");
            tracing::debug!(%target, error = %e, "connect failed");
            None
        }
        Err(_) => {
            ctx.metrics.refuse(direction, "connect_timeout");
            tracing::debug!(%target, "connect timed out");
            None
        }
    }
}

/// A configured proxy, not yet listening.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    creds: CredStore,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// Creates a proxy. Credentials come from `config.creds`, or, for
    /// [`CredSource::External`], from whoever holds a clone of [`Proxy::creds`].
    pub fn new(config: Config) -> Self {
        let creds = CredStore::with_options(config.trust_domain.clone(), config.tls).for_roles(
            crate::tls::Roles {
                inbound: config.inbound.is_some(),
                outbound: config.outbound.is_some(),
            },
        );
        Proxy {
            config,
            creds,
            metrics: Arc::new(Metrics::new()),
        }
    }

    pub fn creds(&self) -> &CredStore {
        &self.creds
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Binds every configured listener.
    pub async fn bind(self) -> std::io::Result<Bound> {
        let mut outbound = Vec::new();
        if let Some(cfg) = &self.config.outbound {
            for addr in &cfg.listen {
                outbound.push(bind(*addr).await?);
            }
        }
        let mut inbound = Vec::new();
        if let Some(cfg) = &self.config.inbound {
            for addr in &cfg.listen {
                inbound.push(bind(*addr).await?);
            }
        }
        let admin = match self.config.admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let policy = PolicyStore::new(self.config.trust_domain.clone(), AllowList::default());
        crate::reload::apply_policy(&self.config.policy, &policy, &self.metrics);
        self.metrics
            .max_connections
            .set(i64::try_from(self.config.max_connections).unwrap_or(i64::MAX));
        let ctx = Arc::new(Ctx {
            fallback: FallbackCache::new(self.config.fallback_ttl),
            naming: crate::naming::Naming::new(&self.config.naming),
            limiter: Arc::new(Semaphore::new(self.config.max_connections)),
            open_peak: Arc::default(),
            creds: self.creds,
            policy,
            metrics: self.metrics,
            draining: AtomicBool::new(false),
            preserve: crate::client_addr::Preserve::new(
                self.config
                    .inbound
                    .as_ref()
                    .is_some_and(|i| i.preserve_client_address),
            ),
            config: self.config,
        });
        if ctx.config.inbound.is_some() {
            ctx.preserve
                .check(&ctx.metrics)
                .map_err(std::io::Error::other)?;
        }
        Ok(Bound {
            ctx,
            outbound,
            inbound,
            admin,
        })
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let s = TcpSocket::new_v6()?;
        // Keep [::] listeners IPv6-only so they can sit beside an IPv4 one.
        socket2::SockRef::from(&s).set_only_v6(true)?;
        s
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    sock.listen(1024)
}

/// A proxy with its listeners bound.
#[derive(Debug)]
pub struct Bound {
    ctx: Arc<Ctx>,
    outbound: Vec<TcpListener>,
    inbound: Vec<TcpListener>,
    admin: Option<TcpListener>,
}

fn addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}

impl Bound {
    pub fn outbound_addrs(&self) -> Vec<SocketAddr> {
        addrs(&self.outbound)
    }

    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        addrs(&self.inbound)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn creds(&self) -> &CredStore {
        &self.ctx.creds
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    pub fn policy(&self) -> &PolicyStore {
        &self.ctx.policy
    }

    /// Runs until `shutdown` resolves (or `/shutdown` is called on the admin
    /// port), then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let ctx = self.ctx;
        let stop_accepting = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let conns = TaskTracker::new();
        let background = TaskTracker::new();

        match &ctx.config.creds {
            CredSource::Files { cert, key, bundle } => {
                background.spawn(crate::reload::watch_credentials(
                    [cert.clone(), key.clone(), bundle.clone()],
                    ctx.creds.clone(),
                    ctx.metrics.clone(),
                    ctx.config.reload_interval,
                ));
            }
            CredSource::Certd(client) => {
                background.spawn(crate::identity_client::run(
                    client.clone(),
                    ctx.creds.clone(),
                    ctx.metrics.clone(),
                    ctx.config.reload_interval,
                ));
            }
            CredSource::External => {}
        }
        if matches!(
            ctx.config.policy,
            PolicySource::File(_) | PolicySource::Annotations(_)
        ) {
            background.spawn(crate::reload::watch_policy(
                ctx.config.policy.clone(),
                ctx.policy.clone(),
                ctx.metrics.clone(),
                ctx.config.reload_interval,
            ));
        }
        background.spawn(crate::trim::run(
            ctx.limiter.clone(),
            ctx.config.max_connections,
            ctx.open_peak.clone(),
        ));
        if let Some(admin) = self.admin {
            let admin_ctx = ctx.clone();
            let stop = stop_accepting.clone();
            background.spawn(crate::admin::serve(admin, admin_ctx, stop));
        }
        for (listeners, direction) in [
            (self.outbound, Direction::Outbound),
            (self.inbound, Direction::Inbound),
        ] {
            for l in listeners {
                background.spawn(accept_loop(
                    l,
                    ctx.clone(),
                    conns.clone(),
                    stop_accepting.clone(),
                    hard_stop.clone(),
                    direction,
                ));
            }
        }

        let signalled = tokio::select! {
            () = shutdown => { tracing::info!("shutdown requested"); true }
            () = stop_accepting.cancelled() => { tracing::info!("shutdown requested on the admin port"); false }
        };
        let drain_started = tokio::time::Instant::now();
        // Not ready from here on, so the endpoint is withdrawn; connections
        // routed here meanwhile are still accepted for the window.
        ctx.draining.store(true, Ordering::SeqCst);
        let window = ctx
            .config
            .timeouts
            .drain_accept
            .min(ctx.config.timeouts.drain);
        if signalled && !window.is_zero() {
            tracing::info!(
                ?window,
                "not ready; still accepting while the endpoint is withdrawn"
            );
            tokio::time::sleep(window).await;
        }
        stop_accepting.cancel();
        conns.close();
        let open = conns.len();
        if open > 0 {
            tracing::info!(open, drain = ?ctx.config.timeouts.drain, "draining established connections");
        }
        let left = ctx
            .config
            .timeouts
            .drain
            .saturating_sub(drain_started.elapsed());
        if tokio::time::timeout(left, conns.wait()).await.is_err() {
            tracing::warn!(
                open = conns.len(),
                "drain deadline passed; closing the remaining connections"
            );
        }
        hard_stop.cancel();
        conns.wait().await;
        background.close();
        tracing::info!("proxy stopped");
    }
}

/// Accepts until told to stop; each connection runs in its own task, bounded by
/// the shared connection limit.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    conns: TaskTracker,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    direction: Direction,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off briefly rather than spin.
                tracing::warn!(%local, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.limiter.clone().try_acquire_owned() else {
            ctx.metrics.refuse(direction, "max_connections");
            tracing::warn!(%client, max = ctx.config.max_connections, "connection limit reached; refusing");
            // Reset rather than FIN, so the client fails fast instead of waiting.
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
            drop(tcp);
            continue;
        };
        ctx.open_peak.note(
            ctx.config
                .max_connections
                .saturating_sub(ctx.limiter.available_permits()),
        );
        let ctx = ctx.clone();
        let hard_stop = hard_stop.clone();
        // The permit stays with the connection: in this task until the
        // relay's task takes it over, or is freed when this one ends.
        let handoff = Handoff {
            ctx: ctx.clone(),
            permit,
            conns: conns.clone(),
            hard_stop: hard_stop.clone(),
        };
        conns.spawn(
            HANDOFF.scope(std::cell::RefCell::new(Some(handoff)), async move {
                let handle = async {
                    match direction {
                        Direction::Outbound => {
                            crate::outbound::handle(tcp, client, local, &ctx).await
                        }
                        Direction::Inbound => {
                            crate::inbound::handle(tcp, client, local, &ctx).await
                        }
                    }
                };
                tokio::select! {
                    () = handle => {}
                    () = hard_stop.cancelled() => {}
                }
            }),
        );
    }
}
