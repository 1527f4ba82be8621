//! The `lifeline` binary: parses arguments and wires tasks; the logic lives in the library.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use lifeline::telemetry::{LogFormat, init_logging};

#[derive(Parser)]
#[command(
    name = "lifeline",
    version,
    about = "Keeps a contact center reachable when the network under it fails"
)]
struct Cli {
    /// Log format (the filter comes from RUST_LOG, default `info`).
    #[arg(long, global = true, env = "LIFELINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: probes trunks, runs bot pools, plans fallback, writes routing.
    Operator(lifeline::operator::OperatorArgs),
    /// Run the Kamailio sidecar: applies the routing ConfigMap to Kamailio within milliseconds.
    SipSync(lifeline::sip_sync::SyncArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Show policies, regions, active tiers and bot capacity from the cluster.
    Status(lifeline::status_command::StatusArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => print!("{}", lifeline::crd::crds_yaml()?),
        Command::Operator(args) => {
            init_logging(cli.log_format);
            lifeline::operator::run(args)
                .await
                .context("operator failed")?;
        }
        Command::SipSync(args) => {
            init_logging(cli.log_format);
            let shutdown = lifeline::operator::shutdown_signal();
            lifeline::sip_sync::run(args, shutdown)
                .await
                .context("sip-sync failed")?;
        }
        Command::Status(args) => {
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration (KUBECONFIG)")?;
            print!("{}", lifeline::status_command::render(client, &args).await?);
        }
    }
    Ok(())
}
