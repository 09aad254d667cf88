//! The `baton` binary: parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

use baton::cli::{Cli, Command};
use baton::config::Config;

fn serve(args: baton::cli::ServeArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {e}");
            return ExitCode::from(2);
        }
    };
    baton::serve::init_logging(&cfg.log_level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(baton::serve::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::Node { api, cmd } => baton::commands::node(&api, cmd),
        Command::Artifact { api, cmd } => baton::commands::artifact(&api, cmd),
        Command::Host { api, cmd } => baton::commands::host(&api, cmd),
        Command::Status { api } => baton::commands::status(&api),
        Command::Events { api, since, follow } => baton::commands::events(&api, since, follow),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}
