//! The files of a backup: gzip-compressed JSON lines, each written with its line count, size and
//! SHA-256, and the manifest that lists them. Reading checks a file against the manifest before
//! anything is restored from it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{BackupError, FileEntry, MANIFEST_FILE, Manifest};

/// Counts and hashes the compressed bytes on their way to the file.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One `*.jsonl.gz` file being written.
pub struct LineWriter {
    name: String,
    path: PathBuf,
    encoder: GzEncoder<Hashing<BufWriter<File>>>,
    items: u64,
}

impl LineWriter {
    pub fn create(dir: &Path, name: &str) -> Result<Self, BackupError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| BackupError::io(&path, e))?;
        let hashing = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            sha: Sha256::new(),
            bytes: 0,
        };
        Ok(Self {
            name: name.to_string(),
            path,
            encoder: GzEncoder::new(hashing, Compression::fast()),
            items: 0,
        })
    }

    pub fn write<T: Serialize>(&mut self, item: &T) -> Result<(), BackupError> {
        serde_json::to_writer(&mut self.encoder, item)
            .map_err(|e| BackupError::io(&self.path, std::io::Error::other(e)))?;
        self.encoder
            .write_all(b"\n")
            .map_err(|e| BackupError::io(&self.path, e))?;
        self.items += 1;
        Ok(())
    }

    /// Finishes the file, syncs it to disk, and says what the manifest records of it.
    pub fn finish(self) -> Result<FileEntry, BackupError> {
        let path = self.path;
        let hashing = self
            .encoder
            .finish()
            .map_err(|e| BackupError::io(&path, e))?;
        let Hashing { inner, sha, bytes } = hashing;
        let file = inner
            .into_inner()
            .map_err(|e| BackupError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| BackupError::io(&path, e))?;
        Ok(FileEntry {
            name: self.name,
            items: self.items,
            bytes,
            sha256: hex::encode(sha.finalize()),
        })
    }
}

/// Writes the manifest last, through a temporary file and a rename: a directory with a manifest
/// holds a complete backup.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| BackupError::io(&tmp, std::io::Error::other(e)))?;
    let mut file = File::create(&tmp).map_err(|e| BackupError::io(&tmp, e))?;
    file.write_all(&json)
        .map_err(|e| BackupError::io(&tmp, e))?;
    file.sync_all().map_err(|e| BackupError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| BackupError::io(&path, e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the manifest and refuses one this build cannot read.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BackupError::Invalid(format!(
            "{} has no {MANIFEST_FILE}: not a doc-rag backup, or one that did not finish",
            dir.display()
        )),
        _ => BackupError::io(&path, e),
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Invalid(format!("{}: not JSON: {e}", path.display())))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(super::FORMAT) {
        return Err(BackupError::Invalid(format!(
            "{}: not a doc-rag backup manifest",
            path.display()
        )));
    }
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if version > u64::from(super::FORMAT_VERSION) {
        return Err(BackupError::Incompatible(format!(
            "the backup has format version {version}, written by doc-rag {}; this doc-rag ({}) reads \
             format version {} and older: restore it with a newer doc-rag",
            value
                .get("doc_rag_version")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            env!("CARGO_PKG_VERSION"),
            super::FORMAT_VERSION
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| BackupError::Invalid(format!("{}: {e}", path.display())))
}

/// Refuses a manifest file name that would reach outside the backup directory.
pub fn check_name(name: &str) -> Result<(), BackupError> {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
        return Err(BackupError::Invalid(format!(
            "the manifest names a file outside the backup: {name:?}"
        )));
    }
    Ok(())
}

/// Checks a file's size and SHA-256 against the manifest.
pub fn check_file(dir: &Path, entry: &FileEntry) -> Result<(), BackupError> {
    check_name(&entry.name)?;
    let path = dir.join(&entry.name);
    let mut file = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            BackupError::Corrupt(format!("{} is missing", path.display()))
        }
        _ => BackupError::io(&path, e),
    })?;
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| BackupError::io(&path, e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        bytes += n as u64;
    }
    if bytes != entry.bytes {
        return Err(BackupError::Corrupt(format!(
            "{} has {bytes} bytes, the manifest says {} (truncated or altered)",
            path.display(),
            entry.bytes
        )));
    }
    let sha = hex::encode(sha.finalize());
    if sha != entry.sha256 {
        return Err(BackupError::Corrupt(format!(
            "{}: SHA-256 {sha} does not match the manifest's {} (the file was altered or damaged)",
            path.display(),
            entry.sha256
        )));
    }
    Ok(())
}

/// Reads the lines of a checked file, one item at a time.
pub struct LineReader<T> {
    path: PathBuf,
    lines: std::io::Lines<BufReader<GzDecoder<BufReader<File>>>>,
    line: u64,
    _item: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> LineReader<T> {
    pub fn open(dir: &Path, name: &str) -> Result<Self, BackupError> {
        let path = dir.join(name);
        let file = File::open(&path).map_err(|e| BackupError::io(&path, e))?;
        Ok(Self {
            lines: BufReader::with_capacity(1 << 20, GzDecoder::new(BufReader::new(file))).lines(),
            path,
            line: 0,
            _item: std::marker::PhantomData,
        })
    }

    /// The next item; `None` at the end.
    pub fn next_item(&mut self) -> Result<Option<T>, BackupError> {
        let Some(line) = self.lines.next() else {
            return Ok(None);
        };
        self.line += 1;
        let line = line.map_err(|e| {
            BackupError::Corrupt(format!("{} line {}: {e}", self.path.display(), self.line))
        })?;
        serde_json::from_str(&line).map(Some).map_err(|e| {
            BackupError::Corrupt(format!("{} line {}: {e}", self.path.display(), self.line))
        })
    }
}
