//! Assembles the pingora server from a validated configuration: the chat listener, the admin
//! listener and, when configured, the demo bot, each as its own service.

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
use crate::reload::{Reloader, SighupListener};
use crate::service::{ChatService, Runtime};

/// Open connections of the admin listener (metrics scrapes, health checks, reloads): few, and
/// private, so a small fixed cap keeps them from using the chat listener's descriptors.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Command-line switches that reach pingora.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Take over the listening sockets of a running instance (graceful upgrade; see README).
    pub upgrade: bool,
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

    let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(config.clone(), None)));
    let reloader = Arc::new(Reloader::new(config_path, runtime.clone()));
    // Plain TCP even with TLS: the app does the handshake, under its connection limits.
    let listener = ListenerConfig::tcp(s.listen.to_string())
        .l4_buffer(L4BufferSettings::default().read(s.read_buffer_bytes));
    let limits = ClientLimits::from_config(s).fit_open_file_limit();
    let chat_service = ChatService::new(runtime.clone());
    let deliveries = DeliveryLifecycle {
        deliveries: chat_service.deliveries(),
        runtime: runtime.clone(),
        grace: std::time::Duration::from_secs(s.grace_period_seconds),
    };
    server.add_service(background_service("deliveries", deliveries));
    let mut chat_app = App::new("chat", chat_service, limits);
    if s.tls {
        // Cannot fail: no file is read here (the identity was loaded with the configuration).
        let tls = crate::tls::settings(runtime.clone()).expect("TLS settings without files");
        chat_app = chat_app.with_tls(tls.build());
    }
    let mut chat = Service::new("chat".to_string(), chat_app);
    chat.add_listener(listener);
    chat.threads = Some(s.threads);

    let mut admin = Service::new(
        "admin".to_string(),
        App::new(
            "admin",
            AdminService::new(reloader.clone()),
            limits.with_max_connections(ADMIN_MAX_CONNECTIONS),
        ),
    );
    admin.add_tcp(&config.process.admin.listen.to_string());
    admin.threads = Some(1);

    if let Some(demo) = &config.demo {
        let mut bot = Service::new(
            "demo-bot".to_string(),
            App::new(
                "demo",
                DemoBot::new(demo.key.clone(), demo.haptik.clone()),
                limits.with_max_connections(limits.max_connections),
            ),
        );
        bot.add_tcp(&demo.listen.to_string());
        bot.threads = Some(1);
        server.add_service(bot);
        tracing::info!(listen = %demo.listen, "demo bot enabled");
    }
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
    server.add_service(background_service(
        "config reload",
        SighupListener(reloader),
    ));
    let pools = runtime.clone();
    server.add_service(background_service(
        "backend pools",
        PoolKeeper(move || pools.load().pools.clone()),
    ));
    server.add_service(chat);
    server.add_service(admin);
    server.run_forever()
}
