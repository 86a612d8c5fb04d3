//! Any bytes given to the PDF parser: it returns text or an error, never panics or hangs.
//! (In the service the parser also runs in a limited child process; this finds the bugs.)
#![no_main]

#[path = "../../../src/ingest/parse.rs"]
#[allow(dead_code)]
mod parse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut pdf = b"%PDF-1.4\n".to_vec();
    pdf.extend_from_slice(data);
    let _ = parse::parse(parse::ContentKind::Pdf, &pdf);
});
