//! The command line. Tempo's single-dash flags (`-config.file=x`, `-target=all`) are
//! accepted as well as the `--` forms.

mod block_tools;
mod tools;
pub mod vulture;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use tools::{blocks, query, BlocksCommand, QueryCommand, ToolError};

#[derive(Parser, Debug)]
#[command(
    name = "vivace",
    version,
    about = "A tracing backend that speaks Grafana Tempo's API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (every component by default).
    Serve(ServeArgs),
    /// Inspect the blocks in a bucket.
    #[command(subcommand)]
    Blocks(BlocksCommand),
    /// Query a bucket directly, without a server.
    #[command(subcommand)]
    Query(QueryCommand),
    /// Write traces to a target continuously and check they read back (a canary).
    Vulture(vulture::VultureArgs),
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// YAML config file shaped like tempo.yaml; without it the embedded defaults are used.
    #[arg(long = "config.file", env = "VIVACE_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Replace ${VAR} and ${VAR:-default} in the config file with environment values.
    #[arg(long = "config.expand-env")]
    pub expand_env: bool,
    /// Which components to run: all, querier, query-frontend, compactor.
    #[arg(long = "target", env = "VIVACE_TARGET")]
    pub target: Option<String>,
    /// Overrides server.http_listen_port.
    #[arg(long = "server.http-listen-port")]
    pub http_listen_port: Option<u16>,
    /// Overrides storage.trace.wal.path.
    #[arg(long = "storage.trace.wal.path")]
    pub wal_path: Option<PathBuf>,
    /// Overrides storage.trace.local.path.
    #[arg(long = "storage.trace.local.path")]
    pub local_path: Option<PathBuf>,
}

/// Turns Go-style `-flag=value` into `--flag=value` so Tempo command lines work.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let long = a.starts_with('-') && !a.starts_with("--") && a.len() > 2;
            if i > 0
                && long
                && a[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
            {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

impl ServeArgs {
    pub fn load_config(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        let mut cfg = match &self.config_file {
            Some(p) => crate::config::Config::from_file(p, self.expand_env)?,
            None => crate::config::Config::default(),
        }
        .with_default_receivers();
        if let Some(t) = &self.target {
            cfg.target = Some(t.clone());
        }
        if let Some(p) = self.http_listen_port {
            cfg.server.http_listen_port = p;
        }
        if let Some(p) = &self.wal_path {
            cfg.storage.trace.wal.path = p.clone();
        }
        if let Some(p) = &self.local_path {
            cfg.storage.trace.local.path = p.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_flags() {
        let args = normalize_args(
            [
                "vivace",
                "serve",
                "-config.file=/x.yaml",
                "-target=all",
                "-h",
            ]
            .map(String::from),
        );
        assert_eq!(
            args,
            vec![
                "vivace",
                "serve",
                "--config.file=/x.yaml",
                "--target=all",
                "-h"
            ]
        );
        let cli = Cli::try_parse_from(&args[..4]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("parsed as serve")
        };
        assert_eq!(s.config_file, Some(PathBuf::from("/x.yaml")));
        assert_eq!(s.target.as_deref(), Some("all"));
    }
}
