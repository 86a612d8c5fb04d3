//! What `doc-rag eval` reports: the [`EvalReport`] (printed as one JSON object with `--json`) and
//! its table rendering.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The dataset folder's name.
    pub dataset: String,
    pub dataset_path: String,
    /// Where the corpus is (reuse it with `--reuse --collection NAME`).
    pub collection: String,
    /// Corpus documents (after `--max-docs`).
    pub documents: usize,
    /// Queries in `queries.jsonl` (after nothing).
    pub queries_total: usize,
    /// Queries evaluated: those with judgements (after `--max-queries`).
    pub queries: usize,
    /// Evaluated queries whose judgements are all ≤ 0: they score 0 and count in the means.
    pub queries_without_relevant: usize,
    /// Relevant (grade > 0) judgements of the evaluated queries, and how many of those name a
    /// document that is not in the corpus (they still count in the ideal ranking and in recall).
    pub relevant_judgements: usize,
    pub relevant_not_in_corpus: usize,
    /// The cut of nDCG, Recall and MRR (`--top-k`).
    pub k: usize,
    /// `top_k` sent with each search.
    pub search_top_k: usize,
    /// Present when this run ingested the corpus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestReport>,
    /// By mode name.
    pub modes: BTreeMap<String, ModeReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestReport {
    pub documents: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Jobs that failed.
    pub failed: usize,
    /// From the first request until every batch finished.
    pub seconds: f64,
    /// `accepted / seconds`.
    pub docs_per_s: f64,
    /// The part of `seconds` spent sending the requests.
    pub upload_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    /// `ndcg@k`, `recall@k`, `recall@100`, `mrr@k`: means over the evaluated queries.
    pub metrics: BTreeMap<String, f64>,
    /// Client-side request latency, in ms.
    pub latency_ms: Latency,
    /// Median of the server's own `took_ms`.
    pub server_took_ms_p50: f64,
    /// Queries that returned no result at all.
    pub empty_results: usize,
    pub per_query: Vec<QueryReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryReport {
    pub id: String,
    pub metrics: BTreeMap<String, f64>,
    pub latency_ms: f64,
    pub took_ms: u64,
    /// The first k corpus ids, in the ranking the metrics were computed on.
    pub top: Vec<String>,
}

/// Metric names for a cut of `k`, in the order the table shows them.
pub fn metric_names(k: usize) -> Vec<String> {
    let mut names = vec![format!("ndcg@{k}"), format!("recall@{k}")];
    if k != 100 {
        names.push("recall@100".to_string());
    }
    names.push(format!("mrr@{k}"));
    names
}

/// The human-readable report.
pub fn render_table(report: &EvalReport) -> String {
    let mut out = format!(
        "dataset     {}: {} documents, {} queries evaluated ({} in queries.jsonl)",
        report.dataset, report.documents, report.queries, report.queries_total
    );
    if report.queries_without_relevant > 0 {
        out.push_str(&format!(
            "; {} without relevant documents (scored 0)",
            report.queries_without_relevant
        ));
    }
    if report.relevant_not_in_corpus > 0 {
        out.push_str(&format!(
            "; {} of {} relevant judgements name documents not in the corpus",
            report.relevant_not_in_corpus, report.relevant_judgements
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "collection  {} (run again on it with --reuse --collection {})\n",
        report.collection, report.collection
    ));
    if let Some(ingest) = &report.ingest {
        out.push_str(&format!(
            "ingest      {} documents in {:.1} s ({:.1} docs/s; sending {:.1} s), {} rejected, {} failed\n",
            ingest.accepted,
            ingest.seconds,
            ingest.docs_per_s,
            ingest.upload_seconds,
            ingest.rejected,
            ingest.failed
        ));
    }
    out.push('\n');

    let names = metric_names(report.k);
    let headers: Vec<String> = names
        .iter()
        .map(|n| {
            n.replace("ndcg", "nDCG")
                .replace("recall", "R")
                .replace("mrr", "MRR")
        })
        .chain(["p50 ms", "p95 ms", "p99 ms", "server p50 ms"].map(String::from))
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (mode, m) in &report.modes {
        let mut row = vec![mode.clone()];
        row.extend(
            names
                .iter()
                .map(|n| format!("{:.4}", m.metrics.get(n).copied().unwrap_or(0.0))),
        );
        row.extend([
            format!("{:.1}", m.latency_ms.p50),
            format!("{:.1}", m.latency_ms.p95),
            format!("{:.1}", m.latency_ms.p99),
            format!("{:.1}", m.server_took_ms_p50),
        ]);
        rows.push(row);
    }
    let mut widths: Vec<usize> = std::iter::once(4)
        .chain(headers.iter().map(|h| h.len()))
        .collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                text.push_str(&format!("{cell:<w$}"));
            } else {
                text.push_str(&format!("  {cell:>w$}"));
            }
        }
        text.push('\n');
        text
    };
    out.push_str(&line(
        std::iter::once("mode".to_string()).chain(headers).collect(),
    ));
    for row in rows {
        out.push_str(&line(row));
    }
    for (mode, m) in &report.modes {
        if m.empty_results > 0 {
            out.push_str(&format!(
                "note: {} {mode} queries returned no results\n",
                m.empty_results
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_row_per_mode() {
        let mode = |ndcg: f64| ModeReport {
            metrics: metric_names(10).into_iter().map(|n| (n, ndcg)).collect(),
            latency_ms: Latency {
                p50: 12.34,
                p95: 20.0,
                p99: 25.5,
                mean: 13.0,
            },
            server_took_ms_p50: 10.0,
            empty_results: 0,
            per_query: vec![],
        };
        let report = EvalReport {
            dataset: "tiny".into(),
            dataset_path: "/d/tiny".into(),
            collection: "eval-tiny-0a1b2c3d".into(),
            documents: 12,
            queries_total: 6,
            queries: 5,
            queries_without_relevant: 1,
            relevant_judgements: 9,
            relevant_not_in_corpus: 0,
            k: 10,
            search_top_k: 100,
            ingest: Some(IngestReport {
                documents: 12,
                accepted: 12,
                rejected: 0,
                failed: 0,
                seconds: 2.0,
                docs_per_s: 6.0,
                upload_seconds: 0.1,
            }),
            modes: [
                ("dense".to_string(), mode(0.5)),
                ("hybrid".to_string(), mode(0.75)),
            ]
            .into_iter()
            .collect(),
        };
        let table = render_table(&report);
        assert!(table.contains("1 without relevant documents"), "{table}");
        assert!(
            table.contains("--reuse --collection eval-tiny-0a1b2c3d"),
            "{table}"
        );
        assert!(
            table.contains("12 documents in 2.0 s (6.0 docs/s"),
            "{table}"
        );
        let lines: Vec<&str> = table.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("mode")).unwrap();
        assert_eq!(
            lines[header].split_whitespace().collect::<Vec<_>>(),
            [
                "mode", "nDCG@10", "R@10", "R@100", "MRR@10", "p50", "ms", "p95", "ms", "p99",
                "ms", "server", "p50", "ms"
            ]
        );
        assert_eq!(
            lines[header + 1].split_whitespace().collect::<Vec<_>>(),
            [
                "dense", "0.5000", "0.5000", "0.5000", "0.5000", "12.3", "20.0", "25.5", "10.0"
            ]
        );
        assert!(lines[header + 2].starts_with("hybrid"));
        assert_eq!(metric_names(100), ["ndcg@100", "recall@100", "mrr@100"]);
    }
}
