//! The `wsbridge` binary: CLI → config → telemetry → run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wsbridge::config::{Config, Sources};
use wsbridge::simulator::Simulator;

#[derive(Debug, Parser)]
#[command(
    name = "wsbridge",
    version,
    about = "OpenAI Responses REST → WebSocket-mode bridge"
)]
struct Cli {
    /// Config file (default: ./config.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve {
        /// Address to listen on (config `server.listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Upstream REST base URL (config `upstream.base_url`).
        #[arg(long)]
        upstream: Option<String>,
        /// Use the built-in simulator as the upstream (config `upstream.mode = "simulator"`).
        #[arg(long)]
        simulate: bool,
    },
    /// Run the upstream simulator stand-alone.
    Simulate {
        /// Address to listen on (config `simulator.listen`); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
        /// Latency profile: none, openai or custom (config `simulator.latency.profile`).
        #[arg(long)]
        latency_profile: Option<String>,
    },
    /// Probe a running wsbridge (for container health checks): exit 0 when URL answers 200.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

/// Exit status for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { url }) = &cli.command {
        return match wsbridge::health::probe(url, std::time::Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("wsbridge health: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let command = cli.command.unwrap_or(Command::Serve {
        listen: None,
        upstream: None,
        simulate: false,
    });
    let mut overrides = Vec::new();
    if let Some(format) = cli.log_format {
        overrides.push(("log.format", format));
    }
    match &command {
        Command::Serve {
            listen,
            upstream,
            simulate,
        } => {
            overrides.extend(listen.clone().map(|l| ("server.listen", l)));
            overrides.extend(upstream.clone().map(|u| ("upstream.base_url", u)));
            if *simulate {
                overrides.push(("upstream.mode", "simulator".into()));
            }
        }
        Command::Simulate {
            listen,
            latency_profile,
        } => {
            overrides.extend(listen.clone().map(|l| ("simulator.listen", l)));
            overrides.extend(
                latency_profile
                    .clone()
                    .map(|p| ("simulator.latency.profile", p)),
            );
        }
        Command::Health { .. } => {}
    }
    let default_file = PathBuf::from("config.toml");
    let file = cli
        .config
        .or_else(|| default_file.exists().then_some(default_file));
    let config = match Config::load(Sources {
        file,
        env: std::env::vars().collect(),
        overrides,
    }) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("wsbridge: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    wsbridge::telemetry::init(&config.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsbridge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = wsbridge::shutdown::on_signal();
        match command {
            Command::Simulate { .. } => {
                let handle = Simulator::spawn(config.simulator).await?;
                tracing::info!("simulator listening on http://{}", handle.addr());
                shutdown.cancelled().await;
                handle.shutdown().await;
            }
            Command::Health { .. } => {}
            Command::Serve { .. } => {
                wsbridge::run(config, shutdown)
                    .await
                    .map_err(std::io::Error::other)?;
            }
        }
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsbridge: {error}");
            ExitCode::FAILURE
        }
    }
}
