//! The e2e harness: one [`Stack`] is a real `redis-server`, the three service binaries and a real
//! `nginx` rendered from the repository's `nginx.conf`, each on a free loopback port, in a private
//! temporary directory. Tests talk to it only over HTTP, through nginx, as a client would; they
//! can kill (SIGKILL), stop (SIGTERM) and restart any process to inject failures.
//!
//! With [`StackOptions::fault_proxies`], the order service reaches stock and payment through
//! in-process [`fault_proxy`]s that a test can make delay, drop or cut requests
//! ([`Stack::proxy`]).
//!
//! Logs go to files in the stack's directory. They are printed when a test fails (or always with
//! `TEST_LOG=1`), and the directory is kept for inspection after a failure.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod fault_proxy;
pub mod metrics;
pub mod otlp;
mod reply;

pub use reply::{Reply, new_key, slug};

pub use fault_proxy::{Fault, FaultCounts, FaultPlan, FaultProxy, ProxyHandle, SeededRng};

/// The secret the Pix simulator signs its webhooks with, and payment-service verifies them by.
pub const PIX_WEBHOOK_SECRET: &str = "whsec_ZTJlLXBpeC13ZWJob29rLXNlY3JldC0wMDAx";

/// How long any one process may take to become ready before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Redis,
    /// The two card provider simulators (`gateway-sim`), payment's route `card-a,card-b`.
    CardA,
    CardB,
    /// The Pix provider simulator (`gateway-sim` named `pix`): payment's route `pix`; it
    /// sends its signed webhooks to payment-service directly.
    Pix,
    /// A merchant's webhook receiver (`webhook-receiver`): records every delivery in a file of
    /// its own and answers as a test plans.
    Receiver,
    Stock,
    Payment,
    Order,
    Nginx,
}

impl Service {
    pub const ALL: [Service; 9] = [
        Service::Redis,
        Service::CardA,
        Service::CardB,
        Service::Pix,
        Service::Receiver,
        Service::Stock,
        Service::Payment,
        Service::Order,
        Service::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Redis => "redis",
            Service::CardA => "card-a",
            Service::CardB => "card-b",
            Service::Pix => "pix",
            Service::Receiver => "receiver",
            Service::Stock => "stock",
            Service::Payment => "payment",
            Service::Order => "order",
            Service::Nginx => "nginx",
        }
    }
}

/// Extra environment per service, applied after the harness's own (so it can override them).
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    pub order_env: Vec<(String, String)>,
    pub stock_env: Vec<(String, String)>,
    pub payment_env: Vec<(String, String)>,
    /// Puts a [`FaultProxy`] between the order service and stock, and another between the order
    /// service and payment (`STOCK_URL`/`PAYMENT_URL` point at them). They pass everything until
    /// a test sets a plan through [`Stack::proxy`]. nginx still reaches every service directly.
    pub fault_proxies: bool,
    /// Runs Redis as a three-master Redis Cluster (also for every stack: `E2E_REDIS_CLUSTER=1`).
    pub redis_cluster: bool,
    /// Seeds the proxies' RNGs (each mixes in a constant of its own, so the two draw differently).
    pub fault_seed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    redis: u16,
    card_a: u16,
    card_b: u16,
    pix: u16,
    receiver: u16,
    stock: u16,
    payment: u16,
    order: u16,
    gateway: u16,
}

pub struct Stack {
    dir: PathBuf,
    ports: Ports,
    token: String,
    options: StackOptions,
    client: reqwest::Client,
    children: HashMap<Service, Child>,
    /// With `E2E_REDIS_CLUSTER=1`: the ports of the other two masters of a three-master Redis
    /// Cluster (the first is `ports.redis`), and their processes.
    cluster: Option<[u16; 2]>,
    /// Each cluster node's bus port, fixed for the stack's life so a restarted node rejoins.
    cluster_bus: HashMap<u16, u16>,
    cluster_children: Vec<Child>,
    /// Second replicas of services (`start_replica`), on ports of their own.
    replicas: Vec<Child>,
    proxies: HashMap<Service, FaultProxy>,
}

impl Stack {
    /// Starts everything and waits until each process answers. Panics, with the logs, if one
    /// does not come up.
    pub async fn launch(options: StackOptions) -> Stack {
        let dir = std::env::temp_dir().join(format!("checkout-e2e-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(dir.join("redis")).expect("create the stack's redis directory");
        fs::create_dir_all(dir.join("nginx/temp")).expect("create the stack's nginx directory");
        let ports = Ports {
            redis: free_port(),
            card_a: free_port(),
            card_b: free_port(),
            pix: free_port(),
            receiver: free_port(),
            stock: free_port(),
            payment: free_port(),
            order: free_port(),
            gateway: free_port(),
        };
        let client = shared::tls::client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the test HTTP client");
        let cluster = (options.redis_cluster || cluster_mode()).then(|| [free_port(), free_port()]);
        let mut stack = Stack {
            dir,
            ports,
            token: format!("e2e-{}", uuid::Uuid::new_v4().simple()),
            options,
            client,
            children: HashMap::new(),
            cluster_bus: HashMap::new(),
            cluster,
            cluster_children: Vec::new(),
            replicas: Vec::new(),
            proxies: HashMap::new(),
        };
        for port in stack.redis_ports().into_iter().filter(|_| stack.cluster.is_some()) {
            stack.cluster_bus.insert(port, free_port());
        }
        if stack.options.fault_proxies {
            let seed = stack.options.fault_seed;
            for (service, salt) in [(Service::Stock, 0x5707_u64), (Service::Payment, 0xBA7_u64)] {
                let proxy = FaultProxy::start(service.name(), stack.port(service), seed ^ salt).await;
                stack.proxies.insert(service, proxy);
            }
        }
        for service in Service::ALL {
            stack.start(service).await;
        }
        stack
    }

    /// The public URL of `path` through nginx, e.g. `stack.url("/order/checkout")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.gateway)
    }

    /// A service's own URL, bypassing nginx (as the order service calls its dependencies).
    pub fn direct_url(&self, service: Service, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port(service))
    }

    /// The services' REDIS_URL: one node, or every master of the cluster, comma-separated.
    pub fn redis_url(&self) -> String {
        self.redis_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the services run on a three-master Redis Cluster rather than one node.
    pub fn on_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// A Redis pool like the services' own: cluster-aware when the stack runs a cluster.
    pub fn redis_pool(&self) -> shared::redis_pool::Pool {
        shared::redis_pool::connect(&self.redis_url(), self.on_cluster(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A field of an Idempotency-Key's record (`record`: its Redis key), read as the services
    /// read it: a hash, or one string of its fields (shared's record.lua).
    pub async fn record_field(&self, record: &str, name: &str) -> Option<String> {
        let store = shared::idempotency::IdempotencyStore::new(
            self.redis_pool(),
            Duration::from_secs(3600),
            Duration::from_secs(60),
        );
        let key = shared::idempotency::KeyRef::from_stored(record.to_string(), String::new());
        store.field(&key, name).await.expect("the record's field")
    }

    /// The ports of every Redis node (one, or the cluster's three masters).
    pub fn redis_node_ports(&self) -> Vec<u16> {
        self.redis_ports()
    }

    fn redis_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.ports.redis];
        ports.extend(self.cluster.iter().flatten());
        ports
    }

    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The INTERNAL_TOKEN every service of this stack was started with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fault proxy in front of `service` (stock or payment), as the order service sees it.
    /// Panics unless the stack was launched with [`StackOptions::fault_proxies`].
    pub fn proxy(&self, service: Service) -> ProxyHandle {
        self.proxies
            .get(&service)
            .map(FaultProxy::handle)
            .unwrap_or_else(|| panic!("no fault proxy for {}: launch with fault_proxies", service.name()))
    }

    /// Every proxy passes everything from now on.
    pub fn heal_proxies(&self) {
        for proxy in self.proxies.values() {
            proxy.handle().pass();
        }
    }

    /// What each proxy has counted so far, summed.
    pub fn proxy_counts(&self) -> FaultCounts {
        let mut total = FaultCounts::default();
        for proxy in self.proxies.values() {
            total.add(&proxy.handle().counts());
        }
        total
    }

    /// The URL the order service uses for a dependency: its proxy when there is one.
    fn dependency_url(&self, service: Service) -> String {
        match self.proxies.get(&service) {
            Some(proxy) => proxy.handle().url(),
            None => format!("http://127.0.0.1:{}", self.port(service)),
        }
    }

    pub fn port(&self, service: Service) -> u16 {
        match service {
            Service::Redis => self.ports.redis,
            Service::CardA => self.ports.card_a,
            Service::CardB => self.ports.card_b,
            Service::Pix => self.ports.pix,
            Service::Receiver => self.ports.receiver,
            Service::Stock => self.ports.stock,
            Service::Payment => self.ports.payment,
            Service::Order => self.ports.order,
            Service::Nginx => self.ports.gateway,
        }
    }

    /// Starts (or restarts) one process on its original port and waits until it is ready.
    pub async fn start(&mut self, service: Service) {
        assert!(
            !self.children.contains_key(&service),
            "{} is already running",
            service.name()
        );
        if service == Service::Redis
            && let Some(others) = self.cluster
        {
            for port in others {
                release_port(port);
                release_port(self.cluster_bus_port(port));
                let child = self.spawn(service, self.redis_command(port));
                self.cluster_children.push(child);
            }
        }
        let port = self.port(service);
        release_port(port);
        if service == Service::Redis {
            release_port(self.cluster_bus_port(port));
        }
        let command = self.command(service);
        let child = self.spawn(service, command);
        self.children.insert(service, child);
        self.wait_ready(service).await;
        if service == Service::Redis && self.cluster.is_some() {
            self.form_cluster().await;
        }
    }

    /// Starts another replica of a service (same Redis, same settings) on a port of its own,
    /// which nginx does not know: tests call it directly. Returns its port once it is ready.
    pub async fn start_replica(&mut self, service: Service) -> u16 {
        let port_var = service_port_var(service).unwrap_or_else(|| panic!("{} has no replicas", service.name()));
        let port = free_port();
        let mut command = self.command(service);
        command.env(port_var, port.to_string());
        release_port(port);
        let child = self.spawn(service, command);
        self.replicas.push(child);
        let ready = format!("http://127.0.0.1:{port}/ready");
        let started = Instant::now();
        while !self.http_ok(&ready).await {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the second {} replica did not come up:\n{}",
                service.name(),
                tail(&self.logs(service), 80)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        port
    }

    fn spawn(&self, service: Service, mut command: Command) -> Child {
        let log = self.log_file(service);
        // Its own process group, so a signal reaches nginx's workers too, not just its master.
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({command:?}): {e}", service.name()))
    }

    /// Joins the three masters into one cluster the first time (a restart finds its
    /// nodes.conf and rejoins), then waits until every node reports the cluster ok.
    async fn form_cluster(&mut self) {
        let ports = self.redis_ports();
        let marker = self.dir.join("redis/cluster-formed");
        if !marker.exists() {
            let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let out = Command::new(find_program("redis-cli"))
                .arg("--cluster")
                .arg("create")
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .expect("run redis-cli --cluster create");
            assert!(
                out.status.success(),
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            fs::write(&marker, b"").expect("mark the cluster formed");
        }
        let started = Instant::now();
        for port in ports {
            loop {
                let info = Command::new(find_program("redis-cli"))
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < READY_TIMEOUT,
                    "the Redis Cluster did not come up: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILL: the process gets no chance to finish anything, as in a crash.
    pub async fn kill(&mut self, service: Service) {
        if let Some(mut child) = self.children.remove(&service) {
            kill_group(&mut child);
        }
        if service == Service::Redis {
            for mut child in self.cluster_children.drain(..) {
                kill_group(&mut child);
            }
        }
    }

    /// SIGTERM, then waits for the process to exit (SIGKILL after `grace`).
    pub async fn stop(&mut self, service: Service, grace: Duration) {
        if service == Service::Redis {
            for mut child in self.cluster_children.drain(..) {
                signal_group(&child, "TERM");
                let _ = child.wait();
            }
        }
        let Some(mut child) = self.children.remove(&service) else {
            return;
        };
        signal_group(&child, "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill_group(&mut child);
    }

    /// SIGSTOP: the process stalls with its sockets open (a long fsync, a swapped-out or
    /// CPU-starved host), so callers wait and time out while their requests sit unread. Every
    /// node on a cluster. [`Stack::unpause`] lets it go on, answering what queued meanwhile.
    pub fn pause(&self, service: Service) {
        self.signal(service, "STOP");
    }

    /// SIGCONT after [`Stack::pause`].
    pub fn unpause(&self, service: Service) {
        self.signal(service, "CONT");
    }

    fn signal(&self, service: Service, signal: &str) {
        if let Some(child) = self.children.get(&service) {
            signal_group(child, signal);
        }
        if service == Service::Redis {
            for child in &self.cluster_children {
                signal_group(child, signal);
            }
        }
    }

    pub fn is_running(&mut self, service: Service) -> bool {
        match self.children.get_mut(&service) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything a process has logged so far.
    pub fn logs(&self, service: Service) -> String {
        fs::read_to_string(self.log_path(service)).unwrap_or_default()
    }

    // ----- client helpers -----

    /// Sets a provider simulator's faults (`{"errorRate", "latencyMs", "dropResponseRate"}`).
    pub async fn sim_faults(&self, sim: Service, faults: Value) {
        let resp = self
            .client
            .put(self.direct_url(sim, "/_sim/faults"))
            .json(&faults)
            .send()
            .await
            .expect("PUT /_sim/faults");
        assert_eq!(resp.status(), 200, "PUT /_sim/faults {faults}");
    }

    /// What a provider simulator believes it charged and refunded (`GET /_sim/ledger`).
    pub async fn sim_ledger(&self, sim: Service) -> Value {
        let resp = self
            .client
            .get(self.direct_url(sim, "/_sim/ledger"))
            .send()
            .await
            .expect("GET /_sim/ledger");
        resp.json().await.expect("the ledger is JSON")
    }

    /// A request through nginx with `bearer` (an API key, the internal token, or none), and a
    /// fresh Idempotency-Key when it has a body.
    pub async fn send(&self, method: &str, path: &str, bearer: Option<&str>, body: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.header("idempotency-key", new_key()).json(body);
        }
        Reply::from(req.send().await.expect("the request")).await
    }

    /// A new account, made by the platform: its id and its first API key.
    pub async fn account(&self, name: &str) -> (String, String) {
        let body = json!({"name": name});
        let r = self
            .send("POST", "/payment/accounts", Some(self.token()), Some(&body))
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        let api_key = r.json["apiKey"].as_str().unwrap_or_default().to_string();
        assert!(api_key.starts_with("sk_test_"), "{}", r.json);
        (r.json["accountId"].as_str().unwrap_or_default().to_string(), api_key)
    }

    /// The receiver's URL for `path` (each test's endpoints use paths of their own).
    pub fn receiver_url(&self, path: &str) -> String {
        self.direct_url(Service::Receiver, path)
    }

    /// Plans the receiver's answers to `path`: the next `fail` requests get `status`, and each
    /// waits `delay_ms` first.
    pub async fn receiver_plan(&self, path: &str, fail: u32, status: u16, delay_ms: u64) {
        let plan = serde_json::json!({"path": path, "fail": fail, "status": status, "delayMs": delay_ms});
        let resp = self
            .client
            .put(self.direct_url(Service::Receiver, "/_recv/plan"))
            .json(&plan)
            .send()
            .await
            .expect("PUT /_recv/plan");
        assert_eq!(resp.status(), 200, "PUT /_recv/plan {plan}");
    }

    /// Every request the receiver got at `path`, oldest first (its own records, kept across
    /// its restarts).
    pub async fn receiver_requests(&self, path: &str) -> Vec<Value> {
        let url = self.direct_url(Service::Receiver, &format!("/_recv/requests?path={path}"));
        let body: Value = self
            .client
            .get(url)
            .send()
            .await
            .expect("GET /_recv/requests")
            .json()
            .await
            .expect("the receiver's records are JSON");
        body["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Creates or restocks an item (USD) through nginx with the internal token.
    pub async fn put_item(&self, id: u64, name: &str, price: i64, available: i64) {
        let resp = self
            .client
            .put(self.url(&format!("/stock/items/{id}")))
            .bearer_auth(&self.token)
            .json(&json!({"name": name, "price": price, "currency": "USD", "available": available}))
            .send()
            .await
            .expect("PUT item");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "PUT /stock/items/{id}: {body}");
    }

    /// The item as the public API shows it.
    pub async fn item(&self, id: u64) -> Value {
        self.get_json(&format!("/stock/items/{id}"), false).await
    }

    /// GET through nginx, asserting 200; `internal` adds the bearer token.
    pub async fn get_json(&self, path: &str, internal: bool) -> Value {
        let mut req = self.client.get(self.url(path));
        if internal {
            req = req.bearer_auth(&self.token);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// GET straight from a process (a simulator's `/_sim/…`), asserting 200.
    pub async fn get_json_direct(&self, service: Service, path: &str) -> Value {
        let url = self.direct_url(service, path);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), 200, "GET {url}");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e})"))
    }

    /// Sets a variable of a service's environment for its next start (after [`Stack::kill`]).
    pub fn set_env(&mut self, service: Service, name: &str, value: &str) {
        let env = match service {
            Service::Order => &mut self.options.order_env,
            Service::Stock => &mut self.options.stock_env,
            Service::Payment => &mut self.options.payment_env,
            other => panic!("{} takes no extra environment", other.name()),
        };
        env.retain(|(k, _)| k != name);
        env.push((name.to_string(), value.to_string()));
    }

    /// POST through nginx with the internal token and, when given, an Idempotency-Key.
    pub async fn post_internal(&self, path: &str, key: Option<&str>, body: &Value) -> Reply {
        let mut req = self.client.post(self.url(path)).bearer_auth(&self.token).json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        Reply::from(req.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"))).await
    }

    /// A checkout with a fresh key sent on a task of its own (for concurrent checkouts): its
    /// status, or 0 when no answer came.
    pub fn spawn_checkout(&self, body: Value) -> tokio::task::JoinHandle<u16> {
        let (client, url) = (self.client(), self.url("/order/checkout"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("idempotency-key", new_key())
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    }

    /// POST /order/checkout with `key`; the body is whatever JSON the test gives.
    pub async fn checkout(&self, key: &str, body: Value) -> (u16, HeaderMap, Value) {
        let resp = self
            .client
            .post(self.url("/order/checkout"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .expect("POST /order/checkout");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, json)
    }

    /// [`Stack::checkout`] for callers that build the key inside a closure.
    pub async fn checkout_owned(&self, key: String, body: Value) -> (u16, HeaderMap, Value) {
        self.checkout(&key, body).await
    }

    // ----- processes -----

    fn command(&self, service: Service) -> Command {
        match service {
            Service::Redis => self.redis_command(self.ports.redis),
            Service::CardA | Service::CardB | Service::Pix => {
                let mut c = Command::new(binary_path("gateway-sim"));
                c.env("SIM_NAME", service.name())
                    .env("HOST", "127.0.0.1")
                    .env("SIM_PORT", self.port(service).to_string())
                    .env("SIM_LEDGER", self.dir.join(format!("{}.ledger.jsonl", service.name())));
                if service == Service::Pix {
                    c.env(
                        "SIM_WEBHOOK_URL",
                        format!("http://127.0.0.1:{}/webhooks/pix", self.ports.payment),
                    )
                    .env("SIM_WEBHOOK_SECRET", PIX_WEBHOOK_SECRET)
                    .env("SIM_WEBHOOK_MAX_BACKOFF_MS", "300");
                }
                c
            }
            Service::Receiver => {
                let mut c = Command::new(binary_path("webhook-receiver"));
                c.env("HOST", "127.0.0.1")
                    .env("RECEIVER_PORT", self.port(service).to_string())
                    .env("RECEIVER_LOG", self.dir.join("receiver.jsonl"));
                c
            }
            Service::Stock | Service::Payment | Service::Order => {
                let (binary, extra) = match service {
                    Service::Stock => ("stock-service", &self.options.stock_env),
                    Service::Payment => ("payment-service", &self.options.payment_env),
                    _ => ("order-service", &self.options.order_env),
                };
                let (port_var, port) = (service_port_var(service).unwrap_or_default(), self.port(service));
                let mut c = Command::new(binary_path(binary));
                c.env("HOST", "127.0.0.1")
                    .env(port_var, port.to_string())
                    .env("REDIS_URL", self.redis_url())
                    .env("REDIS_CLUSTER", self.cluster.is_some().to_string())
                    .env("INTERNAL_TOKEN", &self.token)
                    .env("WORKERS", "1")
                    .env("LOG_FORMAT", "text")
                    .env(
                        "RUST_LOG",
                        std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
                    )
                    .env("SEED_DEMO", "false")
                    // The suites send from one address faster than a client would; the limits
                    // are tested where a test sets its own (rate_limits.rs).
                    .env("RATE_LIMIT_CHECKOUT", "1000000")
                    .env("RATE_LIMIT_CHECKOUT_BURST", "1000000")
                    .env("RATE_LIMIT_DEFAULT", "1000000")
                    .env("RATE_LIMIT_DEFAULT_BURST", "1000000")
                    .env(
                        "PAYMENT_GATEWAYS",
                        format!(
                            "card-a=http://127.0.0.1:{},card-b=http://127.0.0.1:{},pix=http://127.0.0.1:{}",
                            self.ports.card_a, self.ports.card_b, self.ports.pix
                        ),
                    )
                    .env("PAYMENT_ROUTES", "card:card-a,card-b;pix:pix")
                    .env("PROVIDER_WEBHOOK_SECRETS", format!("pix={PIX_WEBHOOK_SECRET}"))
                    .env("WEBHOOK_CLAIM_IDLE", "1s")
                    // The harness's receiver is on loopback; address.rs refuses it otherwise.
                    .env("WEBHOOK_ALLOW_PRIVATE", "true")
                    .env("ORDER_URL", format!("http://127.0.0.1:{}", self.ports.order))
                    .env("STOCK_URL", self.dependency_url(Service::Stock))
                    .env("PAYMENT_URL", self.dependency_url(Service::Payment));
                for (k, v) in extra {
                    c.env(k, v);
                }
                c
            }
            Service::Nginx => {
                let prefix = self.dir.join("nginx");
                let conf = prefix.join("nginx.conf");
                fs::write(&conf, self.render_nginx_conf()).expect("write nginx.conf");
                let mut globals = format!(
                    "daemon off; worker_processes 1; pid {};",
                    prefix.join("nginx.pid").display()
                );
                if running_as_root() {
                    // Workers would otherwise drop to `nobody`, which cannot use our private temp dir.
                    globals.push_str(" user root;");
                }
                let mut c = Command::new(find_program("nginx"));
                c.arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr", "-g", &globals]);
                c
            }
        }
    }

    fn cluster_bus_port(&self, port: u16) -> u16 {
        self.cluster_bus.get(&port).copied().unwrap_or(port + 10_000)
    }

    fn redis_command(&self, port: u16) -> Command {
        let dir = self.dir.join(format!("redis/{port}"));
        fs::create_dir_all(&dir).expect("create a Redis directory");
        let mut c = Command::new(find_program("redis-server"));
        c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            // Durable as in `make run`: a restarted Redis comes back with every write it acknowledged.
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            // As `make run` and docker-compose.yml run it.
            .args(["--hash-max-listpack-value", "1024", "--rdbcompression", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]);
        if self.cluster.is_some() {
            // The bus port defaults to port + 10000, inside the ephemeral range: name one of ours.
            c.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"])
                .args(["--cluster-port", &self.cluster_bus_port(port).to_string()]);
        }
        c
    }

    fn render_nginx_conf(&self) -> String {
        let template = fs::read_to_string(repo_root().join("nginx.conf")).expect("read the repository's nginx.conf");
        let vars = [
            ("GATEWAY_PORT", format!("127.0.0.1:{}", self.ports.gateway)),
            ("ORDER_UPSTREAMS", format!("server 127.0.0.1:{};", self.ports.order)),
            ("PAYMENT_UPSTREAMS", format!("server 127.0.0.1:{};", self.ports.payment)),
            ("STOCK_UPSTREAMS", format!("server 127.0.0.1:{};", self.ports.stock)),
            ("NGINX_TEMP", self.dir.join("nginx/temp").display().to_string()),
            (
                "NGINX_ACCESS_LOG",
                self.dir.join("nginx/access.log").display().to_string(),
            ),
        ];
        render_template(&template, &vars)
    }

    async fn wait_ready(&mut self, service: Service) {
        let started = Instant::now();
        loop {
            let ready = match service {
                Service::Redis => redis_answers(self.ports.redis).await,
                Service::Nginx => self.http_ok(&self.url("/")).await,
                Service::CardA | Service::CardB | Service::Pix => {
                    self.http_ok(&self.direct_url(service, "/health")).await
                }
                Service::Receiver => self.http_ok(&self.direct_url(service, "/_recv/health")).await,
                _ => self.http_ok(&self.direct_url(service, "/ready")).await,
            };
            if ready {
                return;
            }
            if !self.is_running(service) {
                panic!(
                    "{} exited during start-up:\n{}",
                    service.name(),
                    tail(&self.logs(service), 80)
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "{} not ready after {READY_TIMEOUT:?}:\n{}",
                    service.name(),
                    tail(&self.logs(service), 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn http_ok(&self, url: &str) -> bool {
        match self.client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        }
    }

    fn log_path(&self, service: Service) -> PathBuf {
        self.dir.join(format!("{}.log", service.name()))
    }

    /// Appends, so a restarted process's log follows its predecessor's.
    fn log_file(&self, service: Service) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(service))
            .expect("open a log file")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut() {
            kill_group(child);
        }
        for child in self.cluster_children.iter_mut().chain(self.replicas.iter_mut()) {
            kill_group(child);
        }
        let failed = std::thread::panicking();
        if failed || std::env::var_os("TEST_LOG").is_some() {
            for service in Service::ALL {
                eprintln!(
                    "----- {} log (last lines) -----\n{}",
                    service.name(),
                    tail(&self.logs(service), 60)
                );
            }
        }
        if failed {
            eprintln!("stack directory kept for inspection: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Replaces `${NAME}` for each given name and refuses to leave one unfilled.
/// The variable a service reads its port from; `None` for the processes that are not ours.
fn service_port_var(service: Service) -> Option<&'static str> {
    match service {
        Service::Stock => Some("STOCK_PORT"),
        Service::Payment => Some("PAYMENT_PORT"),
        Service::Order => Some("ORDER_PORT"),
        _ => None,
    }
}

pub fn render_template(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = out.find("${") {
        let rest: String = out[at..].chars().take(40).collect();
        panic!("nginx.conf has a placeholder the harness does not fill: {rest}");
    }
    out
}

/// Ports handed out by [`free_port`] and held (bound, not listening) until the process meant
/// to use them is about to start: while held, no other test process can pick them.
static HELD: std::sync::Mutex<Option<HashMap<u16, TcpListener>>> = std::sync::Mutex::new(None);

/// A port for a process this test will start, drawn at random from 20000–32767: below the
/// kernel's ephemeral range (32768 and up), so no outgoing connection can take it, and held
/// bound until [`release_port`] so no parallel test can either.
pub fn free_port() -> u16 {
    let mut seed = uuid::Uuid::new_v4().as_u128();
    for _ in 0..1000 {
        let port = 20_000 + (seed % 12_768) as u16;
        seed /= 12_768;
        if seed == 0 {
            seed = uuid::Uuid::new_v4().as_u128();
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port))
            && claim_port(port)
        {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            held.get_or_insert_with(HashMap::new).insert(port, listener);
            return port;
        }
    }
    panic!("no free loopback port in 20000–32767")
}

/// Claims `port` for this test process for as long as it lives, in a file other test
/// processes read: holding the port bound covers only the time until its process starts, and
/// a process a test kills and starts again leaves its port unbound in between, where another
/// test's [`free_port`] used to pick it (the restart then failed with "address in use"). A
/// claim whose process is gone is stale and taken over.
fn claim_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join("checkout-e2e-ports");
    let path = dir.join(port.to_string());
    let me = std::process::id();
    let owner = fs::read_to_string(&path)
        .ok()
        .and_then(|o| o.trim().parse::<u32>().ok());
    if owner.is_some_and(|pid| pid != me && Path::new(&format!("/proc/{pid}")).exists()) {
        return false;
    }
    fs::create_dir_all(&dir).is_ok() && fs::write(&path, me.to_string()).is_ok()
}

/// Lets go of a port from [`free_port`] just before its process binds it.
pub fn release_port(port: u16) {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(map) = held.as_mut() {
        map.remove(&port);
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The service binaries sit next to the test binary's `deps/` directory (`target/debug`).
pub fn binary_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test binary's path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first (`cargo build --workspace`, which `make test` does)",
        path.display()
    );
    path
}

/// Finds a program on PATH or in the sbin directories Debian installs daemons into.
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run `make deps` (apt-get install redis-server nginx)"))
}

fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL to the whole group (nginx's workers outlive a killed master otherwise), then reap.
fn kill_group(child: &mut Child) {
    signal_group(child, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// `E2E_REDIS_CLUSTER=1` runs every stack on a three-master Redis Cluster instead of one node.
fn cluster_mode() -> bool {
    std::env::var("E2E_REDIS_CLUSTER").is_ok_and(|v| v == "1" || v == "true")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// True once Redis answers PING with PONG (not LOADING while it replays its AOF).
async fn redis_answers(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
