//! The `wsbridge` binary: CLI → config → telemetry → run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wsbridge::config::{Config, ConfigError, Override, Sources};
use wsbridge::simulator::Simulator;

#[derive(Debug, Parser)]
#[command(
    name = "wsbridge",
    version,
    about = "OpenAI Responses REST → WebSocket-mode bridge",
    after_help = "Precedence: config file < WSBRIDGE_* environment variables < flags. \
                  Defaults in brackets are the built-in ones; config.toml lists every key."
)]
struct Cli {
    /// Config file [default: ./config.toml when it exists, else built-in defaults].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format, text or json [default: text; config log.format].
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080; config server.listen].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Upstream REST base URL [default: https://api.openai.com/v1; config upstream.base_url].
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
        /// Use the built-in simulator as the upstream [default: off; config upstream.mode].
        #[arg(long)]
        simulate: bool,
    },
    /// Run the upstream simulator stand-alone.
    Simulate {
        /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:9100; config
        /// simulator.listen].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Latency profile: none, openai or custom [default: none; config
        /// simulator.latency.profile].
        #[arg(long, value_name = "PROFILE")]
        latency_profile: Option<String>,
    },
    /// Print what `serve` would use: where the configuration came from, the upstream, its
    /// profile and the settings derived from it (`derived`) or set (`set`).
    Config,
    /// Probe a running wsbridge (for container health checks): exit 0 when /healthz answers 200.
    Health {
        /// URL to probe [default: /healthz at server.listen from the same configuration as
        /// `serve` (file and WSBRIDGE_* variables), an unspecified address probed on loopback].
        #[arg(long)]
        url: Option<String>,
    },
}

/// `wsbridge health`: 0 when `url` answers 200.
fn probe(url: &str) -> ExitCode {
    match wsbridge::health::probe(url, std::time::Duration::from_secs(3)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsbridge health: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { url: Some(url) }) = &cli.command {
        return probe(url);
    }
    let command = cli.command.unwrap_or(Command::Serve {
        listen: None,
        upstream: None,
        simulate: false,
    });
    let mut overrides: Vec<Override> = flag("--log-format", "log.format", &cli.log_format)
        .into_iter()
        .collect();
    overrides.extend(command.overrides());
    let config = match load(cli.config, overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("wsbridge: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::Config = &command {
        print_config(&config);
        return ExitCode::SUCCESS;
    }
    if let Command::Health { url } = &command {
        let url = url
            .clone()
            .unwrap_or_else(|| wsbridge::health::url_for(config.server.listen));
        return probe(&url);
    }
    wsbridge::telemetry::init(&config.log);
    for warning in &config.source.warnings {
        tracing::warn!("{warning}");
    }
    match run(command, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsbridge: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `wsbridge config`: the upstream part of the configuration in force, one line each.
#[expect(clippy::print_stdout, reason = "this report is the command's output")]
fn print_config(config: &Config) {
    let upstream = &config.upstream;
    let headers: Vec<&str> = upstream.headers.keys().map(|name| name.as_str()).collect();
    println!("configuration: {}", config.source);
    for warning in &config.source.warnings {
        println!("warning: {warning}");
    }
    println!("upstream.mode: {}", upstream.mode);
    println!("upstream.base_url: {}", upstream.base_url);
    println!(
        "upstream.websocket_url: {}",
        upstream.base_url.websocket_url_shown()
    );
    println!("upstream.profile: {}", config.limits_summary());
    println!("upstream.auth_header: {}", upstream.auth_header);
    println!(
        "upstream.headers: {}",
        if headers.is_empty() {
            "none".to_owned()
        } else {
            headers.join(", ")
        }
    );
}

/// The override a flag makes, when it was given.
fn flag(flag: &'static str, key: &'static str, value: &Option<String>) -> Option<Override> {
    value.clone().map(|value| Override { flag, key, value })
}

impl Command {
    /// The configuration keys this subcommand's flags set.
    fn overrides(&self) -> Vec<Override> {
        match self {
            Command::Serve {
                listen,
                upstream,
                simulate,
            } => {
                let simulator = simulate.then(|| Override {
                    flag: "--simulate",
                    key: "upstream.mode",
                    value: "simulator".into(),
                });
                [
                    flag("--listen", "server.listen", listen),
                    flag("--upstream", "upstream.base_url", upstream),
                    simulator,
                ]
                .into_iter()
                .flatten()
                .collect()
            }
            Command::Simulate {
                listen,
                latency_profile,
            } => [
                flag("--listen", "simulator.listen", listen),
                flag(
                    "--latency-profile",
                    "simulator.latency.profile",
                    latency_profile,
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Command::Health { .. } | Command::Config => Vec::new(),
        }
    }
}

/// The configuration: `file` (else `./config.toml` when it exists), the process environment,
/// then `overrides`.
fn load(file: Option<PathBuf>, overrides: Vec<Override>) -> Result<Config, ConfigError> {
    let default_file = PathBuf::from("config.toml");
    let file = file.or_else(|| default_file.exists().then_some(default_file));
    Config::load(Sources {
        file,
        env: std::env::vars().collect(),
        overrides,
    })
}

/// Runs `serve` or `simulate` until a signal.
fn run(command: Command, config: Config) -> std::io::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.server.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build().map_err(|error| {
        std::io::Error::other(format!("cannot start the async runtime: {error}"))
    })?;
    runtime.block_on(async move {
        let shutdown = wsbridge::shutdown::on_signal();
        match command {
            Command::Simulate { .. } => {
                let handle = Simulator::spawn(config.simulator).await?;
                tracing::info!("simulator listening on http://{}", handle.addr());
                shutdown.cancelled().await;
                handle.shutdown().await;
            }
            Command::Health { .. } | Command::Config => {}
            Command::Serve { .. } => {
                wsbridge::run(config, shutdown)
                    .await
                    .map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    })
}
