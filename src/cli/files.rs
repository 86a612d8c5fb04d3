//! The files `doc-rag ingest` takes: expanding the command-line paths into files, the content
//! type of each, and reading one into the `CreateDocument` the bulk endpoint takes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::api::error_chain;
use crate::api::model::CreateDocument;

/// Extensions `ingest` takes from folders (and accepts for explicitly named files).
const SUPPORTED_EXTENSIONS: &[&str] =
    &["txt", "text", "log", "md", "markdown", "html", "htm", "pdf"];

/// Files to upload and paths that were rejected before uploading, each sorted by path.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub files: Vec<PathBuf>,
    pub errors: Vec<(PathBuf, String)>,
}

/// Expands the command-line paths into the files to upload. Folders are walked recursively,
/// taking supported extensions only and skipping hidden entries (`.git`, editor state), which are
/// never documents someone meant to ingest. Explicitly named files are taken at their word, so an
/// unsupported one is an error rather than silently dropped. A file reached twice is uploaded once.
pub(crate) fn collect_files(paths: &[PathBuf]) -> Collected {
    let mut collected = Collected::default();
    let mut seen = HashSet::new();
    let mut take = |path: PathBuf, collected: &mut Collected| {
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.insert(key) {
            collected.files.push(path);
        }
    };

    for root in paths {
        let meta = match std::fs::metadata(root) {
            Ok(meta) => meta,
            Err(e) => {
                collected.errors.push((root.clone(), e.to_string()));
                continue;
            }
        };
        if !meta.is_dir() {
            if content_type_for(root).is_some() {
                take(root.clone(), &mut collected);
            } else {
                collected.errors.push((root.clone(), unsupported()));
            }
            continue;
        }
        let walker = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| entry.depth() == 0 || !is_hidden(entry.file_name()));
        for entry in walker {
            match entry {
                Ok(entry)
                    if entry.file_type().is_file() && content_type_for(entry.path()).is_some() =>
                {
                    take(entry.into_path(), &mut collected);
                }
                Ok(_) => {}
                Err(e) => {
                    let path = e.path().map_or_else(|| root.clone(), Path::to_path_buf);
                    collected.errors.push((path, error_chain(&e)));
                }
            }
        }
    }
    collected.files.sort();
    collected.errors.sort();
    collected
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.'))
}

/// The content type the server should parse a file as, from its extension (case-insensitive);
/// `None` for files the server cannot ingest.
pub(crate) fn content_type_for(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

pub(crate) fn supported_list() -> String {
    SUPPORTED_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unsupported() -> String {
    format!("unsupported file type; supported: {}", supported_list())
}

/// Reads `path` into a document for the bulk endpoint: the file name as title; plain text and
/// Markdown as `text` (with `content_type` `text/markdown` for Markdown), HTML, PDF and text that
/// is not UTF-8 as `content_base64` with their content type, for the server to parse as it parses
/// a multipart upload. With `replace`, `external_id` is the canonical path, so `./a.md`, `a.md`
/// and `/abs/a.md` all replace the same document. The error is the reason, for the file's row.
pub(crate) fn read_document(path: &Path, replace: bool) -> Result<CreateDocument, String> {
    let content_type = content_type_for(path).ok_or_else(unsupported)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file: {e}"))?;
    let external_id = if replace {
        let canonical =
            std::fs::canonicalize(path).map_err(|e| format!("cannot resolve path: {e}"))?;
        Some(canonical.to_string_lossy().into_owned())
    } else {
        None
    };
    let title = path
        .file_name()
        .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
        .into_owned();
    let mut doc = CreateDocument {
        title: Some(title),
        external_id,
        ..CreateDocument::default()
    };
    let textual = matches!(content_type, "text/plain" | "text/markdown");
    match String::from_utf8(bytes) {
        Ok(text) if textual => {
            doc.content_type = (content_type == "text/markdown").then(|| content_type.to_string());
            doc.text = Some(text);
        }
        Ok(text) => {
            doc.content_base64 = Some(base64::engine::general_purpose::STANDARD.encode(text));
            doc.content_type = Some(content_type.to_string());
        }
        Err(e) => {
            doc.content_base64 =
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()));
            doc.content_type = Some(content_type.to_string());
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"hello").unwrap();
    }

    fn relative(files: &[PathBuf], root: &Path) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                f.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect()
    }

    #[test]
    fn collects_supported_files_recursively_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [
            "b.md",
            "a.txt",
            "notes/deep/x.PDF",
            "notes/page.html",
            "notes/old.htm",
            "notes/server.log",
            "notes/readme.markdown",
            "notes/plain.text",
            "notes/image.png",
            "notes/doc.docx",
            "no_extension",
            ".git/HEAD.md",
            "notes/.hidden.md",
        ] {
            touch(&root.join(name));
        }

        let collected = collect_files(&[root.to_path_buf()]);
        assert!(collected.errors.is_empty(), "{:?}", collected.errors);
        assert_eq!(
            relative(&collected.files, root),
            [
                "a.txt",
                "b.md",
                "notes/deep/x.PDF",
                "notes/old.htm",
                "notes/page.html",
                "notes/plain.text",
                "notes/readme.markdown",
                "notes/server.log",
            ]
        );
    }

    #[test]
    fn explicit_unsupported_or_missing_files_are_errors_and_duplicates_collapse() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("docs/a.md"));
        touch(&root.join("report.docx"));

        let collected = collect_files(&[
            root.join("report.docx"),
            root.join("docs"),
            root.join("docs/a.md"),
            root.join("missing.txt"),
        ]);
        assert_eq!(relative(&collected.files, root), ["docs/a.md"]);
        let errors: Vec<(String, &str)> = collected
            .errors
            .iter()
            .map(|(p, m)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    m.as_str(),
                )
            })
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "missing.txt");
        assert_eq!(errors[1].0, "report.docx");
        assert!(
            errors[1].1.starts_with("unsupported file type"),
            "{}",
            errors[1].1
        );
    }

    #[test]
    fn content_type_follows_extension() {
        let cases = [
            ("a.txt", Some("text/plain")),
            ("a.text", Some("text/plain")),
            ("a.log", Some("text/plain")),
            ("a.md", Some("text/markdown")),
            ("a.MarkDown", Some("text/markdown")),
            ("a.html", Some("text/html")),
            ("a.HTM", Some("text/html")),
            ("dir.v2/a.pdf", Some("application/pdf")),
            ("a.docx", None),
            ("Makefile", None),
            (".md", None),
        ];
        for (path, expected) in cases {
            assert_eq!(content_type_for(Path::new(path)), expected, "{path}");
        }
    }

    #[test]
    fn documents_carry_text_or_base64_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            path
        };

        let txt = read_document(&write("notes.txt", b"plain words"), false).unwrap();
        assert_eq!(txt.title.as_deref(), Some("notes.txt"));
        assert_eq!(txt.text.as_deref(), Some("plain words"));
        assert_eq!((txt.content_type, txt.content_base64), (None, None));
        assert_eq!(txt.external_id, None);
        assert_eq!((txt.collection, txt.metadata), (None, None));

        let md_path = write("guide.md", b"# Guide\nbody");
        let md = read_document(&md_path, true).unwrap();
        assert_eq!(md.text.as_deref(), Some("# Guide\nbody"));
        assert_eq!(md.content_type.as_deref(), Some("text/markdown"));
        let canonical = fs::canonicalize(&md_path).unwrap();
        assert_eq!(md.external_id.as_deref(), canonical.to_str());

        let html = read_document(&write("page.html", b"<p>hi</p>"), false).unwrap();
        assert_eq!(html.text, None);
        assert_eq!(html.content_type.as_deref(), Some("text/html"));
        assert_eq!(html.content_base64, Some(b64(b"<p>hi</p>")));

        let pdf_bytes = b"%PDF-1.4\n\xff\xfe binary";
        let pdf = read_document(&write("paper.PDF", pdf_bytes), false).unwrap();
        assert_eq!(pdf.content_type.as_deref(), Some("application/pdf"));
        assert_eq!(pdf.content_base64, Some(b64(pdf_bytes)));

        // Text that is not UTF-8 goes as bytes, for the server to decide about.
        let latin1 = read_document(&write("old.txt", b"caf\xe9"), false).unwrap();
        assert_eq!(latin1.text, None);
        assert_eq!(latin1.content_type.as_deref(), Some("text/plain"));
        assert_eq!(latin1.content_base64, Some(b64(b"caf\xe9")));

        let missing = read_document(&dir.path().join("gone.md"), false).unwrap_err();
        assert!(missing.starts_with("cannot read file"), "{missing}");
        let docx = read_document(&write("a.docx", b"x"), false).unwrap_err();
        assert!(docx.starts_with("unsupported file type"), "{docx}");
    }
}
