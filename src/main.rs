//! The `chitchat` binary: read the configuration, set up logging, start, wait for a signal.
//!
//! Exit codes: 0 after SIGINT or SIGTERM, 2 when the configuration or the database cannot
//! be used, 1 when the server cannot start for another reason (an address in use, say).
//!
//! # The allocator's per-thread caches and arenas
//! glibc's malloc keeps a cache of freed chunks in every thread (its tcache), and never
//! gives it back while the thread lives. With a thread per socket, that cache is most of
//! what an idle socket costs after a join storm: measured with 9 rooms x 1,000 sockets
//! (`make bench`, scenario scale), 27.4 KiB of RSS per socket with glibc's defaults,
//! 17.3 KiB with `glibc.malloc.tcache_count=0`, 27.9 KiB with `arena_max=2` alone, and the
//! fan-out scenarios kept 0 missing and their p99s. glibc also gives threads up to 8 arenas
//! per core, each with free space of its own between live chunks after a storm; one arena
//! per core (`arena_max`, the cores this process may use, at least 2) took a socket from
//! 16.2 to 16.0 KiB on 2 cores, with REST's requests/s unchanged. One arena in all cost
//! REST 13 % on 2 cores; on half a core (the small host scenario, where the cores this
//! process may use are 1) it measured 2 to 8 % more CPU per delivery than glibc's default
//! in one pair of runs and the same in another, and 2 arenas the same as the default,
//! hence the floor.
//!
//! # Two pages of stack per socket
//! glibc puts each thread's control block and static TLS at the top of its stack, with
//! room for the TLS of libraries loaded later by `dlopen` (1.4 KiB by default: four link
//! namespaces and an "optional" 512 bytes). The server loads none, and that room pushed
//! every session's frames 1.4 KiB down: a join's deepest call reached 8,424 bytes from
//! the top, a third page for every idle socket. `glibc.rtld.nns=1` (one namespace, no
//! `dlmopen`) and `glibc.rtld.optional_static_tls=0` (a library loaded later gets dynamic
//! TLS, as it would once the room is used up) leave 144 bytes; with the frames trimmed
//! (`clock`, `ClientEvent::parse`), a join, a send, an error and a leave stay within two
//! pages (perf page faults on 200 session stacks: none past 8,192 bytes). 9 rooms x 1,000
//! sockets: 15.9 -> 11.9 to 12.0 KiB per socket.
//!
//! glibc reads its tunables only when a process starts, so the server re-executes itself
//! once with these settings, unless the operator set `GLIBC_TUNABLES` already (theirs is
//! kept as it is).
//!
//! # No forged log lines
//! Log lines carry text from clients: names, titles, paths. Every line goes through one
//! logger, [`Escaping`], which escapes control characters in the message
//! ([`escape_controls`]) before the console and the file see it, so a name holding a
//! newline cannot start a line of its own (a join name `x\n[WARN] admin root login` wrote
//! that very line into chitchat.log). Done once here, for every line, rather than at each
//! call site, so a log line added later cannot forget it. The log file is created readable
//! by the server's user only (0600): it names rooms, people and addresses.

use std::borrow::Cow;
use std::fmt::Write;
use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chitchat::{Config, ConfigError, StartError};
use log::{Level, Log, Metadata, Record};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

const USAGE: &str = "\
usage: chitchat [--config PATH]   run the server (default ./config.json; if that file
                                 does not exist, the built-in defaults)
       chitchat --version        print `chitchat <version>` and exit
       chitchat --help           print this and exit";

/// The glibc tunables the server runs with: malloc's and the stack's (see the module docs).
fn glibc_tunables() -> String {
    let arenas = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .max(2);
    format!(
        "glibc.malloc.tcache_count=0:glibc.malloc.arena_max={arenas}:\
         glibc.rtld.nns=1:glibc.rtld.optional_static_tls=0"
    )
}

/// The configuration file read when no `--config` is given.
const DEFAULT_CONFIG: &str = "config.json";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Run the server; `Some` when `--config` named the file, `None` for the default.
    Run(Option<PathBuf>),
    /// `--help`: print the usage.
    Help,
    /// `--version`: print `chitchat <version>`.
    Version,
}

fn main() -> ExitCode {
    let exec_failed = std::env::var_os("GLIBC_TUNABLES")
        .is_none()
        .then(restart_with_tunables);
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
    let (config, messages) = match load_config(config_path.as_deref()) {
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
    for (level, message) in messages {
        log::log!(level, "{message}");
    }
    if let Some(e) = exec_failed {
        let tunables = glibc_tunables();
        log::warn!("cannot restart with {tunables}: {e}; idle sockets cost more memory");
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

/// Replaces this process with itself, same arguments, with [`glibc_tunables`] set. Only
/// returns if that fails, with the reason.
fn restart_with_tunables() -> std::io::Error {
    match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", glibc_tunables())
            .exec(),
        Err(e) => e,
    }
}

/// Reads the arguments after the program name; `Err` names what is wrong.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => path = Some(args.next().ok_or("--config needs a path")?.into()),
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run(path))
}

/// The file `--config` named, else `./config.json`, else (no such file) the built-in
/// defaults, with the environment applied; also the lines to log once logging is up.
///
/// "Every key is optional" (docs/configuration.md), so a missing default file means the defaults; a file
/// named with `--config` must exist, so a typo there stops start-up instead of going
/// unnoticed. Only "no such file" counts as missing: an unreadable `./config.json`, or a
/// link to nothing, is an error like any other.
fn load_config(path: Option<&Path>) -> Result<(Config, Vec<(Level, String)>), ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    let default_missing = path.is_none()
        && matches!(std::fs::symlink_metadata(DEFAULT_CONFIG),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if default_missing {
        let note = format!("no ./{DEFAULT_CONFIG}: running with the built-in defaults");
        return Ok((Config::from_env(env)?, vec![(Level::Info, note)]));
    }
    let (config, warnings) = Config::load(path.unwrap_or(Path::new(DEFAULT_CONFIG)), env)?;
    let messages = warnings.into_iter().map(|w| (Level::Warn, w)).collect();
    Ok((config, messages))
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
            // SPEC, Limits: readable by the server's user only (a new file; an existing
            // one keeps the mode its owner gave it).
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("{}: cannot open the log file: {e}", path.display()))?;
        loggers.push(WriteLogger::new(config.log_level, log_config, file));
    }
    log::set_boxed_logger(Box::new(Escaping(CombinedLogger::new(loggers))))
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    log::set_max_level(config.log_level);
    Ok(())
}

/// The one logger: hands each line to `inner` with the control characters of its message
/// escaped (see the module docs).
struct Escaping<L>(L);

impl<L: Log> Log for Escaping<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let escaped = escape_controls(&message);
        self.0.log(
            &Record::builder()
                .args(format_args!("{escaped}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// `text` with each control character (Unicode Cc, and the line and paragraph separators)
/// written as an escape: `\n`, `\r`, `\t`, else `\u{..}`. Backslashes are left as they
/// are, so escaping twice changes nothing, and no escaped text holds a line break.
fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(escape_controls("ann"), "ann");
        assert_eq!(
            escape_controls("x\n[WARN] admin root login\r\t\u{1b}[31m\u{2028}é\\n"),
            "x\\n[WARN] admin root login\\r\\t\\u{1b}[31m\\u{2028}é\\n"
        );
        let once = escape_controls("a\nb").into_owned();
        assert_eq!(escape_controls(&once), once);
    }

    /// A logger that keeps the messages it is given.
    struct Kept(Mutex<Vec<String>>);

    impl Log for Kept {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    #[test]
    fn every_line_reaches_the_log_escaped() {
        let logger = Escaping(Kept(Mutex::new(Vec::new())));
        let name = "x\n[WARN] admin root login";
        logger.log(
            &Record::builder()
                .args(format_args!("socket 3 joined room 1 as {name}"))
                .level(Level::Info)
                .build(),
        );
        let kept = logger.0 .0.lock().unwrap().clone();
        assert_eq!(
            kept,
            ["socket 3 joined room 1 as x\\n[WARN] admin root login"]
        );
    }

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn arguments_select_the_command() {
        assert_eq!(parse(&[]), Ok(Command::Run(None)));
        assert_eq!(
            parse(&["--config", "a.json"]),
            Ok(Command::Run(Some("a.json".into())))
        );
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert!(parse(&["--config"]).is_err());
        assert!(parse(&["--verbose"]).is_err());
    }
}
