use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use osbuild_controller::cli::{Cli, Command, RunArgs};
use osbuild_controller::placement::ungate;
use osbuild_controller::{image_command, offline, run, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => return run_controller(*args),
        Command::Explain(args) => offline::explain_command(&args),
        Command::Compat(args) if image_command::is_image_reference(&args.image) => {
            return online(image_command::compat_image_command(&args));
        }
        Command::Compat(args) => offline::compat_command(&args),
        Command::Image(args) => return online(image_command::image_command(&args)),
        Command::Ungate(args) => return cluster_command(ungate::ungate_command(&args)),
        Command::Audit(args) => {
            let (output, code) = osbuild_controller::audit::command::audit_command(&args);
            if code == 2 {
                eprintln!("error: {}", output.replace('\n', " "));
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{output}");
            }
            return ExitCode::from(code);
        }
        Command::Classify(args) => offline::classify_command(&args, &mut std::io::stdin().lock()),
    };
    match result {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = writeln!(stdout, "{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

/// Commands that read a registry: 0 with the answer on stdout, 2 with one error line (its category
/// first, e.g. `unauthorized`, `not-found`, `timeout`, `bad-manifest`).
fn online(
    command: impl std::future::Future<Output = Result<String, image_command::ImageCommandError>>,
) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(command).map_err(|e| e.to_string()));
    match result {
        Ok(output) => {
            let _ = writeln!(std::io::stdout().lock(), "{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {}", err.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// Commands that talk to the cluster: 0 with the answer on stdout, 1 with the error (every line of it).
fn cluster_command(command: impl std::future::Future<Output = anyhow::Result<String>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(command));
    match result {
        Ok(output) => {
            let _ = writeln!(std::io::stdout().lock(), "{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Exit 2 for bad configuration (one clear line, like clap's usage errors), 1 when the controller fails.
fn run_controller(args: RunArgs) -> ExitCode {
    let keys = match args.labels.keys() {
        Ok(keys) => keys,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = telemetry::init(args.log_format, &args.log_filter) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run::run(args, keys)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
