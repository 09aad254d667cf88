//! The `baton` binary: parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

use baton::cli::{Cli, Command};
use baton::config::Config;

fn serve(args: baton::cli::ServeArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), &args.settings) {
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
    let r = rt.block_on(baton::serve::run(cfg));
    // Don't wait for blocking tasks stuck in the kernel (a slow network file system):
    // the services have stopped, so the process may end.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(args: baton::cli::DoctorArgs) -> ExitCode {
    let cfg = match Config::load(args.serve.config.as_deref(), &args.serve.settings) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL  config: {e}\n      fix: correct the file or flag it names");
            return ExitCode::from(2);
        }
    };
    let source = match &args.serve.config {
        Some(p) => format!("{} (with command-line flags)", p.display()),
        None => "built-in defaults (with command-line flags)".to_string(),
    };
    let opts = baton::doctor::Options {
        min_free_bytes: args.min_free_mb.saturating_mul(1 << 20),
        peer_timeout: std::time::Duration::from_secs(args.peer_timeout.max(1)),
    };
    let findings = baton::doctor::run(&cfg, &source, &opts);
    if args.json {
        match serde_json::to_string_pretty(&findings) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("baton: {e}"),
        }
    } else {
        print!("{}", baton::doctor::render(&findings));
    }
    if findings
        .iter()
        .any(|f| f.status == baton::doctor::Status::Fail)
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::Doctor(args) => return doctor(args),
        Command::Node { api, cmd } => baton::commands::node(&api, cmd),
        Command::Artifact { api, cmd } => baton::commands::artifact(&api, cmd),
        Command::Host { api, cmd } => baton::commands::host(&api, cmd),
        Command::Status { api } => baton::commands::status(&api),
        Command::Storm(args) => {
            return match baton::storm::command::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("baton storm: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ingest { api, dir, quiet_ms } => baton::commands::ingest(&api, &dir, quiet_ms),
        Command::Import { cmd } => baton::commands::import(cmd),
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
