//! The `baton` binary: parses arguments and hands over to the library.

use clap::Parser;

use baton::cli::{Cli, Command};
use baton::config::Config;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let cfg = match Config::load(args.config.as_deref(), args.overrides()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("baton: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            baton::serve::init_logging(&cfg.log_level);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton: cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(baton::serve::run(cfg)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("baton: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
