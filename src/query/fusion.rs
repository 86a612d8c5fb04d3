//! Fusion of the dense and keyword rankings, computed here rather than in the index, so that it
//! is deterministic: hits with equal scores are ordered by chunk id, in each ranking and in the
//! fused one. (The engines break ties by where a point sits in their segments, and the in-index
//! fusion by hash-map order, so the same data indexed in another order — a restored backup, a
//! replica — or a restart could rank tied hits differently.)
//!
//! - `rrf`, reciprocal rank fusion with Qdrant's weighted formula, `1 / ((rank + 1) / weight +
//!   k - 1)`, so it scores as the engines' own fusion did. It sees only ranks: a keyword list
//!   whose top hit barely matched counts as much as a dense list that is sure. On dbpedia-5k
//!   that made hybrid worse than dense alone. The score-aware methods keep how far apart the
//!   candidates are:
//! - `dbsf`, distribution-based score fusion (as Qdrant defines it): each list's scores are
//!   scaled to [0, 1] between mean ± 3 standard deviations, then summed (weighted).
//! - `convex`, a normalised convex combination: each list min-max scaled to [0, 1], then
//!   `dense_weight · dense + keyword_weight · keyword`.
//!
//! A candidate missing from one list scores 0 there. Both lists come from the index with
//! `prefetch_limit` candidates each, under the same filter.

use std::collections::HashMap;

use serde::Deserialize;
use uuid::Uuid;

use crate::storage::vector::VectorHit;

/// How hybrid search combines its two rankings (`query.fusion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Reciprocal rank fusion.
    Rrf,
    /// Distribution-based score fusion.
    Dbsf,
    /// Min-max normalised convex combination.
    Convex,
}

/// Scales scores into [0, 1] according to `method`; an empty or flat list scales to 1.
fn normalise(scores: &[f32], method: FusionMethod) -> Vec<f32> {
    if scores.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = match method {
        FusionMethod::Dbsf => {
            let n = scores.len() as f32;
            let mean = scores.iter().sum::<f32>() / n;
            let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n;
            let sd = var.sqrt();
            (mean - 3.0 * sd, mean + 3.0 * sd)
        }
        FusionMethod::Convex | FusionMethod::Rrf => {
            let lo = scores.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (lo, hi)
        }
    };
    let span = hi - lo;
    scores
        .iter()
        .map(|s| {
            if span <= f32::EPSILON {
                1.0
            } else {
                ((s - lo) / span).clamp(0.0, 1.0)
            }
        })
        .collect()
}

/// Best first; equal scores by chunk id, so a ranking does not depend on where the engine keeps
/// the points.
pub fn order(hits: &mut [VectorHit]) {
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.chunk_id.cmp(&b.chunk_id))
    });
}

/// Reciprocal rank fusion's score of the hit at `rank` (0-based) of a ranking of `weight`, as
/// Qdrant computes it (a weight of 0 contributes nothing).
fn rrf_score(rank: usize, k: usize, weight: f32) -> f32 {
    if weight <= 0.0 {
        return 0.0;
    }
    1.0 / ((rank + 1) as f32 / weight + k as f32 - 1.0)
}

/// The fused score of a hit ranked first by both retrievers: the most any hit can score, which
/// makes a fused score comparable across methods and weights (`score / best_score`).
pub fn best_score(method: FusionMethod, weights: [f32; 2], rrf_k: usize) -> f32 {
    match method {
        FusionMethod::Rrf => rrf_score(0, rrf_k, weights[0]) + rrf_score(0, rrf_k, weights[1]),
        FusionMethod::Convex | FusionMethod::Dbsf => weights[0].max(0.0) + weights[1].max(0.0),
    }
}

/// Fuses two rankings into at most `limit` hits, best first; equal scores by chunk id, in each
/// ranking and in the result, so results are deterministic.
pub fn fuse(
    mut dense: Vec<VectorHit>,
    mut keyword: Vec<VectorHit>,
    method: FusionMethod,
    weights: [f32; 2],
    rrf_k: usize,
    limit: usize,
) -> Vec<VectorHit> {
    order(&mut dense);
    order(&mut keyword);
    let mut fused: Vec<(f32, VectorHit)> = Vec::with_capacity(dense.len() + keyword.len());
    let mut at: HashMap<Uuid, usize> = HashMap::new();
    for (list, weight) in [(dense, weights[0]), (keyword, weights[1])] {
        let scores: Vec<f32> = match method {
            FusionMethod::Rrf => (0..list.len())
                .map(|rank| rrf_score(rank, rrf_k, weight))
                .collect(),
            _ => normalise(&list.iter().map(|h| h.score).collect::<Vec<_>>(), method)
                .into_iter()
                .map(|s| weight * s)
                .collect(),
        };
        for (hit, score) in list.into_iter().zip(scores) {
            match at.get(&hit.chunk_id) {
                Some(&i) => fused[i].0 += score,
                None => {
                    at.insert(hit.chunk_id, fused.len());
                    fused.push((score, hit));
                }
            }
        }
    }
    fused.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.chunk_id.cmp(&b.1.chunk_id)));
    fused
        .into_iter()
        .take(limit)
        .map(|(score, mut hit)| {
            hit.score = score;
            hit
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vector::ChunkPayload;

    fn hit(n: u128, score: f32) -> VectorHit {
        VectorHit {
            chunk_id: Uuid::from_u128(n),
            score,
            payload: ChunkPayload {
                document_id: Uuid::from_u128(n),
                collection: "c".into(),
                chunk_index: 0,
                version: 1,
                title: String::new(),
                metadata: Default::default(),
            },
        }
    }

    fn ids(hits: &[VectorHit]) -> Vec<u128> {
        hits.iter().map(|h| h.chunk_id.as_u128()).collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn rrf_sums_reciprocal_ranks_as_qdrant_does() {
        // dense: 1, 2, 3; keyword: 3, 4. k = 60: rank r (0-based) scores 1 / (r + 60).
        let out = fuse(
            vec![hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)],
            vec![hit(3, 12.0), hit(4, 3.0)],
            FusionMethod::Rrf,
            [1.0, 1.0],
            60,
            10,
        );
        assert_eq!(ids(&out), vec![3, 1, 2, 4]);
        assert!(close(out[0].score, 1.0 / 62.0 + 1.0 / 60.0));
        assert!(close(out[1].score, 1.0 / 60.0));
        assert!(close(out[3].score, 1.0 / 61.0));
        // Weighted: rank r of a ranking of weight w scores 1 / ((r + 1) / w + k - 1).
        let out = fuse(
            vec![hit(1, 0.9)],
            vec![hit(2, 5.0)],
            FusionMethod::Rrf,
            [2.0, 0.5],
            60,
            10,
        );
        assert!(close(out[0].score, 1.0 / (0.5 + 59.0)) && close(out[1].score, 1.0 / 61.0));
    }

    #[test]
    fn ties_are_ordered_by_chunk_id_whatever_order_the_engine_returned() {
        // The keyword ranking ties 7 and 5; the engine may list them either way.
        let a = fuse(
            vec![hit(1, 0.9)],
            vec![hit(7, 3.0), hit(5, 3.0), hit(1, 1.0)],
            FusionMethod::Rrf,
            [1.0, 1.0],
            60,
            10,
        );
        let b = fuse(
            vec![hit(1, 0.9)],
            vec![hit(5, 3.0), hit(7, 3.0), hit(1, 1.0)],
            FusionMethod::Rrf,
            [1.0, 1.0],
            60,
            10,
        );
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(ids(&a), vec![1, 5, 7]);
        let mut single = vec![hit(9, 0.5), hit(3, 0.5), hit(4, 0.7)];
        order(&mut single);
        assert_eq!(ids(&single), vec![4, 3, 9]);
    }

    #[test]
    fn convex_min_max_scales_each_list_and_weighs_them() {
        // dense 0.9, 0.7, 0.5 -> 1, 0.5, 0; keyword 10, 6 -> 1, 0.
        let out = fuse(
            vec![hit(1, 0.9), hit(2, 0.7), hit(3, 0.5)],
            vec![hit(3, 10.0), hit(2, 6.0)],
            FusionMethod::Convex,
            [0.7, 0.3],
            60,
            2,
        );
        // 1: 0.7; 2: 0.35 + 0; 3: 0 + 0.3.
        assert_eq!(ids(&out), vec![1, 2]);
        assert!(close(out[0].score, 0.7));
        assert!(close(out[1].score, 0.35));
    }

    #[test]
    fn dbsf_scales_between_three_standard_deviations() {
        // Scores 1, 2, 3: mean 2, sd sqrt(2/3); bounds 2 ± 3·0.8165.
        let sd = (2.0f32 / 3.0).sqrt();
        let (lo, hi) = (2.0 - 3.0 * sd, 2.0 + 3.0 * sd);
        let expect = |s: f32| (s - lo) / (hi - lo);
        let n = normalise(&[3.0, 2.0, 1.0], FusionMethod::Dbsf);
        assert!(close(n[0], expect(3.0)) && close(n[1], 0.5) && close(n[2], expect(1.0)));
        // A confident keyword list (one far outlier) lifts its top hit over a flat dense list.
        let out = fuse(
            vec![hit(1, 0.50), hit(2, 0.49), hit(3, 0.48)],
            vec![hit(3, 30.0), hit(4, 2.0), hit(5, 1.9), hit(6, 1.8)],
            FusionMethod::Dbsf,
            [1.0, 1.0],
            60,
            3,
        );
        assert_eq!(out[0].chunk_id.as_u128(), 3, "{:?}", ids(&out));
    }

    #[test]
    fn flat_and_empty_lists_do_not_divide_by_zero() {
        assert_eq!(normalise(&[2.0, 2.0], FusionMethod::Convex), vec![1.0, 1.0]);
        assert!(normalise(&[], FusionMethod::Dbsf).is_empty());
        let out = fuse(
            vec![hit(1, 0.5)],
            Vec::new(),
            FusionMethod::Dbsf,
            [1.0, 1.0],
            60,
            5,
        );
        assert_eq!(ids(&out), vec![1]);
        assert!(out[0].score.is_finite());
    }
}
