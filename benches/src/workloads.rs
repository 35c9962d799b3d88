//! The workloads: bulk transfer, request/response, and connection churn.
//!
//! Each is bounded in time. Latencies go into HDR histograms (microseconds);
//! nothing is reported as a mean.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request size of the request/response workload.
pub const REQUEST: usize = 64;
/// Response size of the request/response workload.
pub const RESPONSE: usize = 1024;
/// Size of the repeating bulk pattern (1 MiB, not a power-of-two stride of
/// anything the proxies buffer, so misplaced bytes are caught).
const PATTERN: usize = (1 << 20) + 7;

/// First byte of every request/response request; the bulk pattern never
/// starts with it, so one server can tell the workloads apart.
const RR_MARK: u8 = 0xa5;

fn pattern() -> Arc<Vec<u8>> {
    let mut x: u32 = 0x9e37_79b9;
    let mut p: Vec<u8> = (0..PATTERN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    p[0] = 0;
    Arc::new(p)
}

/// Starts the server every workload talks to, on loopback, and returns its
/// address. See [`serve`].
pub async fn start_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(serve(l, None));
    Ok(addr)
}

/// The peer addresses a server saw, a count per IP: how the client-address
/// benchmark checks that each path is the one it claims to measure.
#[derive(Debug, Default)]
pub struct Peers(Mutex<BTreeMap<IpAddr, u64>>);

impl Peers {
    fn record(&self, ip: IpAddr) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ip)
            .or_default() += 1;
    }

    /// The addresses seen since the last call, with their connection counts.
    pub fn take(&self) -> BTreeMap<IpAddr, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Serves every workload on `l`, recording each connection's peer in `peers`.
///
/// A connection whose first byte is [`RR_MARK`] is request/response (64-byte
/// requests, 1 KiB answers); any other is bulk: the pattern is verified and, at
/// EOF, the server answers `[count: u64 LE][ok: u8]`.
pub async fn serve(l: TcpListener, peers: Option<Arc<Peers>>) {
    let pat = pattern();
    while let Ok((mut s, peer)) = l.accept().await {
        if let Some(p) = &peers {
            p.record(peer.ip());
        }
        let pat = pat.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).await.is_err() {
                return;
            }
            if first[0] == RR_MARK {
                rr_server(s).await;
            } else {
                bulk_sink(s, first[0], pat).await;
            }
        });
    }
}

async fn bulk_sink(mut s: TcpStream, first: u8, pat: Arc<Vec<u8>>) {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut count, mut ok) = (1u64, first == pat[0]);
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = (count % PATTERN as u64) as usize;
        let mut chunk = &buf[..n];
        while !chunk.is_empty() && ok {
            let take = chunk.len().min(PATTERN - off);
            ok &= chunk[..take] == pat[off..off + take];
            chunk = &chunk[take..];
            off = 0;
        }
        count += n as u64;
    }
    let mut ack = count.to_le_bytes().to_vec();
    ack.push(u8::from(ok));
    let _ = s.write_all(&ack).await;
}

async fn rr_server(mut s: TcpStream) {
    // The first byte of the first request was read by the dispatcher.
    let mut req = [0u8; REQUEST];
    let resp = [0x5au8; RESPONSE];
    let mut need = REQUEST - 1;
    while s.read_exact(&mut req[..need]).await.is_ok() {
        if s.write_all(&resp).await.is_err() {
            break;
        }
        need = REQUEST;
    }
}

/// Result of a bulk run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bulk {
    pub streams: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub gbit_per_s: f64,
}

/// Sends `total` bytes split over `streams` connections; every byte is verified.
pub async fn bulk(entry: SocketAddr, streams: usize, total: u64) -> anyhow::Result<Bulk> {
    let per = total / streams as u64;
    let pat = pattern();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let pat = pat.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(entry).await?;
            s.set_nodelay(true)?;
            let (mut r, mut w) = s.split();
            let send = async {
                let mut sent = 0u64;
                while sent < per {
                    let off = (sent % PATTERN as u64) as usize;
                    let n = ((per - sent) as usize).min(PATTERN - off).min(256 * 1024);
                    w.write_all(&pat[off..off + n]).await?;
                    sent += n as u64;
                }
                w.shutdown().await?;
                Ok::<_, std::io::Error>(())
            };
            let mut ack = [0u8; 9];
            let (sent, read) = tokio::join!(send, r.read_exact(&mut ack));
            sent?;
            read?;
            let count = u64::from_le_bytes(ack[..8].try_into()?);
            anyhow::ensure!(count == per, "server got {count} of {per} bytes");
            anyhow::ensure!(ack[8] == 1, "bulk data arrived corrupted");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes = per * streams as u64;
    Ok(Bulk {
        streams,
        bytes,
        seconds,
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
    })
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Result of a request/response or churn run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    pub concurrency: usize,
    /// Operations in the measured window.
    pub count: u64,
    /// Operations in the whole run, warm-up included: the proxies' CPU time
    /// is read over the whole run, so CPU per operation divides by this.
    pub ops_total: u64,
    pub per_second: f64,
    pub latency: Latency,
}

/// A client task: its latency histogram (measured window) and every
/// operation it made (warm-up included).
type ClientTask = tokio::task::JoinHandle<anyhow::Result<(Histogram<u64>, u64)>>;

/// Joins the client tasks and turns their histograms into one [`Rate`].
async fn merge(
    tasks: Vec<ClientTask>,
    concurrency: usize,
    measure: Duration,
) -> anyhow::Result<Rate> {
    let mut all = histogram();
    let mut ops_total = 0;
    for t in tasks {
        let (h, ops) = t.await??;
        all.add(h)?;
        ops_total += ops;
    }
    Ok(Rate {
        concurrency,
        count: all.len(),
        ops_total,
        per_second: all.len() as f64 / measure.as_secs_f64(),
        latency: Latency::of(&all),
    })
}

/// Persistent connections, each sending 64 B and reading 1 KiB in a loop.
pub async fn request_response(
    entry: SocketAddr,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Rate> {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut s = TcpStream::connect(entry).await?;
            s.set_nodelay(true)?;
            let req = [RR_MARK; REQUEST];
            let mut resp = [0u8; RESPONSE];
            let mut ops = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                s.write_all(&req).await?;
                s.read_exact(&mut resp).await?;
                ops += 1;
                if t >= start {
                    h.record(t.elapsed().as_micros().max(1) as u64)?;
                }
            }
            Ok::<_, anyhow::Error>((h, ops))
        }));
    }
    merge(tasks, concurrency, measure).await
}

/// A new connection per request; latency is the time to the first response byte.
pub async fn churn(
    entry: SocketAddr,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Rate> {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let req = [RR_MARK; REQUEST];
            let mut resp = [0u8; RESPONSE];
            let mut ops = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let mut s = TcpStream::connect(entry).await?;
                s.set_nodelay(true)?;
                s.write_all(&req).await?;
                s.read_exact(&mut resp[..1]).await?;
                let ttfb = t.elapsed();
                s.read_exact(&mut resp[1..]).await?;
                drop(s);
                ops += 1;
                if t >= start {
                    h.record(ttfb.as_micros().max(1) as u64)?;
                }
            }
            Ok::<_, anyhow::Error>((h, ops))
        }));
    }
    merge(tasks, concurrency, measure).await
}
