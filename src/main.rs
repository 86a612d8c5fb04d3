use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = doc_rag::cli::Cli::parse();
    match doc_rag::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
