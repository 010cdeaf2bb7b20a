//! The smallest pingora HTTP app (answers `ok` to anything), used by the benchmark to measure what
//! pingora itself costs per idle keep-alive connection, without any of botbridge's work.
//! Run: `cargo run --release --example idle_floor -- 127.0.0.1:18600`

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::ListenerConfig;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Ok;

#[async_trait]
impl ServeHttp for Ok {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let _ = session.drain_request_body().await;
        Response::builder()
            .status(200)
            .header("content-length", "2")
            .body(b"ok".to_vec())
            .expect("static response")
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18600".into());
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        pid_file: "/tmp/idle_floor.pid".into(),
        upgrade_sock: "/tmp/idle_floor.sock".into(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = Service::new("ok".to_string(), Ok);
    svc.add_listener(ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0)));
    server.add_service(svc);
    server.run_forever()
}
