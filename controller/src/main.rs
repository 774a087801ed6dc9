//! The `switchyard` binary.

use std::process::ExitCode;

use clap::Parser;
use switchyard_controller::cli::{Cli, Command, LogFormat};
use switchyard_controller::{demo, run, standalone};
use tracing_subscriber::EnvFilter;

// jemalloc, configured in `.cargo/config.toml`: background threads return
// freed pages to the kernel about a second after a burst (say, 10,000
// connections opened and abandoned), where glibc's malloc keeps them
// resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }

    let workers = match &cli.command {
        Command::Standalone(a) => a.dataplane.workers,
        Command::Run(a) => a.dataplane.workers,
        Command::Echo(a) => Some(a.workers),
        _ => None,
    }
    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    .max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("switchyard: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Standalone(args) => standalone::run(*args).await,
            Command::Run(args) => run::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Echo(args) => {
                let listener = tokio::net::TcpListener::bind(args.addr).await?;
                tracing::info!(addr = %listener.local_addr()?, name = %args.name, "echo backend listening");
                demo::echo::serve_with_delay(listener, args.name, std::time::Duration::from_millis(args.delay_ms))
                    .await;
                Ok(())
            }
            Command::Crd => {
                print!("{}", switchyard_crds::crd_yaml());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("switchyard: {err:#}");
            ExitCode::FAILURE
        }
    }
}
