//! `chat-server`: CLI → configuration → telemetry → `serve`, `migrate` or `admin`.

use std::process::ExitCode;

use chat_server::{
    AppState,
    config::{AdminCommand, Cli, Command},
};
use clap::Parser;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc malloc: glibc raises its mmap threshold after the first 19 MiB
/// argon2 block is freed, and from then on keeps every freed block in its arenas (hundreds of
/// MiB after a burst of logins); jemalloc returns them.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // A `.env` file is optional; real environment variables win.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    config.validate()?;
    let _telemetry = chat_server::telemetry::init(&config.log_format)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let db = chat_server::connect_db(&config).await?;
            chat_server::migrate(&db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    username,
                    email,
                    password,
                },
        } => {
            let id =
                chat_server::create_admin(&config, &username, &email, password.expose_secret())
                    .await?;
            println!("admin `{username}` ready (id {id})");
            Ok(())
        }
    }
}

async fn serve(config: chat_server::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let bind = config.bind_addr;
    let internal_addr = config.internal_addr;
    let mode = if config.is_cluster() {
        "cluster (Redis fan-out)"
    } else {
        "embedded (in-process fan-out)"
    };
    let state = AppState::build(config, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    // Probes and metrics on their own port, which the Ingress/HTTPRoute does not route.
    let internal = match internal_addr {
        Some(internal_addr) => {
            let internal = tokio::net::TcpListener::bind(internal_addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {internal_addr}: {e}"))?;
            let addr = internal.local_addr()?;
            tracing::info!(%addr, "internal port (probes, metrics) listening");
            Some(internal)
        }
        None => None,
    };
    tracing::info!(%addr, mode, "listening");
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; draining");
        shutdown.cancel();
    });
    match internal {
        Some(internal) => chat_server::run_with_internal(state, listener, internal).await,
        None => chat_server::run(state, listener).await,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
