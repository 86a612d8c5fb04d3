//! Any text through the chunker with the model's tokenizer: chunks are contiguous from 0, lie
//! inside the text at their offsets, and stay within the token budget.
#![no_main]

use std::sync::OnceLock;

#[path = "../../../src/ingest/chunk.rs"]
#[allow(dead_code)]
mod chunk;

const MAX_TOKENS: usize = 64;

fn chunker() -> &'static chunk::Chunker {
    static CHUNKER: OnceLock<chunk::Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        let dir = std::env::var("DOCRAG_MODELS_DIR").unwrap_or_else(|_| "../../models".into());
        let mut tokenizer = tokenizers::Tokenizer::from_file(format!("{dir}/tokenizer.json"))
            .expect("models/tokenizer.json (make models)");
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).expect("no truncation");
        chunk::Chunker::new(tokenizer, MAX_TOKENS, 8).expect("chunker")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let markdown = data.first().is_some_and(|b| b % 2 == 0);
    let chunks = chunker().chunk(text, markdown);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        assert_eq!(&text[c.start..c.start + c.text.len()], c.text);
        assert!(c.token_count as usize <= MAX_TOKENS, "{} tokens", c.token_count);
    }
});
