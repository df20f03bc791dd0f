use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use osbuild_controller::cli::{Cli, Command};
use osbuild_controller::offline;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Explain(args) => offline::explain_command(&args),
        Command::Compat(args) => offline::compat_command(&args),
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
