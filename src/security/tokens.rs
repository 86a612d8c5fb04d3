//! Access tokens: JWTs signed with HMAC keys that carry a `kid`. The keyring holds every key that
//! may still verify (the current one signs); it is loaded from the database, so replicas share it,
//! or takes `JWT_SECRET` as the current key. Only the configured algorithm is accepted, and `exp`,
//! `nbf`, `iss` and `aud` are required and checked.

use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::SecuritySettings;
use crate::storage::security::SigningKeyRecord;

/// Why a credential was refused. Each has its own error code so clients know whether refreshing
/// can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// Malformed, tampered, wrong algorithm, unknown key, unknown API key.
    Invalid,
    Expired,
    /// Signed by a key that has been retired.
    RetiredKey,
    /// Ended by logout, revoke-all, refresh reuse, a password change or key revocation.
    Revoked,
    Disabled,
    /// Wrong email or password (login only).
    BadCredentials,
    /// The credential store did not answer.
    Unavailable,
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::Missing => "unauthorized",
            AuthFailure::Invalid => "invalid_token",
            AuthFailure::Expired => "token_expired",
            AuthFailure::RetiredKey => "token_key_retired",
            AuthFailure::Revoked => "token_revoked",
            AuthFailure::Disabled => "account_disabled",
            AuthFailure::BadCredentials => "invalid_credentials",
            AuthFailure::Unavailable => "unavailable",
        }
    }
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "authentication required: send Authorization: Bearer <token> or X-API-Key"
            }
            AuthFailure::Invalid => "the token or API key is not valid",
            AuthFailure::Expired => "the token or API key has expired",
            AuthFailure::RetiredKey => "the token was signed by a retired key; log in again",
            AuthFailure::Revoked => "the session or API key has been revoked; log in again",
            AuthFailure::Disabled => "the account is disabled",
            AuthFailure::BadCredentials => "wrong email or password",
            AuthFailure::Unavailable => "cannot check credentials right now; retry shortly",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Issue time in milliseconds: revocation compares against it, so a token issued in the
    /// same second as a revoke-all, but after it, still works.
    pub ims: i64,
    /// The refresh-token family (session) the token belongs to.
    pub fam: String,
    pub jti: String,
}

impl Claims {
    pub fn new(s: &SecuritySettings, user_id: &str, role: &str, family: &str, now_ms: i64) -> Self {
        let now = now_ms / 1000;
        Claims {
            sub: user_id.to_string(),
            role: role.to_string(),
            iss: s.jwt_issuer.clone(),
            aud: s.jwt_audience.clone(),
            iat: now,
            nbf: now,
            exp: now + s.access_token_ttl_secs as i64,
            ims: now_ms,
            fam: family.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        other => Err(format!(
            "security.jwt_algorithm {other:?}: use HS256, HS384 or HS512"
        )),
    }
}

struct VerifyKey {
    key: DecodingKey,
    retire_at: Option<i64>,
}

#[derive(Default)]
struct Keys {
    current: Option<(String, EncodingKey)>,
    verify: HashMap<String, VerifyKey>,
}

pub struct Keyring {
    algorithm: Algorithm,
    validation: Validation,
    keys: RwLock<Keys>,
}

/// The kid of an environment-provided secret: stable across restarts and replicas, and a new
/// secret gets a new kid.
fn env_kid(secret: &str) -> String {
    format!(
        "env-{}",
        &hex::encode(Sha256::digest(secret.as_bytes()))[..12]
    )
}

impl Keyring {
    pub fn new(s: &SecuritySettings) -> Result<Self, String> {
        let algorithm = algorithm(&s.jwt_algorithm)?;
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[s.jwt_issuer.as_str()]);
        validation.set_audience(&[s.jwt_audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Keyring {
            algorithm,
            validation,
            keys: RwLock::new(Keys::default()),
        })
    }

    /// Replaces the keys: the stored ones, plus `env_secret` as the current key when given.
    pub fn load(
        &self,
        records: &[SigningKeyRecord],
        env_secret: Option<&str>,
    ) -> Result<(), String> {
        let mut keys = Keys::default();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for r in records {
            let secret = b64
                .decode(&r.secret)
                .map_err(|e| format!("signing key {}: {e}", r.kid))?;
            keys.verify.insert(
                r.kid.clone(),
                VerifyKey {
                    key: DecodingKey::from_secret(&secret).map_err(|e| e.to_string())?,
                    retire_at: r.retire_at,
                },
            );
            if r.retire_at.is_none() {
                keys.current = Some((
                    r.kid.clone(),
                    EncodingKey::from_secret(&secret).map_err(|e| e.to_string())?,
                ));
            }
        }
        if let Some(secret) = env_secret {
            let kid = env_kid(secret);
            keys.verify.insert(
                kid.clone(),
                VerifyKey {
                    key: DecodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?,
                    retire_at: None,
                },
            );
            keys.current = Some((
                kid,
                EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?,
            ));
        }
        if keys.current.is_none() {
            return Err("no current JWT signing key".into());
        }
        *self.keys.write().map_err(|_| "keyring lock poisoned")? = keys;
        Ok(())
    }

    pub fn current_kid(&self) -> Option<String> {
        self.keys
            .read()
            .ok()?
            .current
            .as_ref()
            .map(|(k, _)| k.clone())
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let keys = self.keys.read().map_err(|_| "keyring lock poisoned")?;
        let (kid, key) = keys.current.as_ref().ok_or("no current JWT signing key")?;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key).map_err(|e| e.to_string())
    }

    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Invalid)?;
        if header.alg != self.algorithm {
            return Err(AuthFailure::Invalid);
        }
        let kid = header.kid.ok_or(AuthFailure::Invalid)?;
        let keys = self.keys.read().map_err(|_| AuthFailure::Invalid)?;
        let key = keys.verify.get(&kid).ok_or(AuthFailure::Invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                _ => AuthFailure::Invalid,
            },
        )?;
        // Checked after the signature, so a forged token never learns that a kid was retired.
        if key.retire_at.is_some_and(|t| t <= now_ms) {
            return Err(AuthFailure::RetiredKey);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use hmac::{Hmac, Mac};

    fn settings() -> SecuritySettings {
        Settings::defaults_with(&[]).unwrap().security
    }

    fn record(kid: &str, secret: &[u8], retire_at: Option<i64>) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.into(),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
            created_at: 0,
            retire_at,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// A token assembled by hand, as an attacker would.
    fn forge(header: serde_json::Value, claims: &Claims, secret: Option<&[u8]>) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(&header),
            b64(&serde_json::to_value(claims).unwrap())
        );
        let signature = match secret {
            Some(s) => {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(s).unwrap();
                mac.update(signing_input.as_bytes());
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            }
            None => String::new(),
        };
        format!("{signing_input}.{signature}")
    }

    fn ring(records: &[SigningKeyRecord]) -> Keyring {
        let k = Keyring::new(&settings()).unwrap();
        k.load(records, None).unwrap();
        k
    }

    #[test]
    fn signs_and_verifies_with_kid_and_rejects_tampering() {
        let now = 1_700_000_000_000;
        let k = ring(&[record("k1", b"secret-one-secret-one-secret-one", None)]);
        let claims = Claims::new(
            &settings(),
            "u1",
            "admin",
            "f1",
            chrono::Utc::now().timestamp_millis(),
        );
        let token = k.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(k.verify(&token, now).unwrap(), claims);

        // Flip one character of the payload.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut payload = parts[1].clone().into_bytes();
        payload[5] = if payload[5] == b'A' { b'B' } else { b'A' };
        parts[1] = String::from_utf8(payload).unwrap();
        assert_eq!(k.verify(&parts.join("."), now), Err(AuthFailure::Invalid));
        assert_eq!(k.verify("not.a.token", now), Err(AuthFailure::Invalid));
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        let secret = b"secret-one-secret-one-secret-one";
        let k = ring(&[record("k1", secret, None)]);
        let claims = Claims::new(
            &settings(),
            "u1",
            "admin",
            "f1",
            chrono::Utc::now().timestamp_millis(),
        );
        let now = chrono::Utc::now().timestamp_millis();
        // Control: the forger produces valid tokens when it follows the rules.
        let honest = forge(
            serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
            &claims,
            Some(secret),
        );
        assert!(k.verify(&honest, now).is_ok());
        for header in [
            serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"}),
            serde_json::json!({"alg": "None", "kid": "k1"}),
        ] {
            assert_eq!(
                k.verify(&forge(header, &claims, None), now),
                Err(AuthFailure::Invalid)
            );
        }
        // RS256 header, HMAC-signed with the shared secret: the classic confusion.
        for alg in ["RS256", "ES256", "PS256", "HS384", "HS512"] {
            let t = forge(
                serde_json::json!({"alg": alg, "typ": "JWT", "kid": "k1"}),
                &claims,
                Some(secret),
            );
            assert_eq!(k.verify(&t, now), Err(AuthFailure::Invalid), "{alg}");
        }
        // No kid, or an unknown one.
        let t = forge(serde_json::json!({"alg": "HS256"}), &claims, Some(secret));
        assert_eq!(k.verify(&t, now), Err(AuthFailure::Invalid));
        let t = forge(
            serde_json::json!({"alg": "HS256", "kid": "k9"}),
            &claims,
            Some(secret),
        );
        assert_eq!(k.verify(&t, now), Err(AuthFailure::Invalid));
    }

    #[test]
    fn expiry_not_before_issuer_and_audience_are_checked() {
        let secret = b"secret-one-secret-one-secret-one";
        let k = ring(&[record("k1", secret, None)]);
        let now = chrono::Utc::now().timestamp_millis();
        let good = Claims::new(&settings(), "u1", "admin", "f1", now);
        let header = serde_json::json!({"alg": "HS256", "kid": "k1"});
        let check = |c: Claims| k.verify(&forge(header.clone(), &c, Some(secret)), now);
        assert!(check(good.clone()).is_ok());
        assert_eq!(
            check(Claims {
                exp: good.iat - 60,
                ..good.clone()
            }),
            Err(AuthFailure::Expired)
        );
        assert_eq!(
            check(Claims {
                nbf: good.iat + 600,
                ..good.clone()
            }),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            check(Claims {
                iss: "evil".into(),
                ..good.clone()
            }),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            check(Claims {
                aud: "other".into(),
                ..good.clone()
            }),
            Err(AuthFailure::Invalid)
        );
        // Claims without exp are refused too.
        let mut v = serde_json::to_value(&good).unwrap();
        v.as_object_mut().unwrap().remove("exp");
        let t = format!("{}.{}", b64(&header), b64(&v));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(t.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            k.verify(&format!("{t}.{sig}"), now),
            Err(AuthFailure::Invalid)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_until_retirement_and_env_secret_is_current() {
        let now = chrono::Utc::now().timestamp_millis();
        let k = ring(&[record("old", b"old-secret-old-secret-old-secret", None)]);
        let claims = Claims::new(&settings(), "u1", "viewer", "f1", now);
        let old_token = k.sign(&claims).unwrap();
        // Rotated: old retires in a minute, new signs.
        k.load(
            &[
                record(
                    "old",
                    b"old-secret-old-secret-old-secret",
                    Some(now + 60_000),
                ),
                record("new", b"new-secret-new-secret-new-secret", None),
            ],
            None,
        )
        .unwrap();
        assert_eq!(k.current_kid().as_deref(), Some("new"));
        assert!(k.verify(&old_token, now).is_ok());
        assert_eq!(
            k.verify(&old_token, now + 61_000),
            Err(AuthFailure::RetiredKey)
        );
        // JWT_SECRET wins as the current key.
        k.load(
            &[record("new", b"new-secret-new-secret-new-secret", None)],
            Some("from-env"),
        )
        .unwrap();
        assert!(k.current_kid().unwrap().starts_with("env-"));
        let t = k.sign(&claims).unwrap();
        assert!(k.verify(&t, now).is_ok());
    }
}
