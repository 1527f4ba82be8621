//! `lifeline sip-sync`: the Kamailio sidecar (being written; see its issue).

/// Arguments of `lifeline sip-sync`.
#[derive(clap::Args, Debug, Clone)]
pub struct SyncArgs {}

/// Errors of the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not built yet.
    #[error("lifeline sip-sync is not implemented yet")]
    NotImplemented,
}

/// Run the sidecar until `shutdown` is cancelled.
pub async fn run(
    _args: SyncArgs,
    _shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
