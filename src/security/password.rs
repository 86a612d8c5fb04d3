//! Password hashing with argon2id. Hashing is deliberately slow and memory-hungry, so it runs on
//! the blocking pool behind a small semaphore: a login flood queues there instead of taking every
//! core from search and ingestion.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use super::{SecurityError, SecurityResult};
use crate::config::SecuritySettings;

pub fn params(s: &SecuritySettings) -> Result<Params, String> {
    if s.argon2_memory_kib < 19 * 1024 || s.argon2_iterations < 2 || s.argon2_parallelism < 1 {
        return Err("argon2id needs at least 19456 KiB of memory, 2 iterations, 1 lane".into());
    }
    Params::new(
        s.argon2_memory_kib,
        s.argon2_iterations,
        s.argon2_parallelism,
        None,
    )
    .map_err(|e| e.to_string())
}

pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// Verified against when the account does not exist, so "no such user" takes as long as
    /// "wrong password".
    dummy: String,
}

impl Passwords {
    pub fn new(settings: &SecuritySettings) -> SecurityResult<Self> {
        let params = params(settings).map_err(SecurityError::Invalid)?;
        let dummy = hash_blocking(&params, "not a password of anyone")?;
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(settings.hash_concurrency.max(1))),
            dummy,
        })
    }

    pub async fn hash(&self, password: SecretString) -> SecurityResult<String> {
        let params = self.params.clone();
        self.run(move || hash_blocking(&params, password.expose_secret()))
            .await
    }

    /// Whether `password` matches `hash`; with no hash, spends the same time and says no.
    pub async fn verify(
        &self,
        password: SecretString,
        hash: Option<String>,
    ) -> SecurityResult<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let ok = self
            .run(move || {
                let parsed =
                    PasswordHash::new(&hash).map_err(|e| SecurityError::Hash(e.to_string()))?;
                Ok(Argon2::default()
                    .verify_password(password.expose_secret().as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(ok && known)
    }

    async fn run<T, F>(&self, f: F) -> SecurityResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> SecurityResult<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| SecurityError::Hash(e.to_string()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(f))
            .await
            .map_err(|e| SecurityError::Hash(e.to_string()))?
    }
}

fn hash_blocking(params: &Params, password: &str) -> SecurityResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SecurityError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[tokio::test]
    async fn hashes_are_argon2id_with_the_configured_cost_and_verify() {
        let settings = Settings::defaults_with(&[]).unwrap().security;
        let p = Passwords::new(&settings).unwrap();
        let hash = p.hash(SecretString::from("correct horse")).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            p.verify(SecretString::from("correct horse"), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !p.verify(SecretString::from("wrong horse"), Some(hash))
                .await
                .unwrap()
        );
        assert!(
            !p.verify(SecretString::from("not a password of anyone"), None)
                .await
                .unwrap()
        );
    }

    #[test]
    fn weaker_than_owasp_minimum_is_refused() {
        let mut settings = Settings::defaults_with(&[]).unwrap().security;
        settings.argon2_memory_kib = 4096;
        assert!(params(&settings).is_err());
    }
}
