//! The `codereader` binary: see the library's `cli` module.

fn main() -> std::process::ExitCode {
    codereader::cli::main()
}
