//! The delivery queue's life in the server: a pingora background service that takes over what
//! processes that are gone still owed (journal files, idle Redis entries, spool files) when the
//! process starts and every second after (so an upgraded process also takes its predecessor's
//! journal once it exits), and on a graceful stop or upgrade lets deliveries finish until a second
//! before the grace period ends, then leaves what remains in the journal (or the spool).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Deliveries;
use crate::service::Runtime;

/// How often the journal and the spool are looked at.
const SPOOL_SCAN: Duration = Duration::from_secs(1);

/// The background service.
pub struct DeliveryLifecycle {
    pub deliveries: Deliveries,
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// `server.grace_period_seconds`.
    pub grace: Duration,
}

#[async_trait]
impl BackgroundService for DeliveryLifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut scan = tokio::time::interval(SPOOL_SCAN);
        loop {
            tokio::select! {
                _ = scan.tick() => {
                    let runtime = self.runtime.load_full();
                    self.deliveries.recover(&runtime.config.clients).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        // pingora waits the whole grace period before it stops the runtimes: finish a second
        // before, so the spool is written while everything still runs.
        let budget = self.grace.saturating_sub(Duration::from_secs(1));
        let budget = budget.max(Duration::from_millis(500));
        let spooled = self.deliveries.shutdown(Instant::now() + budget).await;
        tracing::info!(spooled, "delivery queue stopped");
        // The last spans (the deliveries' among them) go to the collector before the process ends.
        crate::otel::flush().await;
    }
}
