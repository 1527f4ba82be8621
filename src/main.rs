//! The `lifeline` binary: parses arguments and wires tasks; the logic lives in the library.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeline",
    version,
    about = "Keeps a contact center reachable when the network under it fails"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", lifeline::crd::crds_yaml()?),
    }
    Ok(())
}
