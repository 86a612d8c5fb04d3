//! Backups in S3-compatible object storage: `--out s3://bucket/prefix` and
//! `--from s3://bucket/prefix`.
//!
//! A backup is written to a local staging directory as usual, then each file is uploaded in
//! multipart parts (so a large file is never held in memory), the manifest last: a prefix with a
//! `manifest.json` holds a complete backup. A restore downloads the manifest, then the files it
//! lists, and checks them like local ones. Credentials, region and endpoint come from the usual
//! AWS variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION` / `AWS_DEFAULT_REGION`, and for an S3-compatible server `AWS_ENDPOINT_URL`
//! (with `AWS_ALLOW_HTTP=true` for plain HTTP).

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

use super::{BackupError, MANIFEST_FILE};

/// Where a backup is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket/prefix` or a directory.
    pub fn parse(s: &str) -> Result<Self, BackupError> {
        let Some(rest) = s.strip_prefix("s3://") else {
            return Ok(Location::Dir(s.into()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() || prefix.is_empty() {
            return Err(BackupError::Invalid(format!(
                "{s}: an S3 location is s3://<bucket>/<prefix>, with a prefix of its own for each \
                 backup"
            )));
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

fn remote_err(what: &str, e: impl std::fmt::Display) -> BackupError {
    BackupError::Remote(format!("{what}: {e}"))
}

fn store(bucket: &str) -> Result<Arc<dyn ObjectStore>, BackupError> {
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| remote_err("S3 configuration (the AWS_* variables)", e))?;
    Ok(Arc::new(s3))
}

fn key(prefix: &str, name: &str) -> ObjectPath {
    ObjectPath::from(format!("{prefix}/{name}"))
}

/// Uploads the backup in `dir` under `prefix`, the manifest last; returns the bytes sent.
pub async fn upload(dir: &Path, bucket: &str, prefix: &str) -> Result<u64, BackupError> {
    let store = store(bucket)?;
    let manifest = super::archive::read_manifest(dir)?;
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.push(MANIFEST_FILE);
    let mut sent = 0;
    for name in names {
        let path = dir.join(name);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| BackupError::io(&path, e))?;
        let target = key(prefix, name);
        let mut writer = BufWriter::new(Arc::clone(&store), target.clone());
        sent += tokio::io::copy(&mut file, &mut writer)
            .await
            .map_err(|e| remote_err(&format!("upload s3://{bucket}/{target}"), e))?;
        writer
            .shutdown()
            .await
            .map_err(|e| remote_err(&format!("upload s3://{bucket}/{target}"), e))?;
    }
    Ok(sent)
}

/// Downloads the backup under `prefix` into `dir`: the manifest, then the files it lists.
pub async fn download(bucket: &str, prefix: &str, dir: &Path) -> Result<(), BackupError> {
    let store = store(bucket)?;
    fetch(&store, bucket, prefix, MANIFEST_FILE, dir).await?;
    let manifest = super::archive::read_manifest(dir)?;
    for entry in &manifest.files {
        super::archive::check_name(&entry.name)?;
        fetch(&store, bucket, prefix, &entry.name, dir).await?;
    }
    Ok(())
}

async fn fetch(
    store: &Arc<dyn ObjectStore>,
    bucket: &str,
    prefix: &str,
    name: &str,
    dir: &Path,
) -> Result<(), BackupError> {
    let source = key(prefix, name);
    let what = format!("download s3://{bucket}/{source}");
    let mut stream = match store.get(&source).await {
        Ok(got) => got.into_stream(),
        Err(object_store::Error::NotFound { .. }) if name == MANIFEST_FILE => {
            return Err(BackupError::Invalid(format!(
                "s3://{bucket}/{prefix} has no {MANIFEST_FILE}: not a doc-rag backup, or one that \
                 did not finish"
            )));
        }
        Err(object_store::Error::NotFound { .. }) => {
            return Err(BackupError::Corrupt(format!(
                "s3://{bucket}/{source} is missing"
            )));
        }
        Err(e) => return Err(remote_err(&what, e)),
    };
    let path = dir.join(name);
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| BackupError::io(&path, e))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| remote_err(&what, e))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| BackupError::io(&path, e))?;
    }
    file.flush().await.map_err(|e| BackupError::io(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://backups/nightly/2026-11-29/").unwrap(),
            Location::S3 {
                bucket: "backups".into(),
                prefix: "nightly/2026-11-29".into()
            }
        );
        assert_eq!(
            Location::parse("./backups/x").unwrap(),
            Location::Dir("./backups/x".into())
        );
        for bad in ["s3://", "s3://bucket", "s3://bucket/", "s3:///prefix"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
