//! BM25 sparse vectors for the keyword retriever, computed in-process with Qdrant's own BM25
//! tokenizer (English stemming and stop words) so documents and queries are treated alike.
//! Term weights carry term frequency and length normalisation; IDF is applied by the index at
//! query time (the sparse vector is configured with the IDF modifier).

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::NotNan;

use crate::config::QuerySettings;
use crate::storage::vector::SparseVec;

pub struct Bm25Encoder {
    inner: EdgeBm25,
}

impl Bm25Encoder {
    pub fn new(settings: &QuerySettings) -> Result<Self, String> {
        let nn = |v: f64, name: &str| {
            NotNan::new(v).map_err(|_| format!("query.{name} is not a number"))
        };
        let config = EdgeBm25Config {
            k: nn(settings.bm25_k1, "bm25_k1")?,
            b: nn(settings.bm25_b, "bm25_b")?,
            avg_len: nn(settings.bm25_avg_len, "bm25_avg_len")?,
            language: Some("english".to_string()),
            ..Default::default()
        };
        Ok(Self {
            inner: EdgeBm25::new(config).map_err(|e| e.to_string())?,
        })
    }

    pub fn document(&self, text: &str) -> SparseVec {
        let v = self.inner.embed_document(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }

    pub fn query(&self, text: &str) -> SparseVec {
        let v = self.inner.embed_query(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn stems_and_drops_stop_words() {
        let s = Settings::defaults_with(&[]).unwrap();
        let bm25 = Bm25Encoder::new(&s.query).unwrap();
        let a = bm25.query("checking the memory");
        let b = bm25.query("check memory");
        assert_eq!(a.indices.len(), 2, "'the' is a stop word");
        let mut ai = a.indices.clone();
        let mut bi = b.indices.clone();
        ai.sort();
        bi.sort();
        assert_eq!(ai, bi, "checking and check share a stem");
        assert!(bm25.query("the of and").indices.is_empty());
        let d = bm25.document("redis redis memory");
        assert_eq!(d.indices.len(), 2);
    }
}
