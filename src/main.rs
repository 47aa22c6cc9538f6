//! The `vivace` binary: parses the command line and runs the server or a tool.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vivace::cli::{normalize_args, Cli, Command};

/// A profile of sustained ingest spent about a third of the CPU in glibc's malloc and free
/// (free-list churn: `unlink_chunk`, `malloc_consolidate`); mimalloc's per-thread free
/// lists do not churn. [`vivace::alloc::Allocator`] adds geometric growth for decodes.
#[global_allocator]
static GLOBAL: vivace::alloc::Allocator = vivace::alloc::Allocator;

/// Opts the process out of transparent huge pages. mimalloc asks for them on its arenas,
/// and a 2 MiB page stays resident while any byte of it is live: under sustained ingest
/// (traces freed a cut at a time) peak RSS was 1.44–1.48 GiB with them, 1.22–1.26 GiB
/// without, for the same CPU per span.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> std::process::ExitCode {
    no_huge_pages();
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    match cli.command {
        Command::Serve(args) => {
            let cfg = match args.load_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("vivace: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_logging(&cfg.server.log_level, &cfg.server.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("vivace: cannot start runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(vivace::app::run(cfg, shutdown_signal()));
            // Do not wait on stray blocking work (an encode of a block that will be redone
            // from the WAL): everything acknowledged is already durable.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "vivace failed");
                    eprintln!("vivace: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Blocks(cmd) => run_tool(async move { vivace::cli::blocks(&cmd).await }),
        Command::Query(cmd) => run_tool(async move { vivace::cli::query(&cmd).await }),
        Command::Vulture(args) => vivace::cli::vulture::main(args),
    }
}

/// Runs a bucket command and prints its output; errors go to stderr with exit code 1.
fn run_tool(
    f: impl std::future::Future<Output = Result<String, vivace::cli::ToolError>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vivace: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(out) => {
            println!("{}", out.trim_end());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vivace: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: &str) {
    let filter = EnvFilter::try_from_env("VIVACE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, not in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
