//! The `chitchat` binary: read the configuration, set up logging, start, wait for a signal.
//!
//! Exit codes: 0 after SIGINT or SIGTERM, 2 when the configuration or the database cannot
//! be used, 1 when the server cannot start for another reason (an address in use, say).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use chitchat::{Config, StartError};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

const USAGE: &str = "usage: chitchat [--config PATH]   (default ./config.json)";

fn main() -> ExitCode {
    let config_path = match parse_args(std::env::args().skip(1)) {
        Ok(Some(path)) => path,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("chitchat: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (config, warnings) = match Config::load(&config_path, |name| std::env::var(name).ok()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("chitchat: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("chitchat: {e}");
        return ExitCode::from(2);
    }
    for warning in warnings {
        log::warn!("{warning}");
    }
    // Registered before start, so a signal arriving during start-up is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("chitchat: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match chitchat::start(config) {
        Ok(running) => running,
        Err(e) => {
            log::error!("{e}");
            eprintln!("chitchat: {e}");
            return match e {
                // Like a bad configuration: the operator must look at the file.
                StartError::Store(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    println!(
        "ChitChat {} started at http://{} (ws://{})",
        env!("CARGO_PKG_VERSION"),
        running.http_addr(),
        running.ws_addr()
    );
    log::info!(
        "listening on http://{} and ws://{}",
        running.http_addr(),
        running.ws_addr()
    );
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal} received: shutting down");
    }
    running.shutdown();
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// `Ok(Some(path))` to run, `Ok(None)` for `--help`, `Err` for anything else.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<PathBuf>, String> {
    let mut path = PathBuf::from("config.json");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => path = args.next().ok_or("--config needs a path")?.into(),
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(path))
}

/// Console (stderr) always; the log file too when one is configured. Only ChitChat's own
/// log lines are kept: the libraries' debug output is noise here.
fn init_logging(config: &Config) -> Result<(), String> {
    let log_config = ConfigBuilder::new()
        .add_filter_allow_str("chitchat")
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![TermLogger::new(
        config.log_level,
        log_config.clone(),
        TerminalMode::Stderr,
        // Colours for a person at a terminal; plain text for pipes and service managers.
        if std::io::stderr().is_terminal() {
            ColorChoice::Auto
        } else {
            ColorChoice::Never
        },
    )];
    if let Some(path) = &config.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: cannot open the log file: {e}", path.display()))?;
        loggers.push(WriteLogger::new(config.log_level, log_config, file));
    }
    CombinedLogger::init(loggers).map_err(|e| format!("cannot set up logging: {e}"))
}
