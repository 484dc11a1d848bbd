//! The report: one table per scenario, each row a figure with its target and verdict, and
//! BENCHMARKS.md rendered from them together with the machine and the commands.
//!
//! A figure with a target is PASS or MISS; a figure without one is shown for context. A
//! scenario that could not run at all gets a table with the reason as a MISS row, so a
//! broken server never produces a report that looks complete.

use std::fmt::Write as _;

/// PASS, MISS, or no target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    Miss,
    Info,
}

impl Verdict {
    /// PASS when `ok`, else MISS.
    pub fn from(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "**MISS**",
            Verdict::Info => "",
        }
    }
}

/// One figure.
#[derive(Clone, Debug)]
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// The measured value, formatted.
    pub measured: String,
    /// The target, formatted; empty when there is none.
    pub target: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// One scenario's table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Heading, e.g. `2. Fan-out, 500 subscribers x 200 messages/s`.
    pub title: String,
    /// What was done, in a sentence or two, above the table.
    pub setup: String,
    /// The rows.
    pub rows: Vec<Row>,
    /// Remarks under the table (server warnings, why a figure is withheld).
    pub notes: Vec<String>,
    /// Figures over time (the soak's memory curve), each a table of its own under this one.
    pub series: Vec<Series>,
}

/// A small table of figures over time: a caption, column headings, rows of cells.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// A sentence above the table.
    pub caption: String,
    /// Column headings.
    pub headers: Vec<String>,
    /// One row per reading, as many cells as headings.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table.
    pub fn new(title: impl Into<String>, setup: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            setup: setup.into(),
            ..Table::default()
        }
    }

    /// A figure without a target.
    pub fn info(&mut self, figure: &str, measured: impl Into<String>) {
        self.push(figure, measured.into(), String::new(), Verdict::Info);
    }

    /// A figure with a target, PASS when `ok`.
    pub fn check(&mut self, figure: &str, measured: impl Into<String>, target: &str, ok: bool) {
        self.push(
            figure,
            measured.into(),
            target.to_string(),
            Verdict::from(ok),
        );
    }

    /// A remark under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// A table of figures over time under this one.
    pub fn series(&mut self, series: Series) {
        self.series.push(series);
    }

    /// Records that the scenario could not run (or finish), as a MISS.
    pub fn failed(&mut self, error: impl std::fmt::Display) {
        self.push(
            "scenario ran to the end",
            format!("no: {error}"),
            "yes".into(),
            Verdict::Miss,
        );
    }

    fn push(&mut self, figure: &str, measured: String, target: String, verdict: Verdict) {
        self.rows.push(Row {
            figure: figure.to_string(),
            measured,
            target,
            verdict,
        });
    }

    /// Keeps the targets for reference but drops the verdicts (a cross-check run).
    pub fn without_verdicts(&mut self) {
        for row in &mut self.rows {
            row.verdict = Verdict::Info;
        }
    }

    /// Whether any row missed its target.
    pub fn missed(&self) -> bool {
        self.rows.iter().any(|r| r.verdict == Verdict::Miss)
    }
}

/// The machine the figures were measured on.
#[derive(Debug)]
pub struct Machine {
    /// Logical cores available to the process (what `nproc` prints).
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// `MemTotal` from /proc/meminfo, KiB.
    pub memory_kib: u64,
    /// `PRETTY_NAME` from /etc/os-release.
    pub os: String,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// Soft limit on open files for the generator and the server it starts.
    pub open_files_limit: String,
}

impl Machine {
    /// Reads the figures from /proc and /etc; unknown ones are shown as `unknown`.
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let find = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| {
                    v.trim_start_matches([' ', '\t', ':', '='])
                        .trim_matches('"')
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|| "unknown".into())
        };
        let memory_kib = find(&read("/proc/meminfo"), "MemTotal")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let limits = read("/proc/self/limits");
        let open_files_limit = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or("unknown")
            .to_string();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: find(&read("/proc/cpuinfo"), "model name"),
            memory_kib,
            os: find(&read("/etc/os-release"), "PRETTY_NAME"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            open_files_limit,
        }
    }
}

/// Everything BENCHMARKS.md says besides the tables.
pub struct Context {
    /// The machine.
    pub machine: Machine,
    /// When the run started (UTC, from `date -u`).
    pub date: String,
    /// The server binary, its size in bytes and its version.
    pub server: String,
    /// Command lines, in the order they ran.
    pub commands: Vec<String>,
    /// How long the whole run took.
    pub elapsed_s: f64,
    /// `/proc/loadavg` when the run started.
    pub load_before: String,
}

/// Renders BENCHMARKS.md.
pub fn render(context: &Context, tables: &[Table]) -> String {
    let mut out = String::new();
    let m = &context.machine;
    let _ = writeln!(out, "# ChitChat benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `make bench` (benches/load.rs); do not edit by hand, run it again. \
         Every figure below was measured against the release server over loopback, \
         with the load generator on the same machine, competing for the same cores.\n"
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", context.date);
    let _ = writeln!(out, "| cores (`nproc`) | {} |", m.cores);
    let _ = writeln!(out, "| CPU | {} |", m.cpu);
    let _ = writeln!(
        out,
        "| memory | {:.1} GiB |",
        m.memory_kib as f64 / 1024.0 / 1024.0
    );
    let _ = writeln!(out, "| OS | {} (Linux {}) |", m.os, m.kernel);
    let _ = writeln!(out, "| open files limit | {} |", m.open_files_limit);
    let _ = writeln!(out, "| server | {} |", context.server);
    let _ = writeln!(out, "| load average at start | {} |", context.load_before);
    let _ = writeln!(out, "| whole run | {:.0} s |\n", context.elapsed_s);

    let _ = writeln!(out, "## Commands\n\n```sh");
    for command in &context.commands {
        let _ = writeln!(out, "{command}");
    }
    let _ = writeln!(out, "```\n");

    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "| scenario | figure | measured | target | result |\n|---|---|---|---|---|"
    );
    for table in tables {
        for row in table.rows.iter().filter(|r| r.verdict != Verdict::Info) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                table.title,
                row.figure,
                row.measured,
                row.target,
                row.verdict.label()
            );
        }
    }
    let _ = writeln!(out);

    for table in tables {
        out.push_str(&render_table(table));
    }
    out
}

/// One scenario's section: heading, setup, table, notes.
pub fn render_table(table: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", table.title);
    if !table.setup.is_empty() {
        let _ = writeln!(out, "{}\n", table.setup);
    }
    let _ = writeln!(
        out,
        "| figure | measured | target | result |\n|---|---|---|---|"
    );
    for row in &table.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.figure,
            row.measured,
            row.target,
            row.verdict.label()
        );
    }
    let _ = writeln!(out);
    for series in &table.series {
        let _ = writeln!(out, "{}\n", series.caption);
        let _ = writeln!(out, "| {} |", series.headers.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(series.headers.len()));
        for row in &series.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        let _ = writeln!(out);
    }
    for note in &table.notes {
        let _ = writeln!(out, "- {note}");
    }
    if !table.notes.is_empty() {
        let _ = writeln!(out);
    }
    out
}
