//! `codereader-verifier`: the verifier HTTP service and the operators' offline commands.
//!
//! Thin glue: parse the command line (with the settings file of `serve --config` merged
//! in) and hand the command to its module in `src/cli/`: `serve`, `token` (with `kek` for
//! the keyring commands) or `api_key`. The definition of the command line is `cli::args`;
//! opening the store from its flags, `cli::store`; what the offline commands print,
//! `cli::print`. The HTTP service itself is the library (`src/lib.rs`).

mod cli;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches};
use codereader_verifier_server::config_file::{self, Settings};

use cli::api_key::api_key;
use cli::args::{Cli, Command};
use cli::serve::{SettingsSource, serve};
use cli::token::token;

fn main() -> ExitCode {
    let (cli, settings) = match parse_command_line() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    match run(cli, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("codereader-verifier: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, with the settings file of `serve --config` merged in
/// ([`config_file::merge`]), and where the settings came from, for SIGHUP. Errors are
/// printed; the exit code is clap's for a usage error (2), also for a refused file.
fn parse_command_line() -> Result<(Cli, Option<SettingsSource>), ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (merged, file) = config_file::merge(&Cli::command(), "serve", &argv).map_err(|error| {
        eprintln!("codereader-verifier: {error}");
        ExitCode::from(2)
    })?;
    let matches = Cli::command()
        .try_get_matches_from(&merged)
        .map_err(|error| {
            let _ = error.print();
            if let (Some(file), true) = (&file, error.use_stderr()) {
                // The flags clap names may have come from the file.
                eprintln!(
                    "codereader-verifier: (the command line together with the settings in {})",
                    file.path().display()
                );
            }
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        })?;
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settings = file.and_then(|file| {
        let root = Cli::command();
        Some(SettingsSource {
            running: Settings::of(
                root.find_subcommand("serve")?,
                matches.subcommand_matches("serve")?,
            ),
            argv,
            file: file.path().to_owned(),
        })
    });
    Ok((cli, settings))
}

fn run(cli: Cli, settings: Option<SettingsSource>) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args, settings),
        Command::Token(command) => token(command),
        Command::ApiKey(command) => api_key(command),
    }
}
