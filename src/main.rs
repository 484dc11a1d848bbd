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

const USAGE: &str = "\
usage: chitchat [--config PATH]   run the server (default ./config.json)
       chitchat --version        print `chitchat <version>` and exit
       chitchat --help           print this and exit";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Run the server with the configuration file at this path.
    Run(PathBuf),
    /// `--help`: print the usage.
    Help,
    /// `--version`: print `chitchat <version>`.
    Version,
}

fn main() -> ExitCode {
    let config_path = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(path)) => path,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("chitchat {}", env!("CARGO_PKG_VERSION"));
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

/// Reads the arguments after the program name; `Err` names what is wrong.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut path = PathBuf::from("config.json");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => path = args.next().ok_or("--config needs a path")?.into(),
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run(path))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn arguments_select_the_command() {
        assert_eq!(parse(&[]), Ok(Command::Run("config.json".into())));
        assert_eq!(
            parse(&["--config", "a.json"]),
            Ok(Command::Run("a.json".into()))
        );
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert!(parse(&["--config"]).is_err());
        assert!(parse(&["--verbose"]).is_err());
    }
}
