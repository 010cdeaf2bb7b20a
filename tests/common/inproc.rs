//! The in-process harness: the proxy's services inside the test, on listeners the test binds.
//!
//! [`Proxy::start`] parses the config text with `botbridge::config::parse`, assembles the proxy with
//! the function `main` uses (`botbridge::server::assemble`: the chat, admin and demo apps, the pool
//! keeper and async deliveries), and serves each app on a tokio listener bound to `127.0.0.1:0`
//! (and runs the background jobs on the test's runtime) before the config is even read: no port is ever chosen by number,
//! so no two tests can race for one. Each accepted connection is served by the services' own pingora
//! app (`App::process_new`) on a task of the test's runtime, as pingora's accept loop does.
//!
//! The config's listen addresses mean nothing here, but the text must still parse: `{PORT}`,
//! `{ADMIN}` and `{DEMO}` become the ports actually bound (the demo listener is bound first, since the
//! shipped config's backend URLs name it) and `{DIR}` a temporary folder. Secrets the test configs
//! read from the environment ([`TEST_SECRETS`]) are written into the text instead, so the harness never
//! touches the process environment.
//!
//! The chat service reads the wall clock through the proxy's [`TestClock`].
//!
//! What differs from the binary: no log output to read (no tracing subscriber is installed), no
//! signals, no worker threads of its own (it runs on the test's runtime), and unbuffered L4 streams
//! (pingora's per-listener read buffer is crate-private). Tests of those stay on [`SpawnedProxy`].
//!
//! Metrics are the process-wide Prometheus registry, shared by every in-process proxy of a test
//! binary, whose tests run in parallel. A test that asserts metric values starts its proxy with
//! [`Proxy::start_alone`] and compares scrapes (see [`grew`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use botbridge::service::Clock;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use super::{unix_now, Urls, TEST_SECRETS};

/// The wall clock an in-process proxy's chat service reads: the system clock, until a test holds it
/// still. Clones share the setting.
#[derive(Clone, Default)]
pub struct TestClock(Arc<Mutex<Option<SystemTime>>>);

impl TestClock {
    /// What the proxy reads now.
    pub fn now(&self) -> SystemTime {
        self.0.lock().unwrap().unwrap_or_else(SystemTime::now)
    }

    /// Holds the clock at `t`.
    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap() = Some(t);
    }

    /// Holds the clock at the current whole second, and returns it in Unix seconds.
    pub fn freeze(&self) -> u64 {
        let now = unix_now();
        self.set(UNIX_EPOCH + Duration::from_secs(now));
        now
    }

    /// Back to the system clock.
    pub fn resume(&self) {
        *self.0.lock().unwrap() = None;
    }

    fn as_clock(&self) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

/// The proxy's services, in this process.
pub struct Proxy {
    /// The chat listener's port.
    pub port: u16,
    pub admin_port: u16,
    /// The demo bots' address, when the config has `[demo]`.
    pub demo_addr: Option<SocketAddr>,
    /// The clock the chat service reads.
    pub clock: TestClock,
    /// The config as parsed (placeholders filled in); `POST /reload` on the admin listener reads it.
    pub config_path: PathBuf,
    tasks: Vec<JoinHandle<()>>,
    /// Connection tasks that panicked (a bug in the proxy: the test fails when the proxy is dropped).
    panics: Arc<AtomicUsize>,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy's services on `config` (placeholders: see the module docs).
    pub async fn start(config: &str) -> Proxy {
        Self::start_with(config, MetricsGuard::shared().await).await
    }

    /// As [`Proxy::start`], and no other in-process proxy of this test binary runs while this one
    /// lives (it waits for those running to stop, and those starting wait for it), so the changes in
    /// the process-wide metrics are this proxy's own. For tests that assert metric values. The test
    /// must hold no other in-process proxy meanwhile (it would wait for itself).
    pub async fn start_alone(config: &str) -> Proxy {
        Self::start_with(config, MetricsGuard::exclusive().await).await
    }

    async fn start_with(config: &str, metrics: MetricsGuard) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let bind = || TcpListener::bind("127.0.0.1:0");
        let demo = if config.contains("{DEMO}") {
            Some(bind().await.unwrap())
        } else {
            None
        };
        let (chat, admin) = (bind().await.unwrap(), bind().await.unwrap());
        let port_of = |l: &TcpListener| l.local_addr().unwrap().port().to_string();
        let mut text = config
            .replace("{PORT}", &port_of(&chat))
            .replace("{ADMIN}", &port_of(&admin))
            .replace("{DIR}", &dir.path().display().to_string());
        if let Some(d) = &demo {
            text = text.replace("{DEMO}", &port_of(d));
        }
        for (var, value) in TEST_SECRETS {
            text = text.replace(&format!("{{ env = \"{var}\" }}"), &format!("\"{value}\""));
        }
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = botbridge::config::parse(&text)
            .unwrap_or_else(|e| panic!("the test config is invalid: {e}\n{text}"));

        let clock = TestClock::default();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let panics = Arc::new(AtomicUsize::new(0));
        let conns = Connections {
            shutdown,
            panics: panics.clone(),
            _metrics: Arc::new(metrics),
        };
        let (port, admin_port) = (
            chat.local_addr().unwrap().port(),
            admin.local_addr().unwrap().port(),
        );
        // What `main` runs: the same assembly, served on this test's listeners.
        let parts =
            botbridge::server::assemble(Arc::new(config), config_path.clone(), clock.as_clock());
        let mut tasks = vec![
            serve(chat, parts.chat, conns.clone()),
            serve(admin, parts.admin, conns.clone()),
            background(parts.pools, conns.clone()),
            background(parts.deliveries, conns.clone()),
        ];
        let mut demo_addr = None;
        match (parts.demo, demo) {
            (Some(bots), Some(listener)) => {
                demo_addr = Some(listener.local_addr().unwrap());
                tasks.push(serve(listener, bots, conns.clone()));
            }
            (Some(_), None) => panic!("in-process, give `[demo] listen` as 127.0.0.1:{{DEMO}}"),
            (None, _) => {}
        }
        Proxy {
            port,
            admin_port,
            demo_addr,
            clock,
            config_path,
            tasks,
            panics,
            _shutdown: shutdown_tx,
            _dir: dir,
        }
    }
}

impl Urls for Proxy {
    fn chat_port(&self) -> u16 {
        self.port
    }
    fn admin_port(&self) -> u16 {
        self.admin_port
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting an accept loop drops its connection tasks too.
        for t in &self.tasks {
            t.abort();
        }
        let panics = self.panics.load(Ordering::SeqCst);
        if panics > 0 && !std::thread::panicking() {
            panic!("{panics} connection task(s) of the proxy panicked (see above)");
        }
    }
}

/// What every connection task of a proxy holds.
#[derive(Clone)]
struct Connections {
    shutdown: ShutdownWatch,
    /// Connection tasks that panicked.
    panics: Arc<AtomicUsize>,
    /// The proxy's share of the metrics, released once its last connection task is gone (not merely
    /// told to stop), so nothing it still does lands in another test's counts.
    _metrics: Arc<MetricsGuard>,
}

/// Accepts connections on `listener` until aborted, serving each with `app` as pingora's listening
/// service does: `process_new` again for as long as it hands the connection back.
fn serve<A: ServerApp + Send + Sync + 'static>(
    listener: TcpListener,
    app: A,
    conns: Connections,
) -> JoinHandle<()> {
    let app = Arc::new(app);
    tokio::spawn(async move {
        // Owned here, so aborting this task aborts the connections.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let (app, conns) = (app.clone(), conns.clone());
                    connections.spawn(async move {
                        let mut stream = L4Stream::from(tcp);
                        let _ = stream.set_nodelay();
                        let shutdown = &conns.shutdown;
                        let mut next = app.process_new(Box::new(stream), shutdown).await;
                        while let Some(stream) = next {
                            next = app.process_new(stream, shutdown).await;
                        }
                    });
                }
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if done.as_ref().is_err_and(|e| e.is_panic()) {
                        conns.panics.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    })
}

/// Runs one of the proxy's background jobs (pool health and DNS, async deliveries) until aborted.
fn background<B: BackgroundService + Send + Sync + 'static>(
    job: B,
    conns: Connections,
) -> JoinHandle<()> {
    tokio::spawn(async move { job.start(conns.shutdown.clone()).await })
}

/// A share of the process-wide metrics: any number of in-process proxies share them, or one has them
/// alone ([`Proxy::start_alone`]). Starting a shared proxy waits only while one runs alone (so a test
/// may start a second proxy while holding the first); one that runs alone waits until none runs.
struct MetricsGuard {
    exclusive: bool,
}

/// (shared proxies running, whether one runs alone)
static METRICS_USERS: Mutex<(usize, bool)> = Mutex::new((0, false));
static METRICS_RELEASED: Notify = Notify::const_new();

impl MetricsGuard {
    async fn shared() -> Self {
        Self::acquire(false).await
    }

    async fn exclusive() -> Self {
        Self::acquire(true).await
    }

    async fn acquire(exclusive: bool) -> Self {
        // Every other test of the binary together runs for far less; longer is a test waiting for a
        // proxy it holds itself.
        tokio::time::timeout(Duration::from_secs(120), Self::wait_for_turn(exclusive))
            .await
            .expect(
                "waited 2 minutes for the metrics: does this test hold another in-process proxy?",
            )
    }

    async fn wait_for_turn(exclusive: bool) -> Self {
        loop {
            // Registered before the check, so a release between the check and the wait still wakes us.
            let released = METRICS_RELEASED.notified();
            {
                let mut users = METRICS_USERS.lock().unwrap();
                let (shared, alone) = &mut *users;
                if exclusive && *shared == 0 && !*alone {
                    *alone = true;
                    return MetricsGuard { exclusive };
                }
                if !exclusive && !*alone {
                    *shared += 1;
                    return MetricsGuard { exclusive };
                }
            }
            released.await;
        }
    }
}

impl Drop for MetricsGuard {
    fn drop(&mut self) {
        {
            let mut users = METRICS_USERS.lock().unwrap_or_else(|e| e.into_inner());
            if self.exclusive {
                users.1 = false;
            } else {
                users.0 -= 1;
            }
        }
        METRICS_RELEASED.notify_waiters();
    }
}
