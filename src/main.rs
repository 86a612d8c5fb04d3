use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = doc_rag::cli::Cli::parse();
    match doc_rag::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
