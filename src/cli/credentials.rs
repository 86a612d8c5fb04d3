//! The session `doc-rag login` stores for later commands: `credentials.json` in the user's config
//! dir (`$DOCRAG_CONFIG_DIR`, else `$XDG_CONFIG_HOME/doc-rag`, else `~/.config/doc-rag`), readable
//! by its owner only (0600). An expired access token is refreshed with the stored refresh token.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::security::TokenPair;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// The API the tokens came from.
    pub url: String,
    pub email: String,
    pub access_token: String,
    /// Unix seconds.
    pub access_expires_at: i64,
    pub refresh_token: String,
}

impl Stored {
    pub fn from_pair(url: &str, pair: &TokenPair) -> Self {
        Stored {
            url: url.to_string(),
            email: pair.user.email.clone(),
            access_token: pair.access_token.clone(),
            access_expires_at: chrono::Utc::now().timestamp() + pair.expires_in as i64,
            refresh_token: pair.refresh_token.clone(),
        }
    }
}

pub fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCRAG_CONFIG_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("doc-rag"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("doc-rag"))
}

pub fn path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("credentials.json"))
}

pub fn load() -> Option<Stored> {
    let text = std::fs::read_to_string(path()?).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn save(stored: &Stored) -> anyhow::Result<PathBuf> {
    let path = path().context("cannot tell the config dir: set HOME or DOCRAG_CONFIG_DIR")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_vec_pretty(stored)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open; make sure it is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, &json)?;
    Ok(path)
}

pub fn remove() -> bool {
    path().is_some_and(|p| std::fs::remove_file(p).is_ok())
}

/// The stored access token for `url`, refreshed first when it is about to expire.
pub async fn token_for(http: &reqwest::Client, url: &str) -> Option<String> {
    let stored = load().filter(|s| s.url.trim_end_matches('/') == url.trim_end_matches('/'))?;
    if stored.access_expires_at > chrono::Utc::now().timestamp() + 30 {
        return Some(stored.access_token);
    }
    let response = http
        .post(format!("{}/v1/auth/refresh", url.trim_end_matches('/')))
        .json(&serde_json::json!({"refresh_token": stored.refresh_token}))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let pair: TokenPair = response.json().await.ok()?;
    let renewed = Stored::from_pair(&stored.url, &pair);
    let _ = save(&renewed);
    Some(renewed.access_token)
}

/// The token for a port other than the API's: `explicit` (`--token` / `DOCRAG_TOKEN`) when given,
/// else the stored session's, whose tokens are valid on every port.
pub async fn explicit_or_stored(http: &reqwest::Client, explicit: Option<&str>) -> Option<String> {
    match explicit.map(str::trim) {
        Some(t) if !t.is_empty() => Some(t.to_string()),
        _ => match load() {
            Some(s) => token_for(http, &s.url).await,
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_credentials_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: this is the only test that touches DOCRAG_CONFIG_DIR.
        unsafe { std::env::set_var("DOCRAG_CONFIG_DIR", dir.path()) };
        let stored = Stored {
            url: "http://127.0.0.1:8080".into(),
            email: "a@b".into(),
            access_token: "t".into(),
            access_expires_at: 1,
            refresh_token: "r".into(),
        };
        let path = save(&stored).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(load().unwrap().refresh_token, "r");
        assert!(remove());
        assert!(load().is_none());
    }
}
