//! A fault-injecting TCP proxy for HTTP/1.1, run in the test process between the order service
//! and one of its dependencies (stock or payment). A test switches its [`FaultPlan`] at any time
//! through a [`ProxyHandle`]; each request then passes, or meets one fault, drawn from a seeded
//! RNG so that a run can be replayed from its seed.
//!
//! Faults, by what the caller can tell afterwards:
//! - [`Fault::Delay`]: the request is held before it is forwarded. Held beyond the caller's
//!   per-attempt timeout, the caller gives up and retries, while the held request is still
//!   delivered late — as a slow network would — and acted on after its sender stopped waiting.
//! - [`Fault::Drop`]: the client connection is closed before anything is forwarded. The request
//!   never reached the service, but the caller cannot know that: its connection was accepted.
//! - [`Fault::CutAfterSend`]: the request is forwarded, the service's whole answer is read, and
//!   the client connection is closed without a byte of it. The effect happened; the answer was
//!   lost. The nastiest case for a payment.
//! - [`Fault::CutMidResponse`]: as above, but the status line, the headers and half the body get
//!   through first, so the caller has seen a status and then loses the body.
//!
//! One request per connection. HTTP/1.1 keep-alive would carry many requests over one
//! connection, and the order service's client (reqwest) pools connections; a proxy that decided
//! per connection would then see only the first request of each. So the proxy parses the
//! request framing (head + `Content-Length` body: the services' client always sends a length),
//! forwards it with `Connection: close`, reads the service's answer to EOF (so any response
//! framing works), and returns it with `Connection: close` and closes. The client does not put
//! such a connection back in its pool and opens a fresh one for its next request, so every
//! request meets its own decision. The cost, one loopback connection per call, is negligible.
//!
//! A dependency that is down (killed) shows through the proxy as a connection that was accepted
//! and then closed, not as a refused connection: to the caller it "may have been sent". That is
//! the conservative reading and the one a load balancer in front of a service gives too. A test
//! that needs the other reading, a service down with nothing in front of it, closes the proxy's
//! port ([`ProxyHandle::close_port`]): connections are then refused, so the caller knows for
//! certain that its request never left.
//!
//! With concurrent requests the order in which they draw from the RNG depends on scheduling, so a
//! seed replays the same sequence of decisions, not necessarily the same request for each.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest request or response head the proxy accepts; the services' are a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;
/// How long the proxy waits for the service to connect, and then to answer.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const UPSTREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the proxy waits for a client to send its request once connected.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Hold the request this long, then forward it (even if the client has given up).
    Delay(Duration),
    /// Close the client connection before forwarding anything.
    Drop,
    /// Forward, read the whole answer, close the client connection without sending any of it.
    CutAfterSend,
    /// Forward, send the answer's head and half its body, then close.
    CutMidResponse,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Delay(_) => "delay",
            Fault::Drop => "drop",
            Fault::CutAfterSend => "cut-after-send",
            Fault::CutMidResponse => "cut-mid-response",
        }
    }
}

/// When a proxy injects its fault: with `probability` per request to `path_prefix` or below it
/// (every request when `None`), at most `remaining` times (unlimited when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    pub fault: Fault,
    pub probability: f64,
    pub path_prefix: Option<String>,
    pub remaining: Option<u64>,
}

impl FaultPlan {
    /// Every request passes.
    pub fn pass() -> Self {
        Self::sometimes(Fault::Pass, 0.0)
    }

    /// Every (matching) request meets `fault`.
    pub fn always(fault: Fault) -> Self {
        Self::sometimes(fault, 1.0)
    }

    /// Each (matching) request meets `fault` with `probability`.
    pub fn sometimes(fault: Fault, probability: f64) -> Self {
        Self {
            fault,
            probability,
            path_prefix: None,
            remaining: None,
        }
    }

    /// Only requests to `path` or below it, whatever their query: `/charge` is not `/charges`.
    pub fn on_path(mut self, path: &str) -> Self {
        self.path_prefix = Some(path.to_string());
        self
    }

    /// At most `n` faults; then everything passes.
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }
}

/// What a proxy has seen and done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests read completely from a client.
    pub requests: u64,
    pub passed: u64,
    pub delayed: u64,
    pub dropped: u64,
    pub cut_after_send: u64,
    pub cut_mid_response: u64,
    /// Requests the proxy could not deliver because the service was not there (killed).
    pub upstream_unreachable: u64,
}

impl FaultCounts {
    /// Faults injected, of every kind.
    pub fn faults(&self) -> u64 {
        self.delayed + self.dropped + self.cut_after_send + self.cut_mid_response
    }

    pub fn add(&mut self, other: &FaultCounts) {
        self.requests += other.requests;
        self.passed += other.passed;
        self.delayed += other.delayed;
        self.dropped += other.dropped;
        self.cut_after_send += other.cut_after_send;
        self.cut_mid_response += other.cut_mid_response;
        self.upstream_unreachable += other.upstream_unreachable;
    }
}

/// xorshift64* seeded through splitmix64: small, fast and good enough to choose faults, and
/// the same on every platform, so a printed seed replays a run.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: any seed, 0 included, gives a well-mixed non-zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// One of `items`, uniformly.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.between(0, items.len() as u64 - 1) as usize]
    }
}

struct State {
    plan: FaultPlan,
    rng: SeededRng,
    counts: FaultCounts,
}

/// Controls one running proxy; cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    name: &'static str,
    port: u16,
    state: Arc<Mutex<State>>,
    /// Whether the port is open (listening); the accept loop follows it.
    open: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}

impl ProxyHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the plain data inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies from the next request on.
    pub fn set(&self, plan: FaultPlan) {
        self.lock().plan = plan;
    }

    /// Every request passes from now on.
    pub fn pass(&self) {
        self.set(FaultPlan::pass());
    }

    pub fn plan(&self) -> FaultPlan {
        self.lock().plan.clone()
    }

    /// Restarts the RNG from `seed`.
    pub fn reseed(&self, seed: u64) {
        self.lock().rng = SeededRng::new(seed);
    }

    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// Waits until this proxy is holding (has delayed) a request: with a plan that delays a
    /// call, the moment to crash something while that call is on its way. Panics after 10 s.
    pub async fn wait_until_holding(&self) {
        let waited = std::time::Instant::now();
        while self.counts().delayed == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "no request reached the {} proxy to be held",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops listening, so that connections to the port are refused, until [`Self::open_port`].
    /// Requests already accepted go on as their plan says.
    pub fn close_port(&self) {
        self.open.send_replace(false);
    }

    /// Listens on the same port again.
    pub fn open_port(&self) {
        self.open.send_replace(true);
    }

    /// Decides the fate of one request (`path`: its request target) and counts it.
    fn decide(&self, path: &str) -> Fault {
        let mut state = self.lock();
        let state = &mut *state;
        state.counts.requests += 1;
        let plan = &mut state.plan;
        let applies = plan.fault != Fault::Pass
            && plan.remaining != Some(0)
            && plan.path_prefix.as_deref().is_none_or(|p| within(path, p));
        let fault = if applies && state.rng.chance(plan.probability) {
            if let Some(n) = plan.remaining.as_mut() {
                *n -= 1;
            }
            plan.fault
        } else {
            Fault::Pass
        };
        let c = &mut state.counts;
        match fault {
            Fault::Pass => c.passed += 1,
            Fault::Delay(_) => c.delayed += 1,
            Fault::Drop => c.dropped += 1,
            Fault::CutAfterSend => c.cut_after_send += 1,
            Fault::CutMidResponse => c.cut_mid_response += 1,
        }
        fault
    }

    fn count_unreachable(&self) {
        self.lock().counts.upstream_unreachable += 1;
    }
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    handle: ProxyHandle,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream_port`, passing
    /// everything until told otherwise.
    pub async fn start(name: &'static str, upstream_port: u16, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fault proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let (open, opened) = watch::channel(true);
        let handle = ProxyHandle {
            name,
            port,
            state: Arc::new(Mutex::new(State {
                plan: FaultPlan::pass(),
                rng: SeededRng::new(seed),
                counts: FaultCounts::default(),
            })),
            open: Arc::new(open),
        };
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let accept = tokio::spawn(accept_loop(listener, opened, upstream, handle.clone()));
        FaultProxy { handle, accept }
    }

    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut opened: watch::Receiver<bool>,
    upstream: SocketAddr,
    handle: ProxyHandle,
) {
    let mut listener = Some(listener);
    loop {
        if !*opened.borrow_and_update() {
            // Dropping the listener closes the socket: connections to the port are refused.
            drop(listener.take());
            if opened.wait_for(|open| *open).await.is_err() {
                return;
            }
            continue;
        }
        let open = match listener {
            Some(ref open) => open,
            None => {
                let port = handle.port;
                let bound = TcpListener::bind(("127.0.0.1", port)).await;
                listener.insert(
                    bound.unwrap_or_else(|e| panic!("the {} proxy cannot listen on {port} again: {e}", handle.name)),
                )
            }
        };
        tokio::select! {
            accepted = open.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(serve(client, upstream, handle.clone()));
                }
                // Out of descriptors or similar: back off a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            changed = opened.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One connection, one request.
async fn serve(mut client: TcpStream, upstream: SocketAddr, handle: ProxyHandle) {
    let _ = client.set_nodelay(true);
    let Ok(Some(request)) = tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, read_request(&mut client)).await else {
        // The client went away (a pooled connection closed idle), timed out, or sent something
        // this proxy does not frame; nothing was forwarded.
        return;
    };
    let fault = handle.decide(&request.path);
    match fault {
        Fault::Drop => return,
        Fault::Delay(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let answer = match exchange(upstream, &request.bytes).await {
        Some(answer) if !answer.is_empty() => answer,
        _ => {
            handle.count_unreachable();
            return;
        }
    };
    let answer = with_connection_close(&answer);
    match fault {
        Fault::CutAfterSend => {}
        Fault::CutMidResponse => {
            let cut = match find_head_end(&answer) {
                Some(head) => head + (answer.len() - head) / 2,
                None => answer.len() / 2,
            };
            let _ = client.write_all(&answer[..cut]).await;
            let _ = client.flush().await;
        }
        _ => {
            // The client may have given up (a delayed request): the write just fails.
            let _ = client.write_all(&answer).await;
            let _ = client.shutdown().await;
        }
    }
}

/// Sends one request to the service and reads its answer to EOF (the request said
/// `Connection: close`). `None` when the service cannot be reached or does not answer in time.
async fn exchange(upstream: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    let mut conn = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream))
        .await
        .ok()?
        .ok()?;
    let _ = conn.set_nodelay(true);
    let talk = async {
        conn.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    tokio::time::timeout(UPSTREAM_ANSWER_TIMEOUT, talk).await.ok().flatten()
}

/// A complete request, rewritten to close its connection after the answer.
struct Request {
    path: String,
    bytes: Vec<u8>,
}

/// Reads the head and the `Content-Length` body of one request. `None` on EOF, a head that is
/// too large, or a chunked body (which the services' client never sends).
async fn read_request(client: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    while buf.len() < head_end + length {
        let mut chunk = vec![0u8; (head_end + length - buf.len()).min(64 * 1024)];
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(head_end + length);
    Some(Request {
        path,
        bytes: with_connection_close(&buf),
    })
}

/// The index just past the `\r\n\r\n` that ends a message head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The message with its `Connection`/`Keep-Alive` headers replaced by `Connection: close`.
/// A message without a complete head is returned as it is.
fn with_connection_close(message: &[u8]) -> Vec<u8> {
    let Some(head_end) = find_head_end(message) else {
        return message.to_vec();
    };
    let Ok(head) = std::str::from_utf8(&message[..head_end - 4]) else {
        return message.to_vec();
    };
    let mut out = Vec::with_capacity(message.len() + 32);
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line.split_once(':').map(|(n, _)| n.trim()).unwrap_or("");
        let hop_by_hop = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if i > 0 && hop_by_hop {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&message[head_end..]);
    out
}

/// Whether the request target `target` is `path` or below it, query aside.
fn within(target: &str, path: &str) -> bool {
    target
        .strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A tiny HTTP/1.1 service that counts the requests it received and answers each with
    /// `{"n": <count>}`, closing the connection when the request asks it to.
    async fn counting_service() -> (u16, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    while let Some(request) = read_request(&mut conn).await {
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        let close = String::from_utf8_lossy(&request.bytes).contains("connection: close");
                        let body = format!("{{\"n\":{n},\"padding\":\"{}\"}}", "x".repeat(100));
                        let answer = format!(
                            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    fn client(timeout: Duration) -> reqwest::Client {
        shared::tls::client_builder().timeout(timeout).build().expect("client")
    }

    async fn post(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
        let resp = client
            .post(url)
            .body(r#"{"hello":"world"}"#)
            .send()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{e:#}"))?;
        Ok((status, text))
    }

    #[tokio::test]
    async fn every_request_on_a_kept_alive_client_gets_its_own_decision() {
        let (port, seen) = counting_service().await;
        let proxy = FaultProxy::start("test", port, 1).await;
        let handle = proxy.handle();
        let c = client(Duration::from_secs(5));
        let url = format!("{}/charge", handle.url());

        for i in 1..=3u64 {
            let (status, body) = post(&c, &url).await.expect("passes");
            assert_eq!(status, 201);
            assert!(body.starts_with(&format!("{{\"n\":{i},")), "{body}");
        }
        handle.set(FaultPlan::always(Fault::Drop).times(1));
        assert!(post(&c, &url).await.is_err(), "the dropped request fails");
        assert_eq!(post(&c, &url).await.expect("the next one passes").0, 201);

        let counts = handle.counts();
        assert_eq!((counts.requests, counts.passed, counts.dropped), (5, 4, 1));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            4,
            "the dropped request never reached the service"
        );
    }

    #[test]
    fn a_plan_on_a_path_covers_that_path_and_below_it_not_longer_names() {
        for target in ["/charge", "/charge?x=1", "/charge/1"] {
            assert!(within(target, "/charge"), "{target}");
        }
        for target in ["/charges", "/charges?orderId=ord_1", "/chargeback", "/refund"] {
            assert!(!within(target, "/charge"), "{target}");
        }
    }

    #[tokio::test]
    async fn cut_after_send_lets_the_effect_happen_and_loses_the_answer() {
        let (port, seen) = counting_service().await;
        let proxy = FaultProxy::start("test", port, 2).await;
        let handle = proxy.handle();
        handle.set(FaultPlan::always(Fault::CutAfterSend).on_path("/charge"));
        let c = client(Duration::from_secs(5));

        let lost = post(&c, &format!("{}/charge", handle.url())).await;
        assert!(lost.is_err(), "no answer may reach the client: {lost:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the service acted on the request");
        // Other paths are not affected.
        let other = post(&c, &format!("{}/refund", handle.url())).await.expect("passes");
        assert_eq!(other.0, 201);
        assert_eq!(handle.counts().cut_after_send, 1);
    }

    #[tokio::test]
    async fn cut_mid_response_shows_the_status_and_loses_the_body() {
        let (port, seen) = counting_service().await;
        let proxy = FaultProxy::start("test", port, 3).await;
        let handle = proxy.handle();
        handle.set(FaultPlan::always(Fault::CutMidResponse));
        let c = client(Duration::from_secs(5));

        let resp = c
            .post(format!("{}/charge", handle.url()))
            .body("{}")
            .send()
            .await
            .expect("the head gets through");
        assert_eq!(resp.status(), 201);
        assert!(resp.bytes().await.is_err(), "the body is cut");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_delay_beyond_the_callers_timeout_still_delivers_the_request_late() {
        let (port, seen) = counting_service().await;
        let proxy = FaultProxy::start("test", port, 4).await;
        let handle = proxy.handle();
        handle.set(FaultPlan::always(Fault::Delay(Duration::from_millis(400))));
        let c = client(Duration::from_millis(100));

        let timed_out = post(&c, &format!("{}/reserve", handle.url())).await;
        assert!(timed_out.is_err(), "{timed_out:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 0, "still held");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 1, "delivered after its sender gave up");
        assert_eq!(handle.counts().delayed, 1);
    }

    #[tokio::test]
    async fn faults_fire_with_their_probability_from_the_seed() {
        let (port, _) = counting_service().await;
        let proxy = FaultProxy::start("test", port, 5).await;
        let handle = proxy.handle();
        handle.set(FaultPlan::sometimes(Fault::Drop, 0.3));
        let c = client(Duration::from_secs(5));
        let url = format!("{}/x", handle.url());
        for _ in 0..200 {
            let _ = post(&c, &url).await;
        }
        let counts = handle.counts();
        assert_eq!(counts.requests, 200);
        assert!((30..=90).contains(&counts.dropped), "{counts:?}");

        // The same seed draws the same decisions.
        let mut a = SeededRng::new(42);
        let mut b = SeededRng::new(42);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }

    #[tokio::test]
    async fn a_service_that_is_down_counts_as_unreachable() {
        // A port nothing listens on: taken, then let go without starting anything on it.
        let port = crate::free_port();
        crate::release_port(port);
        let proxy = FaultProxy::start("test", port, 6).await;
        let handle = proxy.handle();
        let c = client(Duration::from_secs(5));
        assert!(post(&c, &format!("{}/charge", handle.url())).await.is_err());
        assert_eq!(handle.counts().upstream_unreachable, 1);
    }
}
