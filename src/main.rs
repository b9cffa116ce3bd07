use std::future::Future;
use std::io::BufRead as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use portcullis::auth_service::clients::hash_secret;
use portcullis::auth_service::keys::KeyRing;
use portcullis::cli::{self, Cli, Command, KeysAction};
use portcullis::{Gateway, config, demo, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its servers' logs would drown it.
    let quiet = matches!(cli.command, Some(Command::Demo { .. }));
    telemetry::init(cli.log_format, if quiet { "error" } else { "info" });
    match cli.command.unwrap_or(Command::Run) {
        Command::Demo { once } => block_on(cli.workers, async move {
            match demo::run(once).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("demo failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::HashSecret => hash_from_stdin(),
        Command::Explain { format } => explain(&cli.config, format),
        command => {
            let config = match config::load(&cli.config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{} error(s) in {}", errors.0.len(), cli.config.display());
                    return ExitCode::FAILURE;
                }
            };
            match command {
                Command::Check => {
                    print!("{}", cli::describe(&config));
                    println!("{}: ok", cli.config.display());
                    ExitCode::SUCCESS
                }
                Command::Keys { action } => keys(&config, action),
                _ => block_on(cli.workers, serve(config, cli.config.clone())),
            }
        }
    }
}

/// `portcullis explain`: the config's policy in `format` on stdout.
fn explain(path: &std::path::Path, format: portcullis::explain::Format) -> ExitCode {
    let name = path.display().to_string();
    let source = match std::fs::read_to_string(path) {
        Ok(source) => source,
        Err(error) => {
            eprintln!("{name}: cannot read: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Explaining needs no secrets: an unset `${VAR}` stays as written.
    let env = |var: &str| {
        std::env::var(var)
            .ok()
            .or_else(|| Some(format!("${{{var}}}")))
    };
    match config::from_str(&source, &name, env) {
        Ok(config) => {
            let report = portcullis::explain::Report::new(&config, &source, &name);
            match report.render(format) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{name}: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {name}", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// Run `work` on a runtime sized by `--workers` (1: a single-threaded one).
fn block_on(workers: Option<usize>, work: impl Future<Output = ExitCode>) -> ExitCode {
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
    match runtime {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serve until SIGTERM or SIGINT, reloading `path` on SIGHUP or change;
/// then drain and exit 0.
async fn serve(config: config::Config, path: std::path::PathBuf) -> ExitCode {
    let gateway = match Gateway::start(config).await {
        Ok(gateway) => gateway,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    gateway.watch_config(path);
    wait_for_signal().await;
    tracing::info!("shutting down: draining open connections");
    gateway.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
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

/// `hash-secret`: the secret comes on standard input, never on the command
/// line (where shell history and `ps` would keep it).
fn hash_from_stdin() -> ExitCode {
    let mut secret = String::new();
    if std::io::stdin().lock().read_line(&mut secret).is_err() {
        eprintln!("cannot read the secret from standard input");
        return ExitCode::FAILURE;
    }
    let secret = secret.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        eprintln!(
            "the secret is empty (pipe it in: `printf %s \"$SECRET\" | portcullis hash-secret`)"
        );
        return ExitCode::FAILURE;
    }
    match hash_secret(secret) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hashing failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `keys rotate` and `keys list` on the auth service's key file.
fn keys(config: &config::Config, action: KeysAction) -> ExitCode {
    let Some(auth) = &config.auth_service else {
        eprintln!("the config has no `auth_service` section");
        return ExitCode::FAILURE;
    };
    let Some(path) = &auth.key_file else {
        eprintln!("`auth_service.key_file` is not set: keys live in memory only");
        return ExitCode::FAILURE;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    // Rotations are serialised by a lock file; listing never creates the file.
    let _lock = match action {
        KeysAction::Rotate => match KeyRing::lock(path) {
            Ok(lock) => Some(lock),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        },
        KeysAction::List => None,
    };
    let loaded = match action {
        KeysAction::Rotate => KeyRing::load_or_create(path, auth.algorithm, now),
        KeysAction::List => KeyRing::load(path),
    };
    let mut ring = match loaded {
        Ok(ring) => ring,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    if let KeysAction::Rotate = action {
        // Keep a retired key published while tokens it signed may live,
        // plus a margin for clock skew.
        let keep = auth.longest_access_ttl() + Duration::from_secs(300);
        let keep = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        let rotated = ring
            .rotate(auth.algorithm, now, keep)
            .map(|k| k.kid.clone())
            .and_then(|kid| ring.save(path).map(|()| kid));
        match rotated {
            Ok(kid) => {
                println!("new signing key {kid}; a running auth service picks it up within seconds")
            }
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        }
    }
    for key in ring.keys() {
        let state = match key.retired {
            None => "active".to_owned(),
            Some(at) => format!("retired at {at}"),
        };
        println!(
            "{} {} created {} {state}",
            key.kid,
            key.alg.as_str(),
            key.created
        );
    }
    ExitCode::SUCCESS
}
