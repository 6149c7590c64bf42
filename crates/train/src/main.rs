use clap::Parser;

fn main() -> std::process::ExitCode {
    relkd_models::cpu::keep_freed_memory();
    let cli = relkd_train::cli::Cli::parse();
    relkd_core::files::remove_pending_on_interrupt();
    match relkd_train::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", relkd_core::errors::one_line(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
