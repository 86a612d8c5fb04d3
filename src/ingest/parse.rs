//! Document parsing: turns the raw bytes of an uploaded file into plain (or Markdown-like)
//! text for chunking, plus a title found in the content.
//!
//! Owns the mapping from MIME types / file extensions to [`ContentKind`], the cheap upload-time
//! [`precheck`], and the per-format extractors (UTF-8 text, Markdown, HTML via `html2text`, PDF
//! via `pdf-extract`).

use std::panic::{self, AssertUnwindSafe};

use html2text::render::TextDecorator;

/// The document formats the service can ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContentKind {
    Text,
    Markdown,
    Html,
    Pdf,
}

impl ContentKind {
    /// From a MIME type such as `text/plain; charset=utf-8`. Case-insensitive; parameters are
    /// ignored. `None` if the type is not supported.
    pub fn from_mime(mime: &str) -> Option<Self> {
        let essence = mime.split(';').next().unwrap_or_default().trim();
        let essence = essence.to_ascii_lowercase();
        match essence.as_str() {
            "text/plain" => Some(Self::Text),
            "text/markdown" | "text/x-markdown" => Some(Self::Markdown),
            "text/html" | "application/xhtml+xml" => Some(Self::Html),
            // `application/x-pdf` is a legacy alias some clients still send.
            "application/pdf" | "application/x-pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    /// From a file name's extension (case-insensitive): txt/text/log → Text, md/markdown →
    /// Markdown, html/htm → Html, pdf → Pdf.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let ext = std::path::Path::new(name).extension()?.to_str()?;
        match ext.to_ascii_lowercase().as_str() {
            "txt" | "text" | "log" => Some(Self::Text),
            "md" | "markdown" => Some(Self::Markdown),
            "html" | "htm" => Some(Self::Html),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    /// The canonical MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Text => "text/plain",
            Self::Markdown => "text/markdown",
            Self::Html => "text/html",
            Self::Pdf => "application/pdf",
        }
    }

    /// Whether the extracted text should be split as Markdown. HTML counts because it is
    /// rendered to Markdown-like text (`# ` headings, `* ` list items).
    pub fn is_markdown(self) -> bool {
        matches!(self, Self::Markdown | Self::Html)
    }
}

/// The text extracted from a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDocument {
    pub text: String,
    /// Whether `text` should be split as Markdown.
    pub markdown: bool,
    /// A title found in the content (first Markdown `# ` heading, HTML `<title>` or first
    /// `<h1>`, PDF `Title` info entry).
    pub title: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document is not valid UTF-8 text")]
    NotUtf8,
    #[error("malformed document: {0}")]
    Malformed(String),
    #[error("document contains no extractable text")]
    Empty,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// html2text wraps at this many columns; it is wide enough that prose is never hard-wrapped
/// (wrapping would put spurious newlines into chunks and offsets).
const HTML_RENDER_WIDTH: usize = 10_000;

/// Extracts the text of a document.
pub fn parse(kind: ContentKind, bytes: &[u8]) -> Result<ParsedDocument, ParseError> {
    let doc = match kind {
        ContentKind::Text => ParsedDocument {
            text: normalise_newlines(decode_utf8(bytes)?),
            markdown: false,
            title: None,
        },
        ContentKind::Markdown => {
            let text = normalise_newlines(decode_utf8(bytes)?);
            let title = markdown_title(&text);
            ParsedDocument {
                text,
                markdown: true,
                title,
            }
        }
        ContentKind::Html => parse_html(decode_utf8(bytes)?)?,
        ContentKind::Pdf => parse_pdf(bytes)?,
    };
    if doc.text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(doc)
}

/// Cheap check done at upload time, before the document is stored, so obviously bad uploads are
/// rejected synchronously rather than failing later in the ingest worker. Returns the same
/// errors as [`parse`].
pub fn precheck(kind: ContentKind, bytes: &[u8]) -> Result<(), ParseError> {
    match kind {
        ContentKind::Pdf => {
            let rest = skip_leading_bom_and_whitespace(bytes);
            if rest.is_empty() {
                Err(ParseError::Empty)
            } else if rest.starts_with(b"%PDF-") {
                Ok(())
            } else {
                Err(ParseError::Malformed("missing %PDF- header".to_owned()))
            }
        }
        ContentKind::Text | ContentKind::Markdown | ContentKind::Html => {
            if decode_utf8(bytes)?.trim().is_empty() {
                Err(ParseError::Empty)
            } else {
                Ok(())
            }
        }
    }
}

fn skip_leading_bom_and_whitespace(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0)
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn decode_utf8(bytes: &[u8]) -> Result<&str, ParseError> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)
}

fn normalise_newlines(text: &str) -> String {
    // Lone `\r` (classic Mac) is rare but would otherwise glue lines together for the splitter.
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The first level-1 ATX heading (`# Title`) outside fenced code blocks, where a `#` line is a
/// shell comment rather than a heading.
fn markdown_title(text: &str) -> Option<String> {
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > 3 {
            continue; // indented code block
        }
        let trimmed = &line[indent..];
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if trimmed.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        let heading = if trimmed == "#" {
            ""
        } else if let Some(rest) = trimmed.strip_prefix("# ") {
            rest
        } else if let Some(rest) = trimmed.strip_prefix("#\t") {
            rest
        } else {
            continue;
        };
        if let Some(title) = clean_title(strip_closing_hashes(heading)) {
            return Some(title);
        }
    }
    None
}

/// Removes an optional ATX closing sequence (`# Title ##`).
fn strip_closing_hashes(heading: &str) -> &str {
    let trimmed = heading.trim_end();
    let without = trimmed.trim_end_matches('#');
    if without.is_empty() {
        ""
    } else if without.ends_with([' ', '\t']) {
        without
    } else {
        // `# C#` — the hashes are part of the text.
        trimmed
    }
}

/// Collapses internal whitespace; `None` if nothing is left.
fn clean_title(raw: &str) -> Option<String> {
    let title = raw
        .trim_matches('\u{feff}')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then_some(title)
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

/// Renders Markdown-like structure (headings, list items, quotes) but emits link and emphasis
/// text bare: the text is for embedding, and html2text's link footnotes (`[text][1]` plus a URL
/// list at the end) would only add noise tokens.
#[derive(Debug, Clone, Copy, Default)]
struct MarkdownishDecorator;

impl TextDecorator for MarkdownishDecorator {
    type Annotation = ();

    fn decorate_link_start(&mut self, _url: &str) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_link_end(&mut self) -> String {
        String::new()
    }
    fn decorate_em_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_em_end(&self) -> String {
        String::new()
    }
    fn decorate_strong_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strong_end(&self) -> String {
        String::new()
    }
    fn decorate_strikeout_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strikeout_end(&self) -> String {
        String::new()
    }
    fn decorate_code_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_code_end(&self) -> String {
        String::new()
    }
    fn decorate_preformat_first(&self) {}
    fn decorate_preformat_cont(&self) {}
    fn decorate_image(&mut self, _src: &str, title: &str) -> (String, ()) {
        // html2text passes the alt text as `title`; it is the only textual content of an image.
        (title.to_owned(), ())
    }
    fn header_prefix(&self, level: usize) -> String {
        format!("{} ", "#".repeat(level))
    }
    fn quote_prefix(&self) -> String {
        "> ".to_owned()
    }
    fn unordered_item_prefix(&self) -> String {
        "* ".to_owned()
    }
    fn ordered_item_prefix(&self, i: i64) -> String {
        format!("{i}. ")
    }
    fn make_subblock_decorator(&self) -> Self {
        *self
    }
    fn finalise(&mut self, _urls: Vec<String>) -> Vec<html2text::render::TaggedLine<()>> {
        Vec::new()
    }
}

fn parse_html(html: &str) -> Result<ParsedDocument, ParseError> {
    let malformed = |e: html2text::Error| ParseError::Malformed(format!("HTML: {e}"));
    // Table borders are box-drawing characters: pure token noise for retrieval.
    let config = html2text::config::with_decorator(MarkdownishDecorator).no_table_borders();
    // One DOM serves both the title lookup and the rendering. html2text itself skips
    // <head>, <script> and <style>.
    let dom = config.parse_html(html.as_bytes()).map_err(malformed)?;
    let head_title = find_element(&dom.document, "title").and_then(|node| element_text(&node));
    let tree = config.dom_to_render_tree(&dom).map_err(malformed)?;
    let rendered = config
        .render_to_string(tree, HTML_RENDER_WIDTH)
        .map_err(malformed)?;
    let text = tidy_rendered_html(&rendered);
    // html2text renders <h1> as a `# ` line, so the first one doubles as the fallback title.
    let title = head_title.or_else(|| markdown_title(&text));
    Ok(ParsedDocument {
        text,
        markdown: true,
        title,
    })
}

/// The first element named `name` in document order, not looking inside SVG/MathML (whose
/// `<title>` elements label graphics, not the page). Iterative because the DOM depth is
/// controlled by the uploader and a stack overflow would abort the whole process.
fn find_element(root: &html2text::Handle, name: &str) -> Option<html2text::Handle> {
    let mut stack = vec![root.clone()];
    while let Some(node) = stack.pop() {
        match node.element_name().as_deref() {
            Some(found) if found == name => return Some(node),
            Some("svg" | "math") => continue,
            _ => {}
        }
        stack.extend(node.children.borrow().iter().rev().cloned());
    }
    None
}

/// The text content of an element. html2text does not expose text nodes publicly, so the
/// children are serialised back to HTML and the few escapes the serialiser emits are undone.
fn element_text(node: &html2text::Handle) -> Option<String> {
    let mut html = Vec::new();
    for child in node.children.borrow().iter() {
        child.serialize(&mut html).ok()?;
    }
    let html = String::from_utf8(html).ok()?;
    let text = html
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    clean_title(&text)
}

/// Trims trailing spaces (html2text pads some blocks) and collapses runs of blank lines.
fn tidy_rendered_html(rendered: &str) -> String {
    let mut out = String::with_capacity(rendered.len());
    let mut blank_run = 0usize;
    for line in rendered.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// PDF
// ---------------------------------------------------------------------------------------------

fn parse_pdf(bytes: &[u8]) -> Result<ParsedDocument, ParseError> {
    precheck(ContentKind::Pdf, bytes)?;
    // pdf-extract (and lopdf under it) panics on some malformed inputs instead of returning an
    // error; a bad upload must fail that document, not take down the worker thread. Nothing
    // shared is mutated inside, so observing state after a panic is not a concern.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| extract_pdf(bytes)));
    let (raw, title) = match outcome {
        Ok(Ok(extracted)) => extracted,
        Ok(Err(e)) => return Err(ParseError::Malformed(format!("PDF: {e}"))),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown error".to_owned());
            return Err(ParseError::Malformed(format!(
                "PDF parser panicked: {detail}"
            )));
        }
    };
    Ok(ParsedDocument {
        text: normalise_pdf_text(&raw),
        markdown: false,
        title,
    })
}

/// Equivalent of `pdf_extract::extract_text_from_mem`, but keeps the loaded document so the
/// title can be read from it without parsing the file twice.
fn extract_pdf(bytes: &[u8]) -> Result<(String, Option<String>), pdf_extract::OutputError> {
    let mut doc =
        pdf_extract::Document::load_mem(bytes).map_err(pdf_extract::OutputError::PdfError)?;
    if doc.is_encrypted() {
        // Many "encrypted" PDFs only restrict permissions and open with the empty user
        // password; this mirrors what extract_text_from_mem does.
        doc.decrypt("")
            .map_err(pdf_extract::OutputError::PdfError)?;
    }
    let title = pdf_title(&doc);
    let mut text = String::new();
    {
        let mut output = pdf_extract::PlainTextOutput::new(&mut text);
        pdf_extract::output_doc(&doc, &mut output)?;
    }
    Ok((text, title))
}

fn pdf_title(doc: &pdf_extract::Document) -> Option<String> {
    let info = doc.trailer.get_deref(b"Info", doc).ok()?.as_dict().ok()?;
    let title = info.get_deref(b"Title", doc).ok()?;
    let title = pdf_extract::decode_text_string(title).ok()?;
    clean_title(&title)
}

/// pdf-extract positions text with runs of spaces and emits many blank lines; collapse
/// horizontal whitespace within lines and keep at most one blank line as a paragraph break.
fn normalise_pdf_text(raw: &str) -> String {
    let unified = raw
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        // Form feeds separate pages: treat them as paragraph breaks.
        .replace('\u{c}', "\n\n");
    let mut out = String::with_capacity(unified.len());
    let mut blank_run = 0usize;
    for line in unified.split('\n') {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || (c.is_control() && c != '\n'))
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(&words.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_mapping_ignores_case_and_parameters() {
        assert_eq!(
            ContentKind::from_mime("text/plain; charset=utf-8"),
            Some(ContentKind::Text)
        );
        assert_eq!(
            ContentKind::from_mime("Text/Markdown"),
            Some(ContentKind::Markdown)
        );
        assert_eq!(
            ContentKind::from_mime("text/x-markdown"),
            Some(ContentKind::Markdown)
        );
        assert_eq!(
            ContentKind::from_mime(" TEXT/HTML ;charset=ISO-8859-1"),
            Some(ContentKind::Html)
        );
        assert_eq!(
            ContentKind::from_mime("application/xhtml+xml"),
            Some(ContentKind::Html)
        );
        assert_eq!(
            ContentKind::from_mime("application/PDF"),
            Some(ContentKind::Pdf)
        );
        assert_eq!(ContentKind::from_mime("image/png"), None);
        assert_eq!(ContentKind::from_mime(""), None);
        assert_eq!(ContentKind::from_mime("text/plainx"), None);
    }

    #[test]
    fn extension_mapping() {
        assert_eq!(
            ContentKind::from_file_name("notes.TXT"),
            Some(ContentKind::Text)
        );
        assert_eq!(
            ContentKind::from_file_name("server.log"),
            Some(ContentKind::Text)
        );
        assert_eq!(
            ContentKind::from_file_name("a.b/readme.markdown"),
            Some(ContentKind::Markdown)
        );
        assert_eq!(
            ContentKind::from_file_name("runbook.md"),
            Some(ContentKind::Markdown)
        );
        assert_eq!(
            ContentKind::from_file_name("index.htm"),
            Some(ContentKind::Html)
        );
        assert_eq!(
            ContentKind::from_file_name("Report.Pdf"),
            Some(ContentKind::Pdf)
        );
        assert_eq!(ContentKind::from_file_name("archive.tar.gz"), None);
        assert_eq!(ContentKind::from_file_name("Makefile"), None);
        assert_eq!(ContentKind::from_file_name(".md"), None);
    }

    #[test]
    fn canonical_mime_round_trips() {
        for kind in [
            ContentKind::Text,
            ContentKind::Markdown,
            ContentKind::Html,
            ContentKind::Pdf,
        ] {
            assert_eq!(ContentKind::from_mime(kind.mime()), Some(kind));
        }
        assert!(ContentKind::Markdown.is_markdown());
        assert!(ContentKind::Html.is_markdown());
        assert!(!ContentKind::Text.is_markdown());
        assert!(!ContentKind::Pdf.is_markdown());
    }

    #[test]
    fn text_strips_bom_and_normalises_crlf() {
        let doc = parse(ContentKind::Text, b"\xEF\xBB\xBFline one\r\nline two\r\n").unwrap();
        assert_eq!(doc.text, "line one\nline two\n");
        assert!(!doc.markdown);
        assert_eq!(doc.title, None);
    }

    #[test]
    fn text_rejects_invalid_utf8_and_blank() {
        assert!(matches!(
            parse(ContentKind::Text, b"caf\xE9"),
            Err(ParseError::NotUtf8)
        ));
        assert!(matches!(
            precheck(ContentKind::Markdown, b"ok \xFF"),
            Err(ParseError::NotUtf8)
        ));
        assert!(matches!(
            parse(ContentKind::Text, b" \r\n\t "),
            Err(ParseError::Empty)
        ));
        assert!(matches!(
            precheck(ContentKind::Text, b"\xEF\xBB\xBF  \n"),
            Err(ParseError::Empty)
        ));
        assert!(matches!(
            precheck(ContentKind::Html, b""),
            Err(ParseError::Empty)
        ));
        precheck(ContentKind::Text, b"\xEF\xBB\xBFhello").unwrap();
    }

    #[test]
    fn markdown_kept_verbatim_with_title() {
        let src = "```sh\n# not a title\n```\n\n## Sub\n\n# Real Title #\n\nBody *text*.\n";
        let doc = parse(ContentKind::Markdown, src.as_bytes()).unwrap();
        assert_eq!(doc.text, src);
        assert!(doc.markdown);
        assert_eq!(doc.title.as_deref(), Some("Real Title"));

        let doc = parse(ContentKind::Markdown, b"# C#\n").unwrap();
        assert_eq!(doc.title.as_deref(), Some("C#"));
        let doc = parse(ContentKind::Markdown, b"no heading here\n").unwrap();
        assert_eq!(doc.title, None);
    }

    #[test]
    fn html_keeps_headings_and_drops_script_style() {
        let html = r#"<!DOCTYPE html>
<html><head>
  <title>  Ops &amp; Runbook  </title>
  <style>body { color: red; }</style>
  <script>var secret = "tracking";</script>
</head><body>
  <h1>Main Heading</h1>
  <p>First paragraph with a <a href="https://example.com/x">useful link</a> inside.</p>
  <script>alert("boom")</script>
  <h2>Second Section</h2>
  <ul><li>alpha</li><li>beta</li></ul>
  <p>A long paragraph that must not be hard-wrapped even though it goes on and on and on
  for well over eighty characters, which is the default width in html2text.</p>
</body></html>"#;
        let doc = parse(ContentKind::Html, html.as_bytes()).unwrap();
        assert!(doc.markdown);
        assert_eq!(doc.title.as_deref(), Some("Ops & Runbook"));
        let text = &doc.text;
        assert!(text.contains("# Main Heading"), "{text}");
        assert!(text.contains("## Second Section"), "{text}");
        assert!(text.contains("useful link"), "{text}");
        assert!(text.contains("* alpha"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("boom"), "{text}");
        assert!(!text.contains("color"), "{text}");
        assert!(
            !text.contains("example.com"),
            "link footnote leaked: {text}"
        );
        assert!(!text.contains("[1]"), "link footnote leaked: {text}");
        assert!(
            text.lines()
                .any(|l| l.contains("goes on and on") && l.contains("default width")),
            "paragraph was wrapped: {text}"
        );
    }

    #[test]
    fn html_title_falls_back_to_first_h1() {
        let doc = parse(
            ContentKind::Html,
            b"<html><body><svg><title>icon</title></svg><p>intro</p>\
              <h1>The <em>Real</em> Title</h1><h1>Other</h1></body></html>",
        )
        .unwrap();
        assert_eq!(doc.title.as_deref(), Some("The Real Title"));
    }

    #[test]
    fn deeply_nested_html_does_not_overflow() {
        let depth = 50_000;
        let html = format!(
            "{}deep text{}",
            "<span>".repeat(depth),
            "</span>".repeat(depth)
        );
        // A recursive DOM walk overflows the test thread's stack at this depth.
        let doc = parse(ContentKind::Html, html.as_bytes()).unwrap();
        assert_eq!(doc.text, "deep text");
        assert_eq!(doc.title, None);
    }

    #[test]
    fn html_without_text_is_empty() {
        assert!(matches!(
            parse(
                ContentKind::Html,
                b"<html><head><script>x()</script></head><body> </body></html>"
            ),
            Err(ParseError::Empty)
        ));
    }

    const HELVETICA: &str = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>";

    /// Builds a minimal single-page PDF with a correct xref table.
    fn tiny_pdf(text: &str, title: Option<&str>) -> Vec<u8> {
        tiny_pdf_with_font(text, title, HELVETICA)
    }

    fn tiny_pdf_with_font(text: &str, title: Option<&str>, font: &str) -> Vec<u8> {
        let content = format!("BT\n/F1 24 Tf\n72 720 Td\n({text}) Tj\nET\n");
        let mut objects = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
                .to_owned(),
            format!(
                "<< /Length {} >>\nstream\n{content}endstream",
                content.len()
            ),
            font.to_owned(),
        ];
        if let Some(title) = title {
            objects.push(format!("<< /Title ({title}) >>"));
        }
        let mut pdf = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(pdf.len());
            pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
        }
        let xref_at = pdf.len();
        let mut xref = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
        for offset in offsets {
            xref.push_str(&format!("{offset:010} 00000 n \n"));
        }
        let info = if title.is_some() {
            format!(" /Info {} 0 R", objects.len())
        } else {
            String::new()
        };
        xref.push_str(&format!(
            "trailer\n<< /Size {} /Root 1 0 R{info} >>\nstartxref\n{xref_at}\n%%EOF\n",
            objects.len() + 1
        ));
        pdf.extend_from_slice(xref.as_bytes());
        pdf
    }

    #[test]
    fn pdf_text_and_title_extracted() {
        let pdf = tiny_pdf("Hello PDF world", Some("Tiny Test Doc"));
        precheck(ContentKind::Pdf, &pdf).unwrap();
        let doc = parse(ContentKind::Pdf, &pdf).unwrap();
        assert_eq!(doc.text, "Hello PDF world");
        assert!(!doc.markdown);
        assert_eq!(doc.title.as_deref(), Some("Tiny Test Doc"));

        let doc = parse(ContentKind::Pdf, &tiny_pdf("No info here", None)).unwrap();
        assert_eq!(doc.text, "No info here");
        assert_eq!(doc.title, None);
    }

    #[test]
    fn pdf_with_leading_bom_and_whitespace_passes_precheck() {
        let mut pdf = b"\xEF\xBB\xBF \r\n".to_vec();
        pdf.extend(tiny_pdf("Hello PDF world", None));
        precheck(ContentKind::Pdf, &pdf).unwrap();
    }

    #[test]
    fn corrupt_pdf_is_malformed_not_a_panic() {
        let bytes = b"%PDF-1.4 garbage";
        precheck(ContentKind::Pdf, bytes).unwrap();
        assert!(matches!(
            parse(ContentKind::Pdf, bytes),
            Err(ParseError::Malformed(_))
        ));

        // A truncated real file: header and objects, no xref or trailer.
        let pdf = tiny_pdf("Hello PDF world", None);
        assert!(matches!(
            parse(ContentKind::Pdf, &pdf[..pdf.len() / 2]),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn pdf_extract_panic_becomes_malformed() {
        // pdf-extract `expect`s DescendantFonts on Type0 fonts; without them it panics.
        let pdf = tiny_pdf_with_font(
            "Hello PDF world",
            None,
            "<< /Type /Font /Subtype /Type0 /BaseFont /Foo /Encoding /Identity-H >>",
        );
        precheck(ContentKind::Pdf, &pdf).unwrap();
        match parse(ContentKind::Pdf, &pdf) {
            Err(ParseError::Malformed(msg)) => assert!(msg.contains("panicked"), "{msg}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn non_pdf_bytes_fail_precheck() {
        assert!(matches!(
            precheck(ContentKind::Pdf, b"PK\x03\x04 this is a zip"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            precheck(ContentKind::Pdf, b"hello %PDF-1.4"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse(ContentKind::Pdf, b"<html>not a pdf</html>"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            precheck(ContentKind::Pdf, b""),
            Err(ParseError::Empty)
        ));
        assert!(matches!(
            parse(ContentKind::Pdf, b"  \n"),
            Err(ParseError::Empty)
        ));
    }

    #[test]
    fn pdf_without_text_is_empty() {
        let pdf = tiny_pdf("", None);
        assert!(matches!(
            parse(ContentKind::Pdf, &pdf),
            Err(ParseError::Empty)
        ));
    }

    #[test]
    fn pdf_whitespace_is_normalised() {
        let raw = "\n\n  Title   line \n\n\n\nbody\t\tone\nbody two  \u{c}next page\n\n";
        assert_eq!(
            normalise_pdf_text(raw),
            "Title line\n\nbody one\nbody two\n\nnext page"
        );
    }
}
