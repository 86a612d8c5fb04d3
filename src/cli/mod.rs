//! The `doc-rag` command line: `serve` and `migrate` run the service side; `ingest`, `ask` and
//! `search` are HTTP clients of a running service (see [`client`]), `eval` measures its retrieval
//! on a BEIR dataset (see [`eval`]); `login`, `logout` and `admin` manage sessions and security
//! (see [`admin`]); `backup` and `restore` copy every store (see [`backup`]), and `reindex` asks a
//! running service to index everything again.

pub mod admin;
mod api;
mod ask;
pub mod backup;
pub mod bulk;
pub mod client;
pub mod credentials;
pub mod eval;
mod files;
mod output;
mod reindex;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "doc-rag",
    version,
    about = "Document RAG service: ingest documents, ask questions, get cited answers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service (all six module servers)
    Serve(ServiceArgs),
    /// Create or upgrade the database schema, then exit (--down N reverts the N latest)
    Migrate(MigrateArgs),
    /// Upload files or folders and wait until they are indexed
    Ingest(client::IngestArgs),
    /// Ask a question; streams the answer, then prints its numbered sources
    Ask(client::AskArgs),
    /// Rate an answer up or down (by the query id `ask` prints)
    Feedback(client::FeedbackArgs),
    /// Search; prints ranked chunks with scores
    Search(client::SearchArgs),
    /// Measure retrieval quality (nDCG, recall, MRR) and latency on a BEIR-layout dataset
    Eval(eval::EvalArgs),
    /// Log in; the session is stored for later commands (mode 0600)
    Login(admin::LoginArgs),
    /// End the stored session
    Logout(admin::LogoutArgs),
    /// Users, API keys, JWT rotation, session revocation, IP blocks, audit log, rate limits
    Admin(admin::AdminArgs),
    /// Check that every store agrees (chunks, vectors, jobs); --repair fixes what it finds
    Verify(VerifyArgs),
    /// Back up every store (documents, chunks, vectors, users, keys, audit) into a new directory
    Backup(backup::BackupArgs),
    /// Restore a backup into empty stores of any backend, then verify them
    Restore(backup::RestoreArgs),
    /// Embed and index every document again (after a model change); the old vectors serve
    /// meanwhile
    Reindex(reindex::ReindexArgs),
    /// Internal: a sandboxed document parser the server starts (reads requests on stdin)
    #[command(hide = true)]
    ParseWorker(ParseWorkerArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ParseWorkerArgs {
    /// Address-space limit in MiB
    #[arg(long, default_value_t = 2048)]
    pub memory_max_mb: u64,
    /// CPU seconds per document
    #[arg(long, default_value_t = 60)]
    pub cpu_max_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Re-index documents whose chunks or vectors are missing and remove orphans
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Revert the N most recent migrations (a manual rollback to the previous release's schema;
    /// migrations stay backward compatible for one release, so this is rarely needed)
    #[arg(long, value_name = "N")]
    pub down: Option<usize>,
}

/// Configuration flags of the service side; they override files and environment.
#[derive(Args, Debug, Clone, Default)]
pub struct ServiceArgs {
    /// Environment file (TOML) layered over the defaults
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// storage.data_dir
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// database.url (postgres://… or empty for SQLite in the data dir)
    #[arg(long)]
    pub database_url: Option<String>,
    /// log.format: pretty | json
    #[arg(long)]
    pub log_format: Option<String>,
    /// Any key: --set section.key=value (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ServiceArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut o = Overrides {
            config_file: self.config.clone(),
            pairs: Vec::new(),
        };
        if let Some(d) = &self.data_dir {
            o = o.set("storage.data_dir", d.display().to_string());
        }
        if let Some(u) = &self.database_url {
            o = o.set("database.url", u.clone());
        }
        if let Some(f) = &self.log_format {
            o = o.set("log.format", f.clone());
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
            o = o.set(k.trim(), v.trim().to_string());
        }
        Ok(Settings::load(o)?)
    }
}

/// `doc-rag verify`: opens the stores directly (the server must be stopped when they are
/// embedded; with the server running, use `POST /v1/admin/verify` on the storage port).
async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let settings = args.service.settings()?;
    crate::telemetry::init_logging(&settings);
    let storage = crate::open_storage(&settings).await.context(
        "cannot open the stores (is the server running? then use POST /v1/admin/verify on the \
         storage port)",
    )?;
    let report = crate::storage::verify::verify(&storage, args.repair).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let c = &report.checked;
        println!(
            "checked {} documents, {} chunks, {} vectors ({} with a job in flight)",
            c.documents, c.chunks, c.vectors, c.in_flight
        );
        for p in &report.problems {
            println!("problem  {:<16} {}  {}", p.kind, p.id, p.detail);
        }
        for r in &report.repaired {
            println!("repaired {r}");
        }
        println!("{}", if report.ok { "ok" } else { "NOT ok" });
    }
    if report.ok || args.repair {
        Ok(())
    } else {
        anyhow::bail!(
            "the stores disagree ({} problems); run with --repair",
            report.problems.len()
        )
    }
}

/// Runs the command line. The parse worker runs without an async runtime (it is one thread
/// under tight limits); everything else runs on tokio.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    if let Command::ParseWorker(args) = &cli.command {
        return crate::ingest::sandbox::serve_worker(args.memory_max_mb, args.cpu_max_secs);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            crate::telemetry::init_logging(&settings);
            tracing::info!(data_dir = %settings.storage.data_dir.display(), "starting doc-rag {}", env!("CARGO_PKG_VERSION"));
            let app = crate::Application::build(settings).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "start-up failed");
                e
            })?;
            reload_log_level_on_sighup(args);
            let stopped = app.run_until_stopped().await;
            crate::telemetry::flush_traces();
            stopped
        }
        Command::Migrate(args) => {
            let settings = args.service.settings()?;
            crate::telemetry::init_logging(&settings);
            let Some(n) = args.down else {
                let storage = crate::open_storage(&settings).await?;
                println!(
                    "database schema is up to date ({})",
                    storage.metadata.backend()
                );
                return Ok(());
            };
            let sql = crate::connect_database(&settings).await?;
            let reverted = sql.revert_migrations(n).await?;
            for version in &reverted {
                println!("reverted {version}");
            }
            println!(
                "{} migration(s) reverted ({}); a newer binary upgrades the schema again at start-up",
                reverted.len(),
                crate::storage::MetadataStore::backend(&sql)
            );
            Ok(())
        }
        Command::Ingest(args) => client::ingest(args).await,
        Command::Ask(args) => ask::ask(args).await,
        Command::Feedback(args) => client::feedback(args).await,
        Command::Search(args) => client::search(args).await,
        Command::Eval(args) => eval::eval(args).await,
        Command::Login(args) => admin::login(args).await,
        Command::Logout(args) => admin::logout(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Reindex(args) => reindex::reindex(args).await,
        Command::ParseWorker(args) => {
            crate::ingest::sandbox::serve_worker(args.memory_max_mb, args.cpu_max_secs)
        }
    }
}

/// `SIGHUP` re-reads the configuration (files, environment, flags) and applies its `log.level`;
/// other settings need a restart.
fn reload_log_level_on_sighup(args: ServiceArgs) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match args.settings() {
                Ok(settings) => match crate::telemetry::set_log_level(&settings.log.level) {
                    Ok(()) => {
                        tracing::warn!(level = %settings.log.level, "SIGHUP: log level applied")
                    }
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: log level not changed"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: the configuration does not load; nothing changed")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = args;
}
