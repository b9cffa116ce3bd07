use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command};
use portcullis::{Gateway, config, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {}", errors.0.len(), cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            print!("{}", cli::describe(&config));
            println!("{}: ok", cli.config.display());
            ExitCode::SUCCESS
        }
        Command::Run => run(config, cli.workers),
    }
}

fn run(config: config::Config, workers: Option<usize>) -> ExitCode {
    let runtime = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let gateway = match Gateway::start(config).await {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(%error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
