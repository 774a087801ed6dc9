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

    let serving = matches!(cli.command, Command::Standalone(_) | Command::Run(_));
    let workers = match &cli.command {
        Command::Standalone(a) => a.dataplane.workers,
        Command::Run(a) => a.dataplane.workers,
        Command::Echo(a) => Some(a.workers),
        _ => None,
    }
    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    .max(1);
    // Serving modes run their controller on a second runtime of its own
    // (`runtime::ControlPlane`, threads "switchyard-ctl"), so the
    // dataplane's runtime serves requests only. With one worker it is a
    // current-thread runtime on a thread of its own: the same single
    // serving thread, without the multi-thread scheduler's work-stealing
    // bookkeeping and cross-thread wake-ups (S2 measured in
    // docs/performance.md, History).
    let single = serving && workers == 1;
    let runtime = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    }
    .thread_name("switchyard-dp")
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("switchyard: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let main = async move {
        match cli.command {
            Command::Standalone(args) => standalone::run(*args).await,
            Command::Run(args) => run::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Echo(args) => {
                let delay = std::time::Duration::from_millis(args.delay_ms);
                anyhow::ensure!(
                    args.ports == 1 || args.addr.port() != 0,
                    "--ports {} needs a port number in --addr",
                    args.ports
                );
                let mut listeners = Vec::with_capacity(usize::from(args.ports));
                for i in 0..args.ports {
                    let Some(port) = args.addr.port().checked_add(i) else {
                        anyhow::bail!("--ports {} from {} runs past port 65535", args.ports, args.addr)
                    };
                    let addr = std::net::SocketAddr::new(args.addr.ip(), port);
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
                    listeners.push(listener);
                }
                tracing::info!(addr = %listeners[0].local_addr()?, ports = args.ports, name = %args.name,
                    "echo backend listening");
                let name: std::sync::Arc<str> = args.name.into();
                let serving: Vec<_> = listeners
                    .into_iter()
                    .map(|l| tokio::spawn(demo::echo::serve_with_delay(l, name.clone(), delay)))
                    .collect();
                // SIGTERM or SIGINT ends it the usual way (exit handlers
                // run: an instrumented build writes its profile then).
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                let serve = async {
                    for task in serving {
                        let _ = task.await;
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                Ok(())
            }
            Command::Crd => {
                print!("{}", switchyard_crds::crd_yaml());
                Ok(())
            }
        }
    };
    let result = if single {
        // The thread that drives a current-thread runtime is its worker:
        // named like the multi-thread runtime's workers.
        let thread = std::thread::Builder::new().name("switchyard-dp".into()).spawn(move || runtime.block_on(main));
        match thread.map(|t| t.join()) {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(err) => Err(anyhow::anyhow!("cannot start the dataplane thread: {err}")),
        }
    } else {
        runtime.block_on(main)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("switchyard: {err:#}");
            ExitCode::FAILURE
        }
    }
}
