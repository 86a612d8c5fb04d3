//! Any bytes given to the Markdown parser: text (with a title when it has one) or an error.
#![no_main]

#[path = "../../../src/ingest/parse.rs"]
#[allow(dead_code)]
mod parse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = parse::parse(parse::ContentKind::Markdown, data) {
        assert!(!doc.text.trim().is_empty());
    }
});
