//! `doc-rag reindex`: asks a running service to embed and index every document again
//! (`POST /v1/admin/reindex` on the storage port), then follows the job queue with a progress bar
//! until it is empty. The service keeps answering from the old vectors meanwhile.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::credentials;

#[derive(Args, Debug, Clone)]
pub struct ReindexArgs {
    /// Base URL of the storage port
    #[arg(
        long,
        env = "DOCRAG_STORAGE_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub url: String,
    /// Admin access token or API key (default: the session `doc-rag login` stored)
    #[arg(long, env = "DOCRAG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only this collection's documents
    #[arg(long)]
    pub collection: Option<String>,
    /// Return once the documents are queued, without following the queue
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn reindex(args: ReindexArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .user_agent(concat!("doc-rag-cli/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let token = credentials::explicit_or_stored(&http, args.token.as_deref())
        .await
        .context(
            "no credentials: `doc-rag login`, or --token / DOCRAG_TOKEN with an admin token",
        )?;
    let body = match &args.collection {
        Some(c) => json!({ "collection": c }),
        None => json!({}),
    };
    let response = http
        .post(format!("{base}/v1/admin/reindex"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the storage port at {base}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{status}: {}",
            answer["message"].as_str().unwrap_or("re-index refused")
        );
    }
    let queued = answer["queued"].as_u64().unwrap_or(0);
    println!("queued {queued} documents to be indexed again");
    if args.no_wait || queued == 0 {
        return Ok(());
    }
    let bar = ProgressBar::new(queued);
    bar.set_style(
        ProgressStyle::with_template(
            "re-indexing {bar:40} {pos}/{len} documents ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stats = loop {
        let stats: Value = http
            .get(format!("{base}/v1/stats"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let jobs = &stats["jobs"];
        let open = jobs["queued"].as_u64().unwrap_or(0) + jobs["running"].as_u64().unwrap_or(0);
        bar.set_position(queued.saturating_sub(open));
        if open == 0 {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    println!(
        "done: {} of {} documents indexed",
        stats["documents_indexed"], stats["documents"]
    );
    Ok(())
}
