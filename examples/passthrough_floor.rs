//! The pingora floor for the benchmark: the same plumbing botbridge uses (a pingora HTTP app on one
//! thread, the same one-write upstream client and pool) doing no work of its own: it forwards the
//! request body as is and returns the backend's body. No authentication, translation, signing,
//! metrics or logging. The benchmark runs it beside botbridge, nginx and haproxy, so the gap between
//! it and haproxy is pingora's, and the gap between it and botbridge is botbridge's own work.
//! Run: `cargo run --release --example passthrough_floor -- LISTEN BACKEND_ADDR [SPIN_NS]`
//!
//! SPIN_NS (default 0) busy-waits that long in user space on every request: a stand-in for
//! botbridge's own work, so the benchmark can show what a slower user-space path does to the kernel
//! time of the same syscalls (bench/RESULTS.md, "Where the time goes").

use async_trait::async_trait;
use botbridge::conn::ClientLimits;
use botbridge::httpio::{self, Answer, App, Handler};
use botbridge::upstream::{self, RequestBytes, Upstream};
use botbridge::upstream::{Endpoint, EndpointUrl};
use pingora::listeners::ListenerConfig;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Forward {
    spin: std::time::Duration,
    upstream: Upstream,
    endpoint: Endpoint,
    peer: upstream::BackendPeer,
}

#[async_trait]
impl Handler for Forward {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let Ok(body) = httpio::read_body(session, 64 * 1024).await else {
            return Answer::text(400, "bad body");
        };
        if !self.spin.is_zero() {
            spin(self.spin);
        }
        let mut req = RequestBytes::post("/", body.len());
        req.header("host", &self.endpoint.authority)
            .header("content-type", "application/json");
        match self
            .upstream
            .exchange(
                &self.peer,
                &self.endpoint,
                &req.body(&body),
                std::time::Instant::now(),
            )
            .await
        {
            Ok(x) => Answer::json(x.status, x.body.to_vec()),
            Err(e) => {
                let e = botbridge::error::ProxyError::from(e);
                Answer::text(e.status, e.message.into_owned())
            }
        }
    }
}

/// Burns `time` of CPU in user space (the clock is read through the vDSO, without a syscall).
fn spin(time: std::time::Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < time {
        std::hint::spin_loop();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18601".into());
    let backend: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18700".into())
        .parse()
        .expect("backend address");
    let spin_ns: u64 = args.next().map_or(0, |n| n.parse().expect("SPIN_NS"));
    let url = EndpointUrl {
        name: "backend".into(),
        tls: false,
        host: backend.ip().to_string(),
        authority: backend.to_string(),
        path: "/".into(),
        connect_timeout: std::time::Duration::from_secs(2),
        read_timeout: std::time::Duration::from_secs(30),
        pool_idle_timeout: std::time::Duration::from_secs(30),
    };
    let endpoint = Endpoint::new(backend, url);
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 64,
        pid_file: "/tmp/passthrough_floor.pid".into(),
        upgrade_sock: "/tmp/passthrough_floor.sock".into(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let app = Forward {
        spin: std::time::Duration::from_nanos(spin_ns),
        upstream: Upstream::new(64, 1024 * 1024),
        peer: upstream::peer_for(&endpoint),
        endpoint,
    };
    let app = App::new("floor", app, ClientLimits::default());
    let mut svc = Service::new("floor".to_string(), app);
    svc.add_listener(ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().read(0)));
    server.add_service(svc);
    server.run_forever()
}
