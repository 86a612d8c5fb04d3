//! Retrieval metrics as BEIR computes them through pytrec_eval (trec_eval), and exactly as
//! `../shared/bench/irbench.py` does, so the two report the same numbers for the same rankings:
//!
//! - a run is ranked by score descending, ties by corpus id descending (trec_eval's order), after
//!   keeping only the first (best) hit of each document;
//! - nDCG@k: gain = the judged grade (linear, not 2^grade − 1), discount 1 / log2(rank + 1) for
//!   ranks 1..=k; the ideal DCG comes from the query's positive grades sorted descending and cut
//!   at k (judged documents missing from the corpus still count in the ideal);
//! - Recall@k: relevant (grade > 0) documents in the top k / all relevant documents;
//! - MRR@k: 1 / rank of the first relevant document in the top k, else 0;
//! - a query whose judgements are all ≤ 0 scores 0 on every metric and still counts in the
//!   mean, as in pytrec_eval and irbench (the report says how many there were).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// One query's judgements: corpus id → grade.
pub type Judgements = HashMap<String, i64>;

/// The corpus ids of `hits` (corpus id, score), in the server's order, in trec_eval's ranking:
/// each id once with its first (best) score, then by score descending and id descending.
pub fn rank(hits: impl IntoIterator<Item = (String, f32)>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut run: Vec<(String, f32)> = hits
        .into_iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect();
    run.sort_by(|(a_id, a), (b_id, b)| {
        b.partial_cmp(a)
            .unwrap_or(Ordering::Equal)
            .then_with(|| b_id.cmp(a_id))
    });
    run.into_iter().map(|(id, _)| id).collect()
}

/// nDCG at `k` with linear gains and a log2 discount.
pub fn ndcg_at(ranked: &[String], judged: &Judgements, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| judged.get(id).copied().unwrap_or(0) as f64 / discount(i))
        .sum();
    let mut ideal: Vec<i64> = judged.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / discount(i))
        .sum();
    if idcg > 0.0 { dcg / idcg } else { 0.0 }
}

/// log2(rank + 1) for the 0-based position `i` (rank i + 1).
fn discount(i: usize) -> f64 {
    (i as f64 + 2.0).log2()
}

/// Share of the relevant (grade > 0) documents found in the top `k`.
pub fn recall_at(ranked: &[String], judged: &Judgements, k: usize) -> f64 {
    let relevant: HashSet<&str> = judged
        .iter()
        .filter(|(_, g)| **g > 0)
        .map(|(id, _)| id.as_str())
        .collect();
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|id| relevant.contains(id.as_str()))
        .count();
    found as f64 / relevant.len() as f64
}

/// Reciprocal rank of the first relevant document in the top `k`.
pub fn mrr_at(ranked: &[String], judged: &Judgements, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|id| judged.get(id).is_some_and(|&g| g > 0))
        .map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// The `p`th percentile (0..=100) with linear interpolation between closest ranks (numpy's
/// default, as irbench); `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    let x = (v.len() - 1) as f64 * p / 100.0;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (x - lo as f64))
}

pub fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i64)]) -> Judgements {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn ndcg_uses_linear_graded_gains_and_a_log2_discount() {
        // Grades 2 at rank 2 and 1 at rank 3; the ideal puts the 2 first, then the 1.
        let q = judged(&[("a", 2), ("b", 1), ("c", 0)]);
        let ranked = ids(&["c", "a", "b"]);
        let dcg = 0.0 / 2f64.log2() + 2.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let idcg = 2.0 / 2f64.log2() + 1.0 / 3f64.log2();
        close(ndcg_at(&ranked, &q, 10), dcg / idcg);
        // Exponential gains (2^g - 1) would give a different number; make sure we are not that.
        let exp_dcg = 3.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let exp_idcg = 3.0 / 2f64.log2() + 1.0 / 3f64.log2();
        assert!((ndcg_at(&ranked, &q, 10) - exp_dcg / exp_idcg).abs() > 1e-3);
        // The ideal ranking scores 1.
        close(ndcg_at(&ids(&["a", "b"]), &q, 10), 1.0);
    }

    #[test]
    fn the_cut_applies_to_the_run_and_to_the_ideal() {
        // Three relevant documents, k = 2: the ideal is the two best grades only.
        let q = judged(&[("a", 1), ("b", 2), ("c", 2)]);
        let ranked = ids(&["x", "a", "b", "c"]);
        let dcg = 0.0 + 1.0 / 3f64.log2();
        let idcg = 2.0 / 2f64.log2() + 2.0 / 3f64.log2();
        close(ndcg_at(&ranked, &q, 2), dcg / idcg);
        close(recall_at(&ranked, &q, 2), 1.0 / 3.0);
        close(recall_at(&ranked, &q, 4), 1.0);
        close(mrr_at(&ranked, &q, 2), 0.5);
        close(mrr_at(&ranked, &q, 1), 0.0);
    }

    #[test]
    fn unjudged_documents_score_zero_and_missing_relevant_ones_still_count() {
        // "gone" is judged relevant but was never retrieved (say, not in the corpus): it stays
        // in the ideal and in recall's denominator.
        let q = judged(&[("a", 1), ("gone", 1)]);
        let ranked = ids(&["u1", "a", "u2"]);
        let dcg = 1.0 / 3f64.log2();
        let idcg = 1.0 / 2f64.log2() + 1.0 / 3f64.log2();
        close(ndcg_at(&ranked, &q, 10), dcg / idcg);
        close(recall_at(&ranked, &q, 10), 0.5);
        close(mrr_at(&ranked, &q, 10), 0.5);
    }

    #[test]
    fn a_query_without_relevant_documents_scores_zero() {
        let q = judged(&[("a", 0), ("b", 0)]);
        let ranked = ids(&["a", "b"]);
        assert_eq!(ndcg_at(&ranked, &q, 10), 0.0);
        assert_eq!(recall_at(&ranked, &q, 10), 0.0);
        assert_eq!(mrr_at(&ranked, &q, 10), 0.0);
        // ...and counts in the mean like any other query.
        close(mean([1.0, ndcg_at(&ranked, &q, 10)]), 0.5);
        assert_eq!(mean([]), 0.0);
    }

    #[test]
    fn fewer_results_than_k_are_not_padded() {
        let q = judged(&[("a", 2), ("b", 1), ("c", 1)]);
        let ranked = ids(&["b"]);
        let idcg = 2.0 / 2f64.log2() + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        close(ndcg_at(&ranked, &q, 10), 1.0 / idcg);
        close(recall_at(&ranked, &q, 10), 1.0 / 3.0);
        close(mrr_at(&ranked, &q, 10), 1.0);
        assert_eq!(ndcg_at(&[], &q, 10), 0.0);
    }

    #[test]
    fn hits_are_deduplicated_keeping_the_best_chunk_then_ranked_like_trec_eval() {
        // Several chunks of "a": its first (best) score stands, so it is one document at rank 1.
        let hits = [("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6), ("b", 0.1)]
            .map(|(id, s)| (id.to_string(), s));
        assert_eq!(rank(hits), ids(&["a", "b", "c"]));

        // Ties are broken by id descending, whatever the server's order.
        let tied =
            [("m", 0.5), ("z", 0.5), ("a", 0.5), ("top", 0.9)].map(|(id, s)| (id.to_string(), s));
        assert_eq!(rank(tied), ids(&["top", "z", "m", "a"]));

        // Without dedup "a" would take two ranks and push the relevant "c" out of the top 2.
        let q = judged(&[("c", 1)]);
        let ranked = rank([("a", 0.9), ("a", 0.8), ("c", 0.7)].map(|(id, s)| (id.to_string(), s)));
        close(mrr_at(&ranked, &q, 2), 0.5);
        close(recall_at(&ranked, &q, 2), 1.0);
    }

    #[test]
    fn percentiles_interpolate_linearly() {
        let v = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&v, 50.0), Some(25.0));
        close(percentile(&v, 95.0).unwrap(), 30.0 + 10.0 * 0.85);
        close(percentile(&v, 99.0).unwrap(), 30.0 + 10.0 * 0.97);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[40.0, 10.0], 0.0), Some(10.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
