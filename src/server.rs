//! Assembles the running proxy from a validated configuration ([`assemble`]: the chat app, the
//! admin app, the demo bots' app and the background jobs, the one place that wires them) and runs
//! it on pingora ([`run`]: each app as a service on its listener). The in-process test harness
//! serves the same [`Assembly`] on listeners of its own, so tests run what `main` runs.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::services::background::background_service;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::admin::AdminService;
use crate::config::Config;
use crate::conn::ClientLimits;
use crate::delivery::background::DeliveryLifecycle;
use crate::demo::DemoBot;
use crate::httpio::App;
use crate::pool::keeper::PoolKeeper;
use crate::pool::Pools;
use crate::reload::{Reloader, SighupListener};
use crate::service::{ChatService, Clock, Runtime};

/// Open connections of the admin listener (metrics scrapes, health checks, reloads): few, and
/// private, so a small fixed cap keeps them from using the chat listener's descriptors.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Command-line switches that reach pingora.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Take over the listening sockets of a running instance (graceful upgrade; see docs/book/src/operations.md).
    pub upgrade: bool,
}

/// The running proxy's parts, wired to one reloadable runtime.
pub struct Assembly {
    /// The configuration in force, replaced by each reload.
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub reloader: Arc<Reloader>,
    /// The chat listener's app (HTTPS when `[server] tls` is set).
    pub chat: App<ChatService>,
    pub admin: App<AdminService>,
    /// The demo bots' app, with `[demo]`.
    pub demo: Option<App<DemoBot>>,
    /// Async mode's deliveries: restored at start, spooled at a stop.
    pub deliveries: DeliveryLifecycle,
    /// The backend pools' health checks and DNS refresh.
    pub pools: PoolKeeper<Box<dyn Fn() -> Arc<Pools> + Send + Sync>>,
}

/// Wires the proxy for `config` (read from `config_path`, which reloads read again), with `clock`
/// as the request path's wall clock.
pub fn assemble(config: Arc<Config>, config_path: PathBuf, clock: Clock) -> Assembly {
    let s = &config.process.server;
    let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(config.clone(), None)));
    crate::memory::release_free_memory();
    let reloader = Arc::new(Reloader::new(config_path, runtime.clone()));
    let limits = ClientLimits::from_config(s).fit_open_file_limit();
    let chat_service = ChatService::with_clock(runtime.clone(), clock);
    let deliveries = DeliveryLifecycle {
        deliveries: chat_service.deliveries(),
        runtime: runtime.clone(),
        grace: std::time::Duration::from_secs(s.grace_period_seconds),
    };
    let mut chat = App::new("chat", chat_service, limits);
    if s.tls {
        // Cannot fail: no file is read here (the identity was loaded with the configuration).
        let tls = crate::tls::settings(runtime.clone()).expect("TLS settings without files");
        chat = chat.with_tls(tls.build());
    }
    let admin_limits = limits.private_listener(ADMIN_MAX_CONNECTIONS);
    let admin_service = AdminService::new(reloader.clone(), deliveries.deliveries.clone());
    let admin = App::new("admin", admin_service, admin_limits);
    let demo = (config.demo.as_ref()).map(|d| {
        App::new(
            "demo",
            DemoBot::from_config(d),
            limits.private_listener(limits.max_connections),
        )
    });
    let pools = runtime.clone();
    Assembly {
        pools: PoolKeeper(Box::new(move || pools.load().pools.clone())),
        runtime,
        reloader,
        chat,
        admin,
        demo,
        deliveries,
    }
}

/// Runs the proxy until it is told to stop. Never returns.
pub fn run(config: Config, config_path: PathBuf, opts: RunOptions) -> ! {
    let config = Arc::new(config);
    let s = &config.process.server;
    let conf = ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.grace_period_seconds),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        upstream_keepalive_pool_size: s.upstream_pool_size,
        // One runtime per listener thread; stealing work between them buys nothing here.
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let parts = assemble(
        config.clone(),
        config_path,
        Arc::new(std::time::SystemTime::now),
    );
    // Plain TCP even with TLS: the app does the handshake, under its connection limits.
    let listener = ListenerConfig::tcp(s.listen.to_string())
        .l4_buffer(L4BufferSettings::default().read(s.read_buffer_bytes));
    server.add_service(background_service("deliveries", parts.deliveries));
    let mut chat = Service::new("chat".to_string(), parts.chat);
    chat.add_listener(listener);
    chat.threads = Some(s.threads);
    let mut admin = Service::new("admin".to_string(), parts.admin);
    admin.add_tcp(&config.process.admin.listen.to_string());
    admin.threads = Some(1);
    if let (Some(app), Some(demo)) = (parts.demo, &config.demo) {
        let mut bot = Service::new("demo-bot".to_string(), app);
        bot.add_tcp(&demo.listen.to_string());
        bot.threads = Some(1);
        server.add_service(bot);
        tracing::info!(listen = %demo.listen, "demo bot enabled");
    }
    log_start(&config);
    server.add_service(background_service(
        "config reload",
        SighupListener(parts.reloader),
    ));
    server.add_service(background_service("backend pools", parts.pools));
    server.add_service(chat);
    server.add_service(admin);
    // The runtime holds the configuration from here. Kept in this frame, which never returns,
    // the first configuration would stay in memory after every reload replaced it (a heap
    // profile of 100,000 credentials: 44.8 MB of heap at start, 87.5 MB after any reload).
    drop(config);
    server.run_forever()
}

/// The start's log lines: warnings about demo credentials and an open admin listener, then what runs.
fn log_start(config: &Config) {
    let s = &config.process.server;
    for caller in &config.clients.demo_credentials_in_use {
        tracing::warn!(
            caller = %caller,
            "a caller uses the shipped demo credentials: replace them before exposing the proxy"
        );
    }
    if let Some(warning) =
        crate::config::admin::exposure_warning(&config.process.admin, &config.admin_lock)
    {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        listen = %s.listen,
        tls = s.tls,
        admin = %config.process.admin.listen,
        routes = config.routes.len(),
        backends = config.backends.len(),
        version = env!("CARGO_PKG_VERSION"),
        "botbridge starting"
    );
}
