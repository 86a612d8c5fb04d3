//! `doc-rag backup` and `doc-rag restore`: the stores are opened directly, as `verify` does (with
//! embedded stores the server must be stopped; a running server backs itself up with
//! `POST /v1/admin/backups` on the storage port).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::ServiceArgs;
use crate::backup::remote::Location;
use crate::backup::{Progress, RestoreOptions};

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// A new or empty directory for the backup, or s3://bucket/prefix (credentials, region and
    /// endpoint from the AWS_* variables)
    #[arg(long, value_name = "DIR|S3_URL")]
    pub out: String,
    /// Print the manifest as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The backup: its directory (with manifest.json), or s3://bucket/prefix
    #[arg(long, value_name = "DIR|S3_URL")]
    pub from: String,
    /// Restore into stores that hold documents already; the backup's documents replace those
    /// with the same id
    #[arg(long)]
    pub force: bool,
    /// Leave the backup's vectors out and index every document again with the configured model
    #[arg(long)]
    pub skip_vectors: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// A progress bar on stderr over documents.
struct Bar(ProgressBar);

impl Bar {
    fn new(verb: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{verb} {{bar:40}} {{pos}}/{{len}} documents ({{per_sec}}, {{eta}} left)"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

async fn open(
    service: &ServiceArgs,
    api: &str,
) -> anyhow::Result<(crate::config::Settings, crate::storage::Storage)> {
    let settings = service.settings()?;
    crate::telemetry::init_cli_logging();
    let storage = crate::open_storage(&settings).await.with_context(|| {
        format!(
            "cannot open the stores (is the server running? then use {api} on the storage port)"
        )
    })?;
    Ok((settings, storage))
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let location = Location::parse(&args.out)?;
    let (settings, storage) = open(&args.service, "POST /v1/admin/backups").await?;
    let started = Instant::now();
    // An S3 backup is staged locally first (see backup::remote); the staging directory goes
    // when `_staging` drops.
    let (dir, _staging): (PathBuf, Option<tempfile::TempDir>) = match &location {
        Location::Dir(d) => (d.clone(), None),
        Location::S3 { .. } => {
            let t = tempfile::Builder::new()
                .prefix("doc-rag-backup-")
                .tempdir()?;
            (t.path().join("backup"), Some(t))
        }
    };
    let bar = Bar::new("backing up");
    let manifest = crate::backup::backup(&storage, &settings, &dir, &bar).await;
    bar.0.finish_and_clear();
    let manifest = manifest?;
    if let Location::S3 { bucket, prefix } = &location {
        let sent = crate::backup::remote::upload(&dir, bucket, prefix).await?;
        println!("uploaded {sent} bytes to s3://{bucket}/{prefix}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    let c = &manifest.counts;
    let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    println!(
        "backed up {} documents ({} indexed, {} to index again, {} failed), {} chunks, {} vectors, \
         {} users, {} API keys, {} audit events, {} conversations, {} answers, {} ratings",
        c.documents,
        c.indexed,
        c.pending,
        c.failed,
        c.chunks,
        c.vectors,
        c.users,
        c.api_keys,
        c.audit_events,
        c.conversations,
        c.answers,
        c.feedback
    );
    if c.left_out > 0 {
        println!(
            "left out {} documents created or deleted after the snapshot",
            c.left_out
        );
    }
    println!(
        "{}: {:.1} MiB in {:.1} s (snapshot {})",
        args.out,
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
        manifest.snapshot_at.to_rfc3339()
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (settings, storage) =
        open(&args.service, "doc-rag restore with the server stopped").await?;
    let started = Instant::now();
    let bar = Bar::new("restoring");
    let options = RestoreOptions {
        force: args.force,
        skip_vectors: args.skip_vectors,
    };
    let staging;
    let dir: PathBuf = match Location::parse(&args.from)? {
        Location::Dir(d) => d,
        Location::S3 { bucket, prefix } => {
            staging = tempfile::Builder::new()
                .prefix("doc-rag-restore-")
                .tempdir()?;
            crate::backup::remote::download(&bucket, &prefix, staging.path()).await?;
            staging.path().to_path_buf()
        }
    };
    let report = crate::backup::restore(&storage, &settings, &dir, &options, &bar).await;
    bar.0.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let m = &report.manifest;
        println!(
            "restored {} documents, {} chunks, {} vectors, {} users, {} API keys, {} grants, {} IP \
             blocks, {} audit events, {} conversations, {} answers, {} ratings in {:.1} s (backup \
             of {} from {} / {} / {})",
            report.documents,
            report.chunks,
            report.vectors,
            report.users,
            report.api_keys,
            report.grants,
            report.ip_blocks,
            report.audit_events,
            report.conversations,
            report.answers,
            report.feedback,
            started.elapsed().as_secs_f64(),
            m.snapshot_at.to_rfc3339(),
            m.backends.metadata,
            m.backends.documents,
            m.backends.vectors
        );
        if report.queued > 0 {
            println!(
                "{} documents are queued: the server indexes them when it starts",
                report.queued
            );
        }
        if report.replaced > 0 {
            println!("{} documents of the target were replaced", report.replaced);
        }
        for s in &report.skipped {
            println!("kept the target's {s}");
        }
        let v = &report.verify;
        println!(
            "verify: checked {} documents, {} chunks, {} vectors: {}",
            v.checked.documents,
            v.checked.chunks,
            v.checked.vectors,
            if v.ok { "ok" } else { "NOT ok" }
        );
        for p in &v.problems {
            println!("problem  {:<16} {}  {}", p.kind, p.id, p.detail);
        }
    }
    if report.verify.ok {
        Ok(())
    } else {
        anyhow::bail!(
            "verify found {} problems after the restore; `doc-rag verify --repair` fixes them",
            report.verify.problems.len()
        )
    }
}
