//! `doc-rag eval`: measures retrieval quality and latency of a running doc-rag on a BEIR-layout
//! dataset. It ingests the corpus through the bulk API into a scratch collection (or reuses one),
//! runs every judged query in each requested mode, and reports nDCG@k, Recall@k, Recall@100 and
//! MRR@k (computed as BEIR / pytrec_eval and `../shared/bench/irbench.py` do, see [`metrics`]),
//! client-side latency percentiles and the server's own median `took_ms`.
//!
//! [`run`] does the work and returns the [`EvalReport`]; [`eval`] is the subcommand, which prints
//! it as a table or, with `--json`, as one JSON object.

pub mod dataset;
pub mod metrics;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::builder::TypedValueParser;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use reqwest::header::CACHE_CONTROL;
use serde_json::{Map, Value};
use uuid::Uuid;

use self::dataset::{CorpusDoc, Dataset, Query};
use self::metrics::Judgements;
pub use self::report::EvalReport;
use self::report::{IngestReport, Latency, ModeReport, QueryReport, metric_names};
use super::api::Api;
use super::bulk::{self, BulkOptions, ItemOutcome};
use super::client::ServerArgs;
use super::output::{emit, progress_bar};
use crate::api::model::{CreateDocument, SearchHit, SearchRequest, SearchResponse};
use crate::storage::CollectionInfo;
use crate::storage::vector::SearchMode;

/// `top_k` sent with every search: max(100, --top-k), capped at the API's maximum of 100. Deep
/// enough for Recall@100, and for the top k to be k documents after several chunks of one
/// document are folded into one.
const SEARCH_TOP_K: usize = 100;
/// How long a search may keep being refused as overloaded before the evaluation gives up.
const RETRY_WINDOW: Duration = Duration::from_secs(120);
/// A search taking longer than this is an error.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// BEIR-layout folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
    /// qrels/<split>.tsv (query-id, corpus-id, grade)
    #[arg(long)]
    pub dataset: PathBuf,
    /// Retrieval mode to evaluate, or all three
    #[arg(long, value_enum, default_value_t = EvalMode::Hybrid)]
    pub mode: EvalMode,
    /// The cut k of nDCG@k, Recall@k and MRR@k
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100).map(|n| n as usize))]
    pub top_k: usize,
    /// Print the report as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Collection to ingest into, or with --reuse to search (default: a new
    /// eval-<dataset>-<random> collection)
    #[arg(long)]
    pub collection: Option<String>,
    /// Search the corpus an earlier run ingested into --collection instead of ingesting it
    #[arg(long, requires = "collection")]
    pub reuse: bool,
    /// Use only the first N documents of the corpus
    #[arg(long)]
    pub max_docs: Option<usize>,
    /// Evaluate only the first N judged queries
    #[arg(long)]
    pub max_queries: Option<usize>,
    /// Searches in flight at once
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Which judgements to use: qrels/<split>.tsv
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Give up waiting for the corpus to be indexed after this many seconds
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalMode {
    Hybrid,
    Dense,
    Keyword,
    All,
}

impl EvalMode {
    fn modes(self) -> Vec<SearchMode> {
        match self {
            EvalMode::Hybrid => vec![SearchMode::Hybrid],
            EvalMode::Dense => vec![SearchMode::Dense],
            EvalMode::Keyword => vec![SearchMode::Keyword],
            EvalMode::All => vec![SearchMode::Hybrid, SearchMode::Dense, SearchMode::Keyword],
        }
    }
}

fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Hybrid => "hybrid",
        SearchMode::Dense => "dense",
        SearchMode::Keyword => "keyword",
    }
}

/// `doc-rag eval`: runs the evaluation and prints the report.
pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = run(args).await?;
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        emit(&report::render_table(&report))
    }
}

/// Loads the dataset, ingests the corpus (unless `--reuse`), runs the judged queries in each
/// mode and scores them.
pub async fn run(args: EvalArgs) -> anyhow::Result<EvalReport> {
    let mut dataset = Dataset::load(&args.dataset, &args.split)
        .with_context(|| format!("reading the dataset at {}", args.dataset.display()))?;
    if let Some(n) = args.max_docs {
        dataset.corpus.truncate(n);
    }
    let queries = dataset.judged_queries(args.max_queries);
    if queries.is_empty() {
        bail!(
            "no query in {} has judgements in qrels/{}.tsv",
            args.dataset.join("queries.jsonl").display(),
            args.split
        );
    }
    let api = Api::new(&args.server).await?;
    let collection = args
        .collection
        .clone()
        .unwrap_or_else(|| scratch_collection(&dataset.name));
    crate::limits::validate_collection(&collection)
        .map_err(|e| anyhow!("collection {collection:?}: {e}"))?;

    let ingest = if args.reuse {
        check_reusable(&api, &collection, dataset.corpus.len()).await?;
        None
    } else {
        eprintln!(
            "ingesting {} documents of {} into collection {collection}",
            dataset.corpus.len(),
            dataset.name
        );
        let timeout = Duration::from_secs(args.timeout_secs);
        Some(ingest_corpus(&api, &dataset.corpus, &collection, timeout).await?)
    };

    let k = args.top_k;
    let modes = args.mode.modes();
    let bar = progress_bar(queries.len() * modes.len(), "searching");
    let mut reports = BTreeMap::new();
    for mode in modes {
        bar.set_message(mode_name(mode));
        let searched = SearchRun {
            api: &api,
            collection: &collection,
            mode,
            concurrency: args.concurrency.max(1),
            bar: &bar,
        }
        .run(&queries)
        .await?;
        reports.insert(
            mode_name(mode).to_string(),
            score(&searched, &dataset.qrels, k),
        );
    }
    bar.finish_and_clear();

    let corpus_ids: std::collections::HashSet<&str> =
        dataset.corpus.iter().map(|d| d.id.as_str()).collect();
    let relevant: Vec<&String> = queries
        .iter()
        .flat_map(|q| dataset.qrels[&q.id].iter())
        .filter(|(_, g)| **g > 0)
        .map(|(id, _)| id)
        .collect();
    Ok(EvalReport {
        dataset: dataset.name.clone(),
        dataset_path: dataset.path.display().to_string(),
        collection,
        documents: dataset.corpus.len(),
        queries_total: dataset.queries.len(),
        queries: queries.len(),
        queries_without_relevant: queries
            .iter()
            .filter(|q| !dataset.qrels[&q.id].values().any(|g| *g > 0))
            .count(),
        relevant_judgements: relevant.len(),
        relevant_not_in_corpus: relevant
            .iter()
            .filter(|id| !corpus_ids.contains(id.as_str()))
            .count(),
        k,
        search_top_k: SEARCH_TOP_K,
        ingest,
        modes: reports,
    })
}

/// `eval-<dataset>-<8 hex>`, with whatever a collection name cannot hold replaced by `-`.
fn scratch_collection(dataset: &str) -> String {
    let clean: String = dataset
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let random = Uuid::new_v4().simple().to_string();
    format!("eval-{clean}-{}", &random[..8])
}

/// With `--reuse`, the collection must exist; fewer documents than the corpus is worth a warning.
async fn check_reusable(api: &Api, collection: &str, corpus: usize) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Collections {
        collections: Vec<CollectionInfo>,
    }
    let listed: Collections = api.json(api.get("/v1/collections")).await?;
    let Some(info) = listed.collections.iter().find(|c| c.name == collection) else {
        bail!(
            "collection {collection:?} does not exist (or you may not read it); leave out --reuse \
             to ingest the corpus"
        );
    };
    if (info.documents as usize) < corpus {
        eprintln!(
            "warning: collection {collection} holds {} documents, the corpus {corpus}",
            info.documents
        );
    }
    Ok(())
}

/// Sends the corpus through the bulk API with `external_id = _id` and `metadata.source_id =
/// _id`, waits until it is indexed, and says how long that took.
async fn ingest_corpus(
    api: &Api,
    corpus: &[CorpusDoc],
    collection: &str,
    timeout: Duration,
) -> anyhow::Result<IngestReport> {
    let documents = corpus.iter().map(|d| {
        let mut metadata = Map::new();
        metadata.insert("source_id".into(), Value::String(d.id.clone()));
        Ok(CreateDocument {
            title: Some(d.title.clone()),
            text: Some(d.text.clone()),
            external_id: Some(d.id.clone()),
            metadata: Some(metadata),
            ..CreateDocument::default()
        })
    });
    let options = BulkOptions {
        collection: Some(collection.to_string()),
        timeout,
        ..BulkOptions::default()
    };
    let outcome = bulk::upload(api, documents, &options).await?;

    let rejected: Vec<(usize, &str, &str)> = outcome.rejected().collect();
    if let Some((i, code, message)) = rejected.first() {
        eprintln!(
            "warning: {} documents were rejected (first: {}: {message} ({code}))",
            rejected.len(),
            corpus[*i].id
        );
    }
    let failed = outcome.failed_jobs();
    if failed > 0 {
        let first = outcome
            .failures
            .first()
            .map(|f| {
                format!(
                    " (first: {}: {})",
                    f.external_id.as_deref().unwrap_or("?"),
                    f.error
                )
            })
            .unwrap_or_default();
        eprintln!("warning: {failed} documents failed to index{first}");
    }
    let unfinished = outcome.count(|o| matches!(o, ItemOutcome::TimedOut { .. }));
    if unfinished > 0 {
        bail!(
            "{unfinished} documents were still not indexed after {} s; run again later with \
             --reuse --collection {collection}",
            timeout.as_secs()
        );
    }
    let accepted = outcome.accepted();
    let seconds = outcome.elapsed.as_secs_f64();
    Ok(IngestReport {
        documents: corpus.len(),
        accepted,
        rejected: rejected.len(),
        failed,
        seconds,
        docs_per_s: if seconds > 0.0 {
            accepted as f64 / seconds
        } else {
            0.0
        },
        upload_seconds: outcome.upload_time.as_secs_f64(),
    })
}

/// One query's search: the hits as (corpus id, score) in the server's order, and timings.
struct Searched {
    id: String,
    hits: Vec<(String, f32)>,
    latency_ms: f64,
    took_ms: u64,
}

struct SearchRun<'a> {
    api: &'a Api,
    collection: &'a str,
    mode: SearchMode,
    concurrency: usize,
    bar: &'a ProgressBar,
}

impl SearchRun<'_> {
    /// Every query, at most `concurrency` in flight, results in query order.
    async fn run(&self, queries: &[&Query]) -> anyhow::Result<Vec<Searched>> {
        stream::iter(queries)
            .map(|q| async move {
                let searched = self.search(q).await;
                self.bar.inc(1);
                searched
            })
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    /// One search with `Cache-Control: no-cache`, so the server computes the answer. The latency
    /// is that of the request that answered (a refusal as overloaded is waited out, not counted).
    async fn search(&self, query: &Query) -> anyhow::Result<Searched> {
        let body = SearchRequest {
            query: query.text.clone(),
            top_k: Some(SEARCH_TOP_K),
            mode: Some(self.mode),
            collection: Some(self.collection.to_string()),
            filter: None,
        };
        let deadline = Instant::now() + RETRY_WINDOW;
        let context = || format!("{} search for query {}", mode_name(self.mode), query.id);
        loop {
            let request = self
                .api
                .post("/v1/search")
                .header(CACHE_CONTROL, "no-cache")
                .timeout(SEARCH_TIMEOUT)
                .json(&body);
            let started = Instant::now();
            let answer = self.api.send(request).await.with_context(context)?;
            let latency = started.elapsed();
            if answer.status.is_success() {
                let response: SearchResponse = answer.decode().with_context(context)?;
                return Ok(Searched {
                    id: query.id.clone(),
                    hits: response
                        .results
                        .iter()
                        .map(|h| (corpus_id(h), h.score))
                        .collect(),
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    took_ms: response.took_ms,
                });
            }
            let error = answer.error();
            match error.retry_after() {
                Some(wait) if Instant::now() + wait < deadline => tokio::time::sleep(wait).await,
                _ => return Err(anyhow::Error::from(error).context(context())),
            }
        }
    }
}

/// The corpus id of a hit: its `metadata.source_id`; a document without one (not from this
/// corpus) gets an id of its own, so it counts as one unjudged document.
fn corpus_id(hit: &SearchHit) -> String {
    match hit.metadata.get("source_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("document:{}", hit.document_id),
    }
}

/// Scores one mode's searches against the judgements.
fn score(
    searched: &[Searched],
    qrels: &std::collections::HashMap<String, Judgements>,
    k: usize,
) -> ModeReport {
    let names = metric_names(k);
    let mut per_query = Vec::with_capacity(searched.len());
    for s in searched {
        let judged = &qrels[&s.id];
        let ranked = metrics::rank(s.hits.iter().cloned());
        let values = [
            (format!("ndcg@{k}"), metrics::ndcg_at(&ranked, judged, k)),
            (
                format!("recall@{k}"),
                metrics::recall_at(&ranked, judged, k),
            ),
            (
                "recall@100".to_string(),
                metrics::recall_at(&ranked, judged, 100),
            ),
            (format!("mrr@{k}"), metrics::mrr_at(&ranked, judged, k)),
        ];
        per_query.push(QueryReport {
            id: s.id.clone(),
            metrics: values.into_iter().collect(),
            latency_ms: s.latency_ms,
            took_ms: s.took_ms,
            top: ranked.into_iter().take(k).collect(),
        });
    }
    let means = names
        .into_iter()
        .map(|name| {
            let mean = metrics::mean(per_query.iter().map(|q| q.metrics[&name]));
            (name, mean)
        })
        .collect();
    let latencies: Vec<f64> = searched.iter().map(|s| s.latency_ms).collect();
    let took: Vec<f64> = searched.iter().map(|s| s.took_ms as f64).collect();
    let pct = |values: &[f64], p| metrics::percentile(values, p).unwrap_or(0.0);
    ModeReport {
        metrics: means,
        latency_ms: Latency {
            p50: pct(&latencies, 50.0),
            p95: pct(&latencies, 95.0),
            p99: pct(&latencies, 99.0),
            mean: metrics::mean(latencies.iter().copied()),
        },
        server_took_ms_p50: pct(&took, 50.0),
        empty_results: searched.iter().filter(|s| s.hits.is_empty()).count(),
        per_query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_collections_are_valid_names() {
        let name = scratch_collection("dbpedia 5k/ü");
        assert!(name.starts_with("eval-dbpedia-5k---"), "{name}");
        assert_eq!(name.len(), "eval-dbpedia-5k---".len() + 8);
        crate::limits::validate_collection(&name).unwrap();
        crate::limits::validate_collection(&scratch_collection(&"x".repeat(500))).unwrap();
        assert_ne!(scratch_collection("a"), scratch_collection("a"));
    }

    #[test]
    fn scores_each_mode_from_deduplicated_rankings() {
        let qrels: std::collections::HashMap<String, Judgements> =
            [("q1", vec![("a", 2), ("b", 1)]), ("q2", vec![("z", 1)])]
                .into_iter()
                .map(|(q, j)| {
                    (
                        q.to_string(),
                        j.into_iter().map(|(d, g)| (d.to_string(), g)).collect(),
                    )
                })
                .collect();
        let searched = vec![
            Searched {
                id: "q1".into(),
                hits: vec![("a".into(), 0.9), ("a".into(), 0.8), ("b".into(), 0.5)],
                latency_ms: 10.0,
                took_ms: 8,
            },
            Searched {
                id: "q2".into(),
                hits: vec![("x".into(), 0.9), ("z".into(), 0.4)],
                latency_ms: 30.0,
                took_ms: 20,
            },
        ];
        let report = score(&searched, &qrels, 1);
        // q1: "a" (grade 2) first: nDCG@1 = 1, MRR@1 = 1, R@1 = 1/2. q2: "x" first: all 0 at 1,
        // but "z" is found within 100.
        assert_eq!(report.per_query[0].metrics["ndcg@1"], 1.0);
        assert_eq!(report.per_query[0].metrics["recall@1"], 0.5);
        assert_eq!(report.per_query[0].top, ["a"]);
        assert_eq!(report.per_query[1].metrics["mrr@1"], 0.0);
        assert_eq!(report.per_query[1].metrics["recall@100"], 1.0);
        assert_eq!(report.metrics["ndcg@1"], 0.5);
        assert_eq!(report.metrics["recall@1"], 0.25);
        assert_eq!(report.metrics["recall@100"], 1.0);
        assert_eq!(report.metrics["mrr@1"], 0.5);
        assert_eq!(report.latency_ms.p50, 20.0);
        assert_eq!(report.server_took_ms_p50, 14.0);
        assert_eq!(report.empty_results, 0);
    }
}
