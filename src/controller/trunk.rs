//! The trunk controller (being written; see its issue).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Context;

/// Run the trunk controller until `shutdown` is cancelled.
pub async fn run(_ctx: Arc<Context>, shutdown: CancellationToken) {
    tracing::warn!("the trunk controller is not implemented yet");
    shutdown.cancelled().await;
}
