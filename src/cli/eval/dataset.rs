//! A retrieval dataset in BEIR's layout: `corpus.jsonl` (`_id`, `title`, `text`),
//! `queries.jsonl` (`_id`, `text`) and `qrels/<split>.tsv` (query id, corpus id, grade; tab
//! separated, with or without a header row). Read the way irbench reads it, so both evaluate the
//! same queries against the same judgements.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use super::metrics::Judgements;

#[derive(Debug, Clone, PartialEq)]
pub struct CorpusDoc {
    pub id: String,
    /// Empty when the corpus has none (MS MARCO-style corpora).
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub id: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder's name.
    pub name: String,
    pub path: PathBuf,
    pub corpus: Vec<CorpusDoc>,
    /// In file order.
    pub queries: Vec<Query>,
    /// Query id → judgements, for every query the qrels name (some may not be in `queries`).
    pub qrels: HashMap<String, Judgements>,
}

impl Dataset {
    /// Reads the dataset at `dir`, with the judgements of `split` (`qrels/<split>.tsv`).
    pub fn load(dir: &Path, split: &str) -> anyhow::Result<Self> {
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "dataset".to_string());
        let corpus = read_jsonl(&dir.join("corpus.jsonl"), |v| {
            Ok(CorpusDoc {
                id: id_of(&v)?,
                title: string_field(&v, "title"),
                text: string_field(&v, "text"),
            })
        })?;
        let queries = read_jsonl(&dir.join("queries.jsonl"), |v| {
            Ok(Query {
                id: id_of(&v)?,
                text: string_field(&v, "text"),
            })
        })?;
        let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
        let text = std::fs::read_to_string(&qrels_path)
            .with_context(|| format!("reading {}", qrels_path.display()))?;
        let qrels = parse_qrels(&text).with_context(|| format!("in {}", qrels_path.display()))?;
        Ok(Dataset {
            name,
            path: dir.to_path_buf(),
            corpus,
            queries,
            qrels,
        })
    }

    /// The queries to evaluate: those with judgements, in `queries.jsonl` order, the first
    /// `max` of them when given.
    pub fn judged_queries(&self, max: Option<usize>) -> Vec<&Query> {
        self.queries
            .iter()
            .filter(|q| self.qrels.contains_key(&q.id))
            .take(max.unwrap_or(usize::MAX))
            .collect()
    }
}

fn read_jsonl<T>(
    path: &Path,
    parse: impl Fn(Value) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(anyhow::Error::from)
                .and_then(&parse)
                .with_context(|| format!("{} line {}", path.display(), n + 1))
        })
        .collect()
}

/// `_id` as a string (some datasets write numbers).
fn id_of(v: &Value) -> anyhow::Result<String> {
    match v.get("_id") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => bail!("no _id"),
    }
}

/// A text field, empty when missing or null.
fn string_field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// `query-id \t corpus-id \t grade` lines. A first line whose grade is not a number is a header;
/// anywhere else it is an error. Lines with fewer than three fields are skipped.
pub fn parse_qrels(text: &str) -> anyhow::Result<HashMap<String, Judgements>> {
    let mut qrels: HashMap<String, Judgements> = HashMap::new();
    for (n, line) in text.split('\n').enumerate() {
        let parts: Vec<&str> = line.split('\t').collect();
        if parts.len() < 3 {
            continue;
        }
        let grade: i64 = match parts[2].trim().parse() {
            Ok(g) => g,
            Err(_) if n == 0 => continue,
            Err(e) => bail!("line {}: grade {:?}: {e}", n + 1, parts[2]),
        };
        qrels
            .entry(parts[0].to_string())
            .or_default()
            .insert(parts[1].to_string(), grade);
    }
    Ok(qrels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qrels_with_or_without_a_header() {
        let with = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\r\nq2\td1\t1\n\n";
        let without = "q1\td1\t2\nq1\td2\t0\nq2\td1\t1";
        for text in [with, without] {
            let qrels = parse_qrels(text).unwrap();
            assert_eq!(qrels.len(), 2);
            assert_eq!(qrels["q1"]["d1"], 2);
            assert_eq!(qrels["q1"]["d2"], 0);
            assert_eq!(qrels["q2"]["d1"], 1);
        }
        assert!(parse_qrels("q1\td1\t2\nq1\td2\tx\n").is_err());
    }

    #[test]
    fn loads_a_beir_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tiny set");
        std::fs::create_dir_all(root.join("qrels")).unwrap();
        std::fs::write(
            root.join("corpus.jsonl"),
            "{\"_id\": \"d1\", \"title\": \"One\", \"text\": \"first\"}\n\n\
             {\"_id\": 2, \"text\": \"second\", \"title\": null}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("queries.jsonl"),
            "{\"_id\": \"q1\", \"text\": \"one?\"}\n{\"_id\": \"q2\", \"text\": \"two?\"}\n\
             {\"_id\": \"q3\", \"text\": \"unjudged\"}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\nq2\t2\t1\nq1\td1\t1\nq9\td1\t1\n",
        )
        .unwrap();
        let ds = Dataset::load(&root, "test").unwrap();
        assert_eq!(ds.name, "tiny set");
        assert_eq!(
            ds.corpus[1],
            CorpusDoc {
                id: "2".into(),
                title: String::new(),
                text: "second".into()
            }
        );
        let ids = |qs: Vec<&Query>| qs.iter().map(|q| q.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(ds.judged_queries(None)), ["q1", "q2"]);
        assert_eq!(ids(ds.judged_queries(Some(1))), ["q1"]);

        std::fs::write(root.join("corpus.jsonl"), "{\"title\": \"no id\"}\n").unwrap();
        let err = format!("{:#}", Dataset::load(&root, "test").unwrap_err());
        assert!(err.contains("line 1") && err.contains("no _id"), "{err}");
    }
}
