//! The `lrp-graph` command-line tool.

fn main() -> std::process::ExitCode {
    lrp_cli::main()
}
