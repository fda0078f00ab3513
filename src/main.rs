//! The `flit-cache` binary: reads `.env` and the environment, sets up logging,
//! and runs one command. Failures are one line on stderr and an exit status:
//! 2 when the command could not start (configuration, connection).

use std::process::ExitCode;

use clap::Parser;
use flit_cache::configuration::Settings;
use flit_cache::internal::{Cli, error_text, execute, init_logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("error: .env: {err}");
        return ExitCode::from(2);
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    // rediss:// needs a TLS crypto provider; ring is the one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execute(cli.command, settings)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::from(2)
        }
    }
}
