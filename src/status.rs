//! `lifeline status`: a compact table read from the cluster (being written).

/// Arguments of `lifeline status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Namespace to show; all namespaces when omitted.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Errors of `lifeline status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not built yet.
    #[error("lifeline status is not implemented yet")]
    NotImplemented,
}

/// Render the status table.
pub async fn render(_client: kube::Client, _args: &StatusArgs) -> Result<String, Error> {
    Err(Error::NotImplemented)
}
