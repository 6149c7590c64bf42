use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = relkd_export::cli::Cli::parse();
    relkd_core::files::remove_pending_on_interrupt();
    match relkd_export::cli::run(cli) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", relkd_core::errors::one_line(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
