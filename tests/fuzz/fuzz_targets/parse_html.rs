//! Any bytes given to the HTML parser: text or an error, never a panic.
#![no_main]

#[path = "../../../src/ingest/parse.rs"]
#[allow(dead_code)]
mod parse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if parse::precheck(parse::ContentKind::Html, data).is_ok() {
        let _ = parse::parse(parse::ContentKind::Html, data);
    }
});
