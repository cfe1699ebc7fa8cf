//! The `lrp-graph` command line: argument parsing ([`args`]) and orchestration of the library
//! crates, nothing more. [`main`] is the whole binary; [`run`] runs one command line and returns
//! its outcome for embedding and tests.
//!
//! A program with its own rules runs the full command line with them registered:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let mut registry = lrp_rules::Registry::with_builtins();
//!     // registry.register(...) for each of the program's rules
//!     lrp_cli::main_with(registry)
//! }
//! ```
//!
//! `explain --rules FILE.ron`, `inspect --rules` and `rules` then know the added rules by name.

pub mod args;
mod convert;
mod explain;
mod folder;
mod gallery;
mod inspect;
mod predict;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command};
use lrp_rules::Registry;

/// The most explain calls (batches times methods) a command runs on 4 KiB pages only (see
/// [`small_pages`]); longer runs keep the kernel's transparent huge pages.
pub const SMALL_PAGE_CALLS: usize = 8;

/// Asks the kernel (Linux) to back this process's memory, from here on, with 4 KiB pages only
/// (`on`), not transparent huge pages (which mimalloc asks for), or to allow those again
/// (`!on`); returns whether it agreed (always `false` elsewhere). `predict`, and `explain` runs
/// of at most [`SMALL_PAGE_CALLS`] calls, run on small pages from their start (`explain`
/// switches them off again once it knows the run is longer).
///
/// Measured on this project's 2-core virtual machine (docs/performance.md, ninth session): a
/// first touch of 440 MB of huge pages took 0.03–1.12 s (about 5 ms per page at worst), and a
/// cold `explain` of VGG16 (batch 8, runs a few seconds apart) took 2.3–2.5 s with huge pages
/// and 1.6–1.7 s without. Runs in one process, which reuse their memory, were faster with huge
/// pages: lrp-epsilon's relevance part by 2–4 %, sglrp by 7–13 %.
pub fn small_pages(on: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let on = libc::c_ulong::from(on);
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = on;
        false
    }
}

/// How a failed command exits: 2 for bad usage or bad input, 1 for a runtime failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The user's input or arguments are at fault (exit code 2).
    BadInput,
    /// Something failed at run time, e.g. ONNX Runtime could not be loaded, or some inputs of
    /// a folder could not be explained (exit code 1).
    Runtime,
    /// Stopped by Ctrl-C (exit code 130).
    Interrupted,
}

/// Classifies an error by the library error it wraps.
pub fn failure_kind(err: &anyhow::Error) -> Failure {
    let runtime = |e: &lrp_runtime::RuntimeError| match e {
        lrp_runtime::RuntimeError::Input(_) | lrp_runtime::RuntimeError::Device(_) => {
            Failure::BadInput
        }
        _ => Failure::Runtime,
    };
    for cause in err.chain() {
        if cause.downcast_ref::<explain::Interrupted>().is_some() {
            return Failure::Interrupted;
        }
        if cause.downcast_ref::<explain::InputsFailed>().is_some() {
            return Failure::Runtime;
        }
        if let Some(lrp_engine::ExplainError::Runtime(e)) =
            cause.downcast_ref::<lrp_engine::ExplainError>()
        {
            return runtime(e);
        }
        if let Some(e) = cause.downcast_ref::<lrp_runtime::RuntimeError>() {
            return runtime(e);
        }
    }
    Failure::BadInput
}

/// Parses `args` (the program name first) and runs the command with the built-in rules.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, &Registry::with_builtins())
}

/// Parses `args` (the program name first) and runs the command with the rules of `registry`.
pub fn run_with<I, T>(args: I, registry: &Registry) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    execute_with(cli, registry)
}

/// Runs a parsed command line with the built-in rules.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    execute_with(cli, &Registry::with_builtins())
}

/// Runs a parsed command line with the rules of `registry`.
pub fn execute_with(cli: Cli, registry: &Registry) -> anyhow::Result<()> {
    let threads = match &cli.command {
        Command::Predict(a) => a.threads,
        Command::Explain(a) => a.threads,
        _ => None,
    };
    if let Some(n) = threads {
        if n == 0 {
            return Err(anyhow::anyhow!("--threads must be at least 1"));
        }
        // The relevance pass's own workers: the first command of a process sizes them.
        lrp_kernels::set_threads(n);
    }
    match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::run(a, registry),
        Command::Predict(a) => predict::run(a),
        Command::Explain(a) => explain::run_with(*a, registry),
        Command::Rules => explain::list_rules(registry),
    }
}

/// The `lrp-graph` binary: runs the process's command line, prints one error line on failure
/// and returns the exit code (0 success, 1 runtime failure, 2 bad usage or input).
pub fn main() -> ExitCode {
    main_with(Registry::with_builtins())
}

/// The `lrp-graph` command line with the rules of `registry` (the built-ins and a program's own
/// rules): what a program that adds rules calls from its `main`.
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match execute_with(cli, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(match failure_kind(&e) {
                Failure::BadInput => 2,
                Failure::Runtime => 1,
                Failure::Interrupted => 130,
            })
        }
    }
}

/// The error and its causes on one line, without repeating a cause that a message already
/// includes.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    /// The kernel's own account of the process: THP_enabled is 0 while huge pages are off.
    #[cfg(target_os = "linux")]
    #[test]
    fn small_pages_turn_huge_pages_off_and_on_for_the_process() {
        let thp = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
        };
        // Kernels before 5.0 have no such line; nothing to check there.
        if thp().is_none() {
            return;
        }
        assert!(super::small_pages(true));
        assert_eq!(thp().as_deref(), Some("0"));
        assert!(super::small_pages(false));
        assert_eq!(thp().as_deref(), Some("1"));
    }
}
