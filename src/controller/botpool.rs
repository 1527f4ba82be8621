//! The botpool controller (being written; see its issue).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Context;

/// Run the botpool controller until `shutdown` is cancelled.
pub async fn run(_ctx: Arc<Context>, shutdown: CancellationToken) {
    tracing::warn!("the botpool controller is not implemented yet");
    shutdown.cancelled().await;
}
