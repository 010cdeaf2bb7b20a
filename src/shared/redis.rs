//! The Redis connection the instances share state on: rate limit buckets (`limits::redis`), the API key
//! replay guard (`authn`) and auth cache clears (published here, received here).
//!
//! - One `redis` crate `ConnectionManager` (a multiplexed connection that reconnects by itself) for
//!   every call, each bounded by `[redis] timeout_ms`. It and the cache clear subscription run on a
//!   small runtime of their own (one thread), so no chat worker has to drive them.
//! - Health: a failed call (timeout, no connection, error answer) marks Redis down for `backoff_ms`;
//!   meanwhile every call fails at once (no waiting on a dead server, no pile of timeouts) and each
//!   feature falls back as its `on_redis_error` says. After the back-off one request tries again;
//!   when it succeeds Redis is up again: no restart is needed.
//! - Cache clears: `POST /auth-cache/clear` and a reload publish this instance's id on
//!   `<prefix>auth-cache-clear`; every other instance bumps a counter its authenticator reads before
//!   its next cache look-up. A clear published while Redis is down is lost, so an instance that
//!   (re)subscribes clears its own cache too.
//! - Every call is timed and every error, by reason, counted (`metrics::shared`).
//! - Redis Sentinel (`[redis] sentinels`): the connection goes to the master the Sentinels name;
//!   after a failed call (the master gone, or answering `READONLY` once demoted) they are asked
//!   again, and a new master gets a new connection manager, by itself. The `redis` crate's
//!   `ConnectionManager` alone would reconnect to the old address for ever.
//! - Redis Cluster (`[redis] cluster`): the `redis` crate's cluster connection, which learns the
//!   slots and follows them (and a failover) by itself. Keys that one call uses together share a
//!   hash tag: [`SharedRedis::key`] puts the id in `{…}`, a rate limit's buckets the credential's.
//!   Cache clears are published on the cluster (Redis carries them to every node) and received on a
//!   subscription to one node, the next one when it fails.
//! - Durable writes (`[redis.deliveries] wait_replicas`): the journal's entries are written on
//!   connections of their own ([`DURABLE_CONNECTIONS`]), each write followed by `WAIT` on the same
//!   connection. `WAIT` blocks the connection it is sent on: on the shared one it would hold up every
//!   rate limit behind it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::oneshot;

use crate::config::redis::{RedisSettings, SentinelSettings};
use crate::metrics::shared::SharedMetrics;

/// Redis could not be asked: the call failed or Redis is in its back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What a call is for (the `op` label).
#[derive(Debug, Clone, Copy)]
pub enum Op {
    RateLimit,
    ReplayGuard,
    Publish,
    Conversation,
    Channel,
    Journal,
    Migration,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::RateLimit => "rate_limit",
            Op::ReplayGuard => "replay_guard",
            Op::Publish => "publish",
            Op::Conversation => "conversation",
            Op::Channel => "channel",
            Op::Journal => "journal",
            Op::Migration => "migration",
        }
    }
}

/// Whether Redis is up, and when to try it again if not.
struct Health {
    epoch: Instant,
    /// 0 while up; else when (ms since `epoch`, plus 1) the next call may try.
    retry_at: AtomicU64,
    up: AtomicBool,
    backoff_ms: u64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a call may go to Redis: while up, always; while down, the first caller after the
    /// back-off (the others keep falling back until that one is answered).
    fn may_call(&self) -> bool {
        let at = self.retry_at.load(Ordering::Relaxed);
        if at == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= at
            && (self.retry_at)
                .compare_exchange(
                    at,
                    now + self.backoff_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self, metrics: &SharedMetrics) {
        if self.retry_at.load(Ordering::Relaxed) != 0 {
            self.retry_at.store(0, Ordering::Relaxed);
        }
        if !self.up.load(Ordering::Relaxed) && !self.up.swap(true, Ordering::Relaxed) {
            metrics.redis_up.set(1);
            tracing::info!(
                "redis is reachable: shared limits, replay guard and cache clears in force"
            );
        }
    }

    fn failed(&self, metrics: &SharedMetrics, op: Op, reason: &str) {
        self.retry_at
            .store(self.now_ms() + self.backoff_ms, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            metrics.redis_up.set(0);
            tracing::warn!(
                op = op.as_str(),
                reason,
                "redis is unavailable: each feature falls back as its on_redis_error says"
            );
        }
    }
}

/// A connection every call is made on: to one server (or the Sentinels' master), or to a cluster.
/// Cheap to clone (both are handles to a multiplexed connection).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Connections of their own for durable writes (each holds one `WAIT` at a time).
pub const DURABLE_CONNECTIONS: usize = 4;

/// The connections of the current server (or master, or cluster).
pub struct Conns {
    /// Every call but durable writes.
    main: Conn,
    /// Durable writes, round robin (none unless `wait_replicas` is set).
    durable: Vec<Conn>,
}

impl Conns {
    /// The connections to `client`'s server: one shared, and `durable` more.
    fn to(client: &redis::Client, s: &RedisSettings) -> RedisResult<Conns> {
        let manager = || ConnectionManager::new_lazy_with_config(client.clone(), manager_config(s));
        let durable = (0..durable_count(s))
            .map(|_| manager().map(Conn::Single))
            .collect::<RedisResult<Vec<Conn>>>()?;
        Ok(Conns {
            main: Conn::Single(manager()?),
            durable,
        })
    }
}

fn durable_count(s: &RedisSettings) -> usize {
    if s.deliveries_wait_replicas > 0 {
        DURABLE_CONNECTIONS
    } else {
        0
    }
}

/// Where the connection goes: one server, the master the Sentinels name, or a cluster.
enum Endpoint {
    Server(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// Clients of each node given, for the cache clear subscription.
        nodes: Vec<redis::Client>,
        /// The node to subscribe to next.
        next: AtomicU64,
    },
}

impl Endpoint {
    fn new(settings: &RedisSettings) -> Endpoint {
        match &settings.sentinel {
            None if settings.cluster.is_none() => Endpoint::Server(
                redis::Client::open(settings.url.as_str()).expect("validated with the config"),
            ),
            Some(s) => Endpoint::Sentinel(tokio::sync::Mutex::new(sentinel_client(s))),
            None => cluster(settings),
        }
    }

    /// A client of the server, of the master the Sentinels name now, or of the next cluster node.
    async fn client(&self, timeout: std::time::Duration) -> RedisResult<redis::Client> {
        match self {
            Endpoint::Server(c) => Ok(c.clone()),
            Endpoint::Cluster { nodes, next, .. } => {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                Ok(nodes[i % nodes.len()].clone())
            }
            Endpoint::Sentinel(sentinels) => {
                let mut s = sentinels.lock().await;
                tokio::time::timeout(timeout, s.async_get_client())
                    .await
                    .map_err(|_| {
                        RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
                    })?
            }
        }
    }

    fn is_sentinel(&self) -> bool {
        matches!(self, Endpoint::Sentinel(_))
    }
}

/// A client's server address.
fn address(c: &redis::Client) -> String {
    c.get_connection_info().addr().to_string()
}

fn cluster(settings: &RedisSettings) -> Endpoint {
    let c = settings.cluster.as_ref().expect("a cluster");
    let mut builder = redis::cluster::ClusterClientBuilder::new(c.nodes.clone())
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.timeout)
        .overall_response_timeout(Some(settings.timeout))
        .retries(1);
    if let Some(p) = &c.password {
        builder = builder.password(p);
    }
    let node = |url: &String| {
        let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .expect("validated with the config");
        if let Some(p) = &c.password {
            let redis = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(redis);
        }
        redis::Client::open(info).expect("validated with the config")
    };
    Endpoint::Cluster {
        client: builder.build().expect("validated with the config"),
        nodes: c.nodes.iter().map(node).collect(),
        next: AtomicU64::new(0),
    }
}

fn sentinel_client(s: &SentinelSettings) -> redis::sentinel::SentinelClient {
    let mut info = redis::RedisConnectionInfo::default().set_db(s.db);
    if let Some(p) = &s.password {
        info = info.set_password(p);
    }
    let node =
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    redis::sentinel::SentinelClient::build(
        s.sentinels.clone(),
        s.master.clone(),
        Some(node),
        redis::sentinel::SentinelServerType::Master,
    )
    .expect("validated with the config")
}

/// The shared Redis of this process.
pub struct SharedRedis {
    settings: RedisSettings,
    endpoint: Arc<Endpoint>,
    /// A look at the Sentinels is under way.
    following: Arc<AtomicBool>,
    manager: Arc<ArcSwapOption<Conns>>,
    /// The address the manager connects to.
    manager_addr: Arc<std::sync::Mutex<String>>,
    /// The next durable connection to use.
    next_durable: AtomicU64,
    /// One call at a time on each durable connection: a second would queue behind the first's
    /// `WAIT` and run out of `timeout_ms`.
    durable_busy: Vec<tokio::sync::Mutex<()>>,
    health: Arc<Health>,
    /// The Redis thread's runtime, for publishing from code that is not async.
    handle: tokio::runtime::Handle,
    /// This instance's id in cache clear messages, so it ignores its own.
    instance: String,
    channel: String,
    /// Cache clears received from other instances (or owed after a lost subscription).
    clears: Arc<AtomicU64>,
    metrics: &'static SharedMetrics,
    _stop: oneshot::Sender<()>,
}

impl SharedRedis {
    /// Starts the Redis thread (connecting, subscribing) and returns at once: until Redis answers,
    /// every feature falls back.
    pub fn start(settings: &RedisSettings) -> Arc<SharedRedis> {
        let endpoint = Arc::new(Endpoint::new(settings));
        let (stop, stopped) = oneshot::channel();
        let manager = Arc::new(ArcSwapOption::empty());
        let clears = Arc::new(AtomicU64::new(0));
        let instance = uuid::Uuid::new_v4().to_string();
        let channel = format!("{}auth-cache-clear", settings.key_prefix);
        let health = Arc::new(Health {
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            up: AtomicBool::new(false),
            backoff_ms: settings.backoff.as_millis() as u64,
        });
        let manager_addr = Arc::new(std::sync::Mutex::new(String::new()));
        let background = Background {
            manager_addr: manager_addr.clone(),
            endpoint: endpoint.clone(),
            settings: settings.clone(),
            manager: manager.clone(),
            health: health.clone(),
            clears: clears.clone(),
            instance: instance.clone(),
            channel: channel.clone(),
        };
        let metrics = SharedMetrics::global();
        metrics.redis_up.set(0);
        Arc::new(SharedRedis {
            handle: background.spawn(stopped),
            endpoint,
            manager_addr,
            next_durable: AtomicU64::new(0),
            durable_busy: (0..DURABLE_CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            following: Arc::new(AtomicBool::new(false)),
            health,
            settings: settings.clone(),
            manager,
            instance,
            channel,
            clears,
            metrics,
            _stop: stop,
        })
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// The key of `id` in the namespace `kind`: `<prefix><kind>:{<hex id>}` (the id a hash tag, so
    /// the keys of one id share a cluster slot).
    pub fn key(&self, kind: &str, id: &[u8]) -> String {
        format!("{}{kind}:{{{}}}", self.settings.key_prefix, hex::encode(id))
    }

    /// The key of `id` in the namespace `kind`, in the slot of `tag`: `<prefix><kind>:{<hex tag>}:<hex
    /// id>` (a rate limit's buckets, in the slot of their credential).
    pub fn tagged_key(&self, kind: &str, tag: &[u8], id: &[u8]) -> String {
        let prefix = &self.settings.key_prefix;
        format!(
            "{prefix}{kind}:{{{}}}:{}",
            hex::encode(tag),
            hex::encode(id)
        )
    }

    /// This instance's id (unique per process).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The Redis thread's runtime, for work that is not on a request (a periodic count).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// How many cache clears other instances asked for so far (compare with the last value seen).
    pub fn clears(&self) -> u64 {
        self.clears.load(Ordering::Acquire)
    }

    /// One Redis call within `timeout_ms`, unless Redis is in its back-off. Timed and counted.
    pub async fn call<T, F, Fut>(&self, op: Op, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conns = self.conns(op)?;
        self.timed(op, f(conns.main.clone())).await
    }

    /// The connections to call on, unless Redis is in its back-off or not connected yet (the first
    /// connection is made on the Redis thread).
    fn conns(&self, op: Op) -> Result<Arc<Conns>, Unavailable> {
        if !self.health.may_call() {
            return Err(Unavailable);
        }
        self.manager
            .load_full()
            .ok_or_else(|| self.failed(op, "connection"))
    }

    /// [`SharedRedis::call`] on a connection for durable writes (`f` ends with a `WAIT`); on the
    /// shared connection when there are none.
    pub async fn call_durable<T, F, Fut>(&self, op: Op, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conns = self.conns(op)?;
        let n = conns.durable.len();
        if n == 0 {
            return self.timed(op, f(conns.main.clone())).await;
        }
        // A free connection if there is one, else the next in turn once it is free.
        let start = self.next_durable.fetch_add(1, Ordering::Relaxed) as usize;
        let free = (0..n)
            .map(|k| (start + k) % n)
            .find_map(|i| self.durable_busy[i].try_lock().ok().map(|g| (i, g)));
        let (i, _busy) = match free {
            Some(found) => found,
            None => (start % n, self.durable_busy[start % n].lock().await),
        };
        self.timed(op, f(conns.durable[i].clone())).await
    }

    /// Runs one call within `timeout_ms`, timed; a failure counted and Redis marked down.
    async fn timed<T>(
        &self,
        op: Op,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, call).await;
        (self
            .metrics
            .redis_duration
            .with_label_values(&[op.as_str()]))
        .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => {
                self.health.succeeded(self.metrics);
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(op, error_reason(&e))),
            Err(_) => Err(self.failed(op, "timeout")),
        }
    }

    /// Counts a durable write that too few replicas acknowledged, and asks the Sentinels whether
    /// the master changed. Redis is not marked down: the other features keep using it.
    pub fn short_of_replicas(&self, op: Op) {
        (self.metrics.redis_errors)
            .with_label_values(&[op.as_str(), "replicas"])
            .inc();
        self.follow_master();
    }

    fn failed(&self, op: Op, reason: &'static str) -> Unavailable {
        (self.metrics.redis_errors)
            .with_label_values(&[op.as_str(), reason])
            .inc();
        self.health.failed(self.metrics, op, reason);
        self.follow_master();
        Unavailable
    }

    /// With Sentinels: asks them (once at a time, on the Redis thread) which server is the master,
    /// and connects to it if it is another one.
    fn follow_master(&self) {
        if !self.endpoint.is_sentinel() || self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        let (endpoint, manager, following, at) = (
            self.endpoint.clone(),
            self.manager.clone(),
            self.following.clone(),
            self.manager_addr.clone(),
        );
        let settings = self.settings.clone();
        self.handle.spawn(async move {
            follow(&endpoint, &manager, &at, &settings).await;
            following.store(false, Ordering::Release);
        });
    }

    /// Tells every other instance to clear its auth cache (in the background: this returns at once).
    pub fn publish_clear(self: &Arc<Self>) {
        let me = self.clone();
        self.handle.spawn(async move {
            let (channel, instance) = (me.channel.clone(), me.instance.clone());
            let published = me
                .call(Op::Publish, |mut conn| async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(instance)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await;
            match published {
                Ok(receivers) => {
                    me.metrics.clear_messages.with_label_values(&["published"]).inc();
                    tracing::info!(receivers, "auth cache clear published to the other instances");
                }
                Err(_) => tracing::warn!("auth cache clear not published (redis unavailable): other instances clear theirs when they resubscribe"),
            }
        });
    }
}

/// A reply value as text (a bulk or simple string), if it is one.
pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Why a call failed, as a bounded label.
fn error_reason(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "connection"
    } else {
        "response"
    }
}

/// Asks the Sentinels which server is the master and, if it is not the one connected to, connects to
/// it.
async fn follow(
    endpoint: &Endpoint,
    manager: &ArcSwapOption<Conns>,
    at: &std::sync::Mutex<String>,
    settings: &RedisSettings,
) {
    let Ok(client) = endpoint.client(settings.connect_timeout).await else {
        return;
    };
    let addr = address(&client);
    if *at.lock().unwrap_or_else(|e| e.into_inner()) == addr {
        return;
    }
    match Conns::to(&client, settings) {
        Ok(m) => {
            manager.store(Some(Arc::new(m)));
            tracing::warn!(master = %addr, "the sentinels name a new redis master: following it");
            *at.lock().unwrap_or_else(|e| e.into_inner()) = addr;
        }
        Err(e) => tracing::error!(error = ?e.kind(), "cannot connect to the new redis master"),
    }
}

/// The connection manager's settings.
fn manager_config(s: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(s.connect_timeout))
        .set_response_timeout(Some(s.timeout))
        .set_number_of_retries(1)
        .set_max_delay(s.backoff)
}

/// What runs on the Redis thread: the first connection, then the cache clear subscription.
struct Background {
    endpoint: Arc<Endpoint>,
    manager_addr: Arc<std::sync::Mutex<String>>,
    settings: RedisSettings,
    manager: Arc<ArcSwapOption<Conns>>,
    health: Arc<Health>,
    clears: Arc<AtomicU64>,
    instance: String,
    channel: String,
}

impl Background {
    /// Starts the thread and its runtime; returns the runtime's handle. The thread ends when `stop`
    /// is dropped.
    fn spawn(self, stop: oneshot::Receiver<()>) -> tokio::runtime::Handle {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("botbridge-redis".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the redis thread");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(async move {
                    tokio::select! {
                        _ = stop => {}
                        _ = async { tokio::join!(self.connect(), self.subscribe(), self.watch_sentinels()) } => {}
                    }
                });
            })
            .expect("start the redis thread");
        rx.recv().expect("the redis thread's runtime")
    }

    /// With Sentinels: listens to each one's `+switch-master` and follows the new master at once.
    /// Waiting for a failed call is not enough: after a manual failover the old master stays
    /// writable until the Sentinels demote it (up to ten seconds), and what it takes meanwhile is
    /// lost when it resyncs from the new one.
    async fn watch_sentinels(&self) {
        let Some(s) = &self.settings.sentinel else {
            return;
        };
        let watches = s
            .sentinels
            .iter()
            .map(|url| self.watch_sentinel(url, &s.master));
        futures_util::future::join_all(watches).await;
    }

    async fn watch_sentinel(&self, url: &str, master: &str) {
        let Ok(client) = redis::Client::open(url) else {
            return;
        };
        loop {
            let subscribed = tokio::time::timeout(self.settings.connect_timeout, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                RedisResult::Ok(pubsub)
            })
            .await;
            if let Ok(Ok(mut pubsub)) = subscribed {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    // `<master name> <old ip> <old port> <new ip> <new port>`
                    let text: String = msg.get_payload().unwrap_or_default();
                    if text.split(' ').next() == Some(master) {
                        follow(
                            &self.endpoint,
                            &self.manager,
                            &self.manager_addr,
                            &self.settings,
                        )
                        .await;
                    }
                }
            }
            tokio::time::sleep(self.settings.backoff).await;
        }
    }

    /// Makes the connection manager and waits for Redis to answer once before handing it out, so
    /// its connection (and every reconnection) is driven by this thread.
    async fn connect(&self) {
        let mut warned = false;
        let manager = loop {
            if let Some(m) = self.try_connect().await {
                break m;
            }
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(
                    "redis does not answer yet: each feature falls back as its on_redis_error says"
                );
            }
            tokio::time::sleep(self.settings.backoff).await;
        };
        self.manager.store(Some(Arc::new(manager)));
        self.health.succeeded(SharedMetrics::global());
    }

    /// A connection to the server (or the master the Sentinels name, or the cluster) once it
    /// answers.
    async fn try_connect(&self) -> Option<Conns> {
        if let Endpoint::Cluster { client, .. } = &*self.endpoint {
            let connect = client.get_async_connection();
            let Ok(Ok(mut conn)) =
                tokio::time::timeout(self.settings.connect_timeout, connect).await
            else {
                return None;
            };
            let ping = redis::cmd("PING");
            let answer = ping.query_async::<String>(&mut conn);
            return match tokio::time::timeout(self.settings.connect_timeout, answer).await {
                Ok(Ok(_)) => Some(Conns {
                    main: Conn::Cluster(conn),
                    durable: Vec::new(),
                }),
                _ => None,
            };
        }
        let client = self
            .endpoint
            .client(self.settings.connect_timeout)
            .await
            .ok()?;
        let addr = address(&client);
        let conns = match Conns::to(&client, &self.settings) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = ?e.kind(), "cannot set up the redis connection");
                return None;
            }
        };
        let mut conn = conns.main.clone();
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.settings.connect_timeout, answer).await {
            Ok(Ok(_)) => {
                *self.manager_addr.lock().unwrap_or_else(|e| e.into_inner()) = addr;
                Some(conns)
            }
            _ => None,
        }
    }

    /// Listens for cache clears from other instances, resubscribing after any loss.
    async fn subscribe(&self) {
        let metrics = SharedMetrics::global();
        loop {
            let subscribed = tokio::time::timeout(self.settings.connect_timeout, async {
                let client = self.endpoint.client(self.settings.connect_timeout).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                RedisResult::Ok(pubsub)
            })
            .await;
            if let Ok(Ok(mut pubsub)) = subscribed {
                // A clear may have been published while this instance was not listening.
                self.clears.fetch_add(1, Ordering::AcqRel);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let from: String = msg.get_payload().unwrap_or_default();
                    if from != self.instance {
                        self.clears.fetch_add(1, Ordering::AcqRel);
                        metrics
                            .clear_messages
                            .with_label_values(&["received"])
                            .inc();
                        tracing::info!("auth cache cleared at another instance's request");
                    }
                }
                tracing::warn!("lost the redis subscription for auth cache clears; resubscribing");
            }
            tokio::time::sleep(self.settings.backoff).await;
        }
    }
}
