//! Typed, layered configuration.
//!
//! Sources, lowest precedence first: the defaults compiled in from `config/default.toml`, an
//! environment file (`--config FILE`, else `config/$DOCRAG_ENV.toml` when it exists), environment
//! variables `DOCRAG__SECTION__KEY`, then command-line overrides. Secrets (the database URL can
//! carry a password) are wrapped so `Debug` and logs never print them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub storage: StorageSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub security: SecuritySettings,
    pub query: QuerySettings,
    pub response: ResponseSettings,
    pub embedder: EmbedderSettings,
    pub ingest: IngestSettings,
    pub parser: ParserSettings,
    pub cache: CacheSettings,
    pub documents: DocumentsSettings,
    pub vectors: VectorsSettings,
    pub limits: LimitsSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub backup: BackupSettings,
    pub webhooks: WebhookSettings,
}

/// Limits on what callers send (see `[limits]` in config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct LimitsSettings {
    pub metadata_max_bytes: usize,
    pub metadata_max_keys: usize,
    pub metadata_max_depth: usize,
    pub title_max_bytes: usize,
    pub bulk_max_documents: usize,
    pub external_id_max_bytes: usize,
    pub filter_max_conditions: usize,
    pub filter_max_values: usize,
    pub filter_max_depth: usize,
    pub query_max_bytes: usize,
    pub multipart_max_fields: usize,
    pub multipart_field_max_bytes: usize,
    pub extracted_text_max_bytes: usize,
    pub chunks_per_document_max: usize,
    pub body_read_timeout_secs: u64,
    pub handler_timeout_secs: u64,
}

/// Where one module's HTTP server listens. Port 0 picks a free port (tests).
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub bind: String,
    pub port: u16,
}

impl ServerSettings {
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        let host = self.bind.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().map_err(|_| {
            ConfigError::Invalid(format!("bind address {:?} is not an IP address", self.bind))
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecuritySettings {
    pub bind: String,
    pub port: u16,
    pub admin_email: String,
    pub admin_password: SecretString,
    pub jwt_secret: SecretString,
    pub jwt_algorithm: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub hash_concurrency: usize,
    pub metrics_token: SecretString,
    pub service_token: SecretString,
    pub trusted_proxies: String,
    pub sync_interval_ms: u64,
    pub login_max_failures: u32,
    pub login_ip_max_failures: u32,
    pub login_lockout_secs: u64,
    pub rate_limit_auth_ip: String,
    pub rate_limit_auth_user: String,
    pub rate_limit_ingest_ip: String,
    pub rate_limit_ingest_user: String,
    pub rate_limit_query_ip: String,
    pub rate_limit_query_user: String,
}

impl SecuritySettings {
    pub fn server(&self) -> ServerSettings {
        ServerSettings {
            bind: self.bind.clone(),
            port: self.port,
        }
    }

    /// The configured JWT secret, else the runbook's `JWT_SECRET` environment variable.
    pub fn jwt_secret(&self) -> Option<String> {
        let configured = self.jwt_secret.expose_secret().trim();
        if !configured.is_empty() {
            return Some(configured.to_string());
        }
        std::env::var("JWT_SECRET")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub bind: String,
    pub port: u16,
}

impl StorageSettings {
    pub fn server(&self) -> ServerSettings {
        ServerSettings {
            bind: self.bind.clone(),
            port: self.port,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub pool_size: u32,
    pub busy_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub checkout_timeout_ms: u64,
    pub startup_wait_secs: u64,
}

/// The relational backend `database.url` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite(PathBuf),
    Postgres,
}

impl DatabaseSettings {
    pub fn kind(&self, data_dir: &Path) -> Result<DatabaseKind, ConfigError> {
        let url = self.url.expose_secret().trim();
        if url.is_empty() {
            return Ok(DatabaseKind::Sqlite(data_dir.join("doc-rag.sqlite3")));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseKind::Postgres);
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            return Ok(DatabaseKind::Sqlite(PathBuf::from(path)));
        }
        Err(ConfigError::Invalid(
            "database.url must be empty (SQLite in the data dir), sqlite://PATH or postgres://…"
                .into(),
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub bind: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub max_bulk_body_bytes: usize,
    pub wait_timeout_secs: u64,
    pub workers: usize,
}

impl ApiSettings {
    pub fn server(&self) -> ServerSettings {
        ServerSettings {
            bind: self.bind.clone(),
            port: self.port,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct QuerySettings {
    pub bind: String,
    pub port: u16,
    pub default_top_k: usize,
    pub max_top_k: usize,
    pub prefetch_limit: usize,
    pub rrf_k: usize,
    pub fusion: crate::query::fusion::FusionMethod,
    pub dense_weight: f32,
    pub keyword_weight: f32,
    pub bm25_k1: f64,
    pub bm25_b: f64,
    pub bm25_avg_len: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseSettings {
    pub bind: String,
    pub port: u16,
    pub default_top_k: usize,
    pub max_top_k: usize,
    pub max_sentences: usize,
    pub history_turns: usize,
    pub answers_retention_days: u64,
    pub llm: LlmSettings,
}

/// A language model behind an OpenAI-compatible chat-completions API (`[response.llm]`); with no
/// `base_url` every answer is extractive.
#[derive(Debug, Clone, Deserialize)]
pub struct LlmSettings {
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key; the key itself is never in the config.
    pub api_key_env: String,
    pub timeout_secs: u64,
    pub first_token_timeout_secs: u64,
    pub max_tokens: u32,
    pub temperature: f32,
    pub source_tokens: usize,
    pub max_concurrent: usize,
    pub failure_threshold: u32,
    pub cooldown_secs: u64,
}

impl LlmSettings {
    pub fn enabled(&self) -> bool {
        !self.base_url.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderSettings {
    pub bind: String,
    pub port: u16,
    pub model_dir: PathBuf,
    pub model_file: String,
    pub ort_library: PathBuf,
    pub dimension: usize,
    pub max_length: usize,
    pub batch_size: usize,
    pub batch_tokens: usize,
    pub batch_tokens_querying: usize,
    pub threads: usize,
    pub memory_arena: bool,
    pub max_texts: usize,
    pub query_queue: usize,
    pub ingest_queue: usize,
    pub query_burst: usize,
}

impl EmbedderSettings {
    pub fn ort_library_path(&self) -> PathBuf {
        if self.ort_library.is_absolute() {
            self.ort_library.clone()
        } else {
            self.model_dir.join(&self.ort_library)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngestSettings {
    pub workers: usize,
    pub claim_batch: usize,
    pub chunk_max_tokens: usize,
    pub chunk_overlap_tokens: usize,
    pub max_attempts: i32,
    pub max_concurrent_uploads: usize,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

/// The parse workers: child processes that turn uploads into text under resource limits.
#[derive(Debug, Clone, Deserialize)]
pub struct ParserSettings {
    pub workers: usize,
    pub memory_max_mb: u64,
    pub cpu_max_secs: u64,
    pub timeout_secs: u64,
    pub command: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub ttl_secs: u64,
    pub redis_url: SecretString,
    pub redis_pool_size: usize,
    pub redis_timeout_ms: u64,
    pub redis_prefix: String,
}

/// Where originals and chunk text live: the database (empty URL) or MongoDB.
#[derive(Debug, Clone, Deserialize)]
pub struct DocumentsSettings {
    pub mongodb_url: SecretString,
    pub mongodb_database: String,
    pub write_concern: String,
    pub timeout_ms: u64,
}

/// Where vectors live: the embedded index (empty URL) or a Qdrant server.
#[derive(Debug, Clone, Deserialize)]
pub struct VectorsSettings {
    pub qdrant_url: String,
    pub qdrant_api_key: SecretString,
    pub collection: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Backups (`doc-rag backup`, `POST /v1/admin/backups`, and the schedule).
#[derive(Debug, Clone, Deserialize)]
pub struct BackupSettings {
    /// Where the server writes backups, one directory each; empty: `<data_dir>/backups`.
    pub dir: String,
    /// Cron expression (seconds first: `0 0 3 * * *` is 03:00 UTC daily); empty: no schedule.
    pub schedule: String,
    /// Scheduled and API backups kept in `dir`; older ones are removed after a good backup.
    pub retention: usize,
}

impl BackupSettings {
    /// `schedule` parsed; `None` when it is empty.
    pub fn parsed_schedule(&self) -> Result<Option<cron::Schedule>, ConfigError> {
        let s = self.schedule.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<cron::Schedule>().map(Some).map_err(|e| {
            ConfigError::Invalid(format!(
                "backup.schedule {s:?} is not a cron expression (seconds first, e.g. \"0 0 3 * * *\"): {e}"
            ))
        })
    }

    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        if self.dir.trim().is_empty() {
            data_dir.join("backups")
        } else {
            PathBuf::from(self.dir.trim())
        }
    }
}

/// Webhooks: delivery of job and document events to subscribed receivers (`[webhooks]`).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Deliveries attempted at once by this process.
    pub concurrency: usize,
    /// How often the idle delivery worker looks for deliveries due (retries, other replicas').
    pub poll_interval_ms: u64,
    /// One attempt (connect, send, answer) may take this long.
    pub timeout_ms: u64,
    /// Attempts per delivery, the first included.
    pub max_attempts: i32,
    /// Backoff of a failed attempt: doubling from `retry_base_ms` up to `retry_max_ms`, jittered.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Consecutive failed deliveries that disable a subscription.
    pub disable_after: i32,
    /// Subscriptions at most (all collections together).
    pub max_subscriptions: i64,
    /// The longest receiver URL accepted.
    pub url_max_bytes: usize,
    /// Delivered and failed deliveries are kept this long in the delivery log.
    pub retention_hours: u64,
}

/// Distributed tracing: spans exported over OTLP (HTTP, protobuf) when an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub otlp_endpoint: String,
    pub service_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    pub slow_request_ms: u64,
}

/// Command-line layer: explicit flags plus generic `section.key=value` pairs.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub pairs: Vec<(String, String)>,
}

impl Overrides {
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.pairs.push((key.to_string(), value.into()));
        self
    }
}

impl Settings {
    /// Loads every layer. The process environment is read; tests that need isolation use
    /// [`Settings::from_layers`].
    pub fn load(overrides: Overrides) -> Result<Self, ConfigError> {
        let env_file = match &overrides.config_file {
            Some(path) => Some(path.clone()),
            None => std::env::var("DOCRAG_ENV")
                .ok()
                .map(|env| PathBuf::from(format!("config/{env}.toml")))
                .filter(|p| p.exists()),
        };
        let env = config::Environment::with_prefix("DOCRAG")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        // Docker secrets: `DOCRAG__SECTION__KEY_FILE=/run/secrets/x` sets `section.key` to the
        // file's contents, below the command line's own pairs.
        let mut pairs = secret_file_pairs(std::env::vars())?;
        pairs.extend(overrides.pairs.iter().cloned());
        let mut settings = Self::from_layers(env_file.as_deref(), Some(env), &pairs)?;
        settings.apply_runbook_fallbacks(|name| std::env::var(name).ok())?;
        Ok(settings)
    }

    /// The runbook's deployment sets plain `DATABASE_URL` and `REDIS_URL` (and Docker secrets as
    /// `*_FILE`): they fill `database.url` and `cache.redis_url` when those are unset.
    /// A `*_FILE` that cannot be read is an error: starting on the embedded stores instead of
    /// the configured servers would split the data silently.
    fn apply_runbook_fallbacks(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let read = |name: &str| -> Result<Option<String>, ConfigError> {
            let var = format!("{name}_FILE");
            if let Some(path) = env(&var) {
                return read_secret_file(&var, &path).map(|s| Some(s.trim().to_string()));
            }
            Ok(env(name).filter(|v| !v.trim().is_empty()))
        };
        if self.database.url.expose_secret().is_empty()
            && let Some(url) = read("DATABASE_URL")?
        {
            self.database.url = SecretString::from(url);
        }
        if self.cache.redis_url.expose_secret().is_empty()
            && let Some(url) = read("REDIS_URL")?
        {
            self.cache.redis_url = SecretString::from(url);
        }
        Ok(())
    }

    /// Defaults plus an optional file and command-line pairs, ignoring the environment.
    pub fn defaults_with(pairs: &[(String, String)]) -> Result<Self, ConfigError> {
        Self::from_layers(None, None, pairs)
    }

    fn from_layers(
        file: Option<&Path>,
        env: Option<config::Environment>,
        pairs: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        if let Some(env) = env {
            builder = builder.add_source(env);
        }
        for (key, value) in pairs {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.ingest.chunk_overlap_tokens >= self.ingest.chunk_max_tokens {
            return invalid(
                "ingest.chunk_overlap_tokens must be smaller than ingest.chunk_max_tokens",
            );
        }
        if self.parser.workers == 0
            || self.parser.timeout_secs == 0
            || self.parser.cpu_max_secs == 0
        {
            return invalid(
                "parser.workers, parser.timeout_secs and parser.cpu_max_secs must be at least 1",
            );
        }
        if self.parser.memory_max_mb < 64 {
            return invalid("parser.memory_max_mb must be at least 64");
        }
        self.backup.parsed_schedule()?;
        let w = &self.webhooks;
        if w.concurrency == 0
            || w.timeout_ms == 0
            || w.max_attempts < 1
            || w.disable_after < 1
            || w.max_subscriptions < 1
            || w.url_max_bytes < 16
            || w.poll_interval_ms == 0
        {
            return invalid(
                "webhooks.concurrency, timeout_ms, max_attempts, disable_after, max_subscriptions \
                 and poll_interval_ms must be at least 1, webhooks.url_max_bytes at least 16",
            );
        }
        if w.retry_base_ms == 0 || w.retry_base_ms > w.retry_max_ms {
            return invalid("webhooks.retry_base_ms must be in 1..=webhooks.retry_max_ms");
        }
        if self.ingest.workers == 0 {
            return invalid("ingest.workers must be at least 1");
        }
        if !(self.query.dense_weight >= 0.0 && self.query.keyword_weight >= 0.0)
            || self.query.dense_weight + self.query.keyword_weight <= 0.0
        {
            return invalid(
                "query.dense_weight and query.keyword_weight must be >= 0 and not both 0",
            );
        }
        if self.embedder.batch_size == 0 {
            return invalid("embedder.batch_size must be at least 1");
        }
        if self.embedder.batch_tokens_querying == 0 {
            return invalid("embedder.batch_tokens_querying must be at least 1");
        }
        if self.embedder.batch_tokens < self.embedder.max_length {
            return invalid("embedder.batch_tokens must be at least embedder.max_length");
        }
        if self.query.default_top_k == 0 || self.query.default_top_k > self.query.max_top_k {
            return invalid("query.default_top_k must be in 1..=query.max_top_k");
        }
        if self.response.default_top_k == 0 || self.response.default_top_k > self.response.max_top_k
        {
            return invalid("response.default_top_k must be in 1..=response.max_top_k");
        }
        let llm = &self.response.llm;
        if llm.enabled() {
            if !(llm.base_url.starts_with("http://") || llm.base_url.starts_with("https://")) {
                return invalid(
                    "response.llm.base_url must be empty (extractive answers) or http(s)://…/v1",
                );
            }
            if llm.model.is_empty() {
                return invalid("response.llm.model must be set when response.llm.base_url is");
            }
        }
        if llm.timeout_secs == 0
            || llm.first_token_timeout_secs == 0
            || llm.max_tokens == 0
            || llm.max_concurrent == 0
            || llm.source_tokens < 16
        {
            return invalid(
                "response.llm.timeout_secs, first_token_timeout_secs, max_tokens and \
                 max_concurrent must be at least 1, and source_tokens at least 16",
            );
        }
        // A follow-up may make two calls (the rewrite, then the answer) within one request.
        if llm.enabled() && 2 * llm.timeout_secs >= self.limits.handler_timeout_secs {
            return invalid(
                "response.llm.timeout_secs must be under half of limits.handler_timeout_secs",
            );
        }
        if !(0.0..=2.0).contains(&llm.temperature) {
            return invalid("response.llm.temperature must be in 0..=2");
        }
        if self.limits.handler_timeout_secs <= self.api.wait_timeout_secs {
            return invalid(
                "limits.handler_timeout_secs must be longer than api.wait_timeout_secs",
            );
        }
        if self.limits.body_read_timeout_secs == 0 {
            return invalid("limits.body_read_timeout_secs must be at least 1");
        }
        self.database.kind(&self.storage.data_dir)?;
        let mongodb_url = self.documents.mongodb_url.expose_secret();
        if !mongodb_url.is_empty() && !mongodb_url.starts_with("mongodb://") {
            return invalid(
                "documents.mongodb_url must be empty (documents in the database) or mongodb://… \
                 (mongodb+srv:// is not supported: list the hosts)",
            );
        }
        let qdrant_url = &self.vectors.qdrant_url;
        let http = qdrant_url.starts_with("http://") || qdrant_url.starts_with("https://");
        if !(qdrant_url.is_empty() || http) {
            return invalid(
                "vectors.qdrant_url must be empty (the embedded index) or http(s)://host:6334 \
                 (Qdrant's gRPC port)",
            );
        }
        crate::security::validate_settings(&self.security).map_err(ConfigError::Invalid)?;
        for server in self.servers() {
            server.1.addr()?;
        }
        Ok(())
    }

    /// Every module's listener, by module name.
    pub fn servers(&self) -> [(&'static str, ServerSettings); 6] {
        [
            ("api", self.api.server()),
            ("security", self.security.server()),
            (
                "query",
                ServerSettings {
                    bind: self.query.bind.clone(),
                    port: self.query.port,
                },
            ),
            (
                "response",
                ServerSettings {
                    bind: self.response.bind.clone(),
                    port: self.response.port,
                },
            ),
            (
                "embedder",
                ServerSettings {
                    bind: self.embedder.bind.clone(),
                    port: self.embedder.port,
                },
            ),
            ("storage", self.storage.server()),
        ]
    }

    /// Settings for tests and tools: every port 0 on loopback, data in `data_dir`, models from
    /// `model_dir`, then `extra` pairs.
    pub fn for_tests(
        data_dir: &Path,
        model_dir: &Path,
        extra: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut pairs: Vec<(String, String)> = [
            "api", "security", "query", "response", "embedder", "storage",
        ]
        .iter()
        .map(|m| (format!("{m}.port"), "0".to_string()))
        .collect();
        pairs.push(("api.bind".into(), "127.0.0.1".into()));
        pairs.push(("storage.data_dir".into(), data_dir.display().to_string()));
        pairs.push(("embedder.model_dir".into(), model_dir.display().to_string()));
        pairs.extend(extra.iter().cloned());
        Self::defaults_with(&pairs)
    }
}

/// The contents of the secret file the variable `var` names; an unreadable one is an error naming
/// the variable (never a silent fallback to an embedded store).
fn read_secret_file(var: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{var}: cannot read {path}: {e}")))
}

/// Settings whose own name ends in `_file`: `DOCRAG__EMBEDDER__MODEL_FILE` sets the setting, it
/// does not name a secret file holding `embedder.model`.
const SETTINGS_NAMED_FILE: [&str; 1] = ["EMBEDDER__MODEL_FILE"];

/// `(section.key, contents)` for every `DOCRAG__SECTION__KEY_FILE` variable, read from its file.
fn secret_file_pairs(
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut pairs = Vec::new();
    for (name, path) in vars {
        let Some(key) = name
            .strip_prefix("DOCRAG__")
            .filter(|k| !SETTINGS_NAMED_FILE.contains(k))
            .and_then(|k| k.strip_suffix("_FILE"))
        else {
            continue;
        };
        let value = read_secret_file(&name, &path)?;
        pairs.push((
            key.to_lowercase().replace("__", "."),
            value.trim_end_matches(['\n', '\r']).to_string(),
        ));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docrag_file_variables_read_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt");
        std::fs::write(&file, "a-long-secret-from-a-file\n").unwrap();
        let vars = vec![
            (
                "DOCRAG__SECURITY__JWT_SECRET_FILE".to_string(),
                file.display().to_string(),
            ),
            ("DOCRAG__LOG__LEVEL".to_string(), "debug".to_string()),
            ("PATH_FILE".to_string(), "/nonexistent".to_string()),
            // A setting named `*_file`, not a secret.
            (
                "DOCRAG__EMBEDDER__MODEL_FILE".to_string(),
                "model-fp32.onnx".to_string(),
            ),
        ];
        assert_eq!(
            secret_file_pairs(vars.into_iter()).unwrap(),
            vec![(
                "security.jwt_secret".to_string(),
                "a-long-secret-from-a-file".to_string()
            )]
        );
        let missing = vec![(
            "DOCRAG__CACHE__REDIS_URL_FILE".to_string(),
            "/nonexistent/secret".to_string(),
        )];
        let err = secret_file_pairs(missing.into_iter()).unwrap_err();
        assert!(
            err.to_string().contains("DOCRAG__CACHE__REDIS_URL_FILE"),
            "{err}"
        );
    }

    #[test]
    fn server_urls_are_checked() {
        let bad = |k: &str, v: &str| Settings::defaults_with(&[(k.into(), v.into())]).is_err();
        assert!(bad("documents.mongodb_url", "mongodb+srv://cluster/x"));
        assert!(bad("documents.mongodb_url", "postgres://x"));
        assert!(bad("vectors.qdrant_url", "qdrant:6334"));
        assert!(!bad("documents.mongodb_url", "mongodb://127.0.0.1:27017"));
        assert!(!bad("vectors.qdrant_url", "http://qdrant:6334"));
    }

    #[test]
    fn the_runbooks_plain_urls_and_docker_secret_files_fill_unset_urls() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("redis_url");
        std::fs::write(&secret, "redis://:s3cret@redis:6379\n").unwrap();
        let secret = secret.display().to_string();
        let mut s = Settings::defaults_with(&[]).unwrap();
        s.apply_runbook_fallbacks(|name| match name {
            "DATABASE_URL" => Some("postgres://docrag@db/docrag".into()),
            "REDIS_URL_FILE" => Some(secret.clone()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://docrag@db/docrag"
        );
        assert_eq!(
            s.cache.redis_url.expose_secret(),
            "redis://:s3cret@redis:6379"
        );
        assert!(!format!("{s:?}").contains("s3cret"), "secrets never print");

        // An explicit setting wins over the fallback.
        let mut s =
            Settings::defaults_with(&[("database.url".into(), "postgres://explicit/db".into())])
                .unwrap();
        s.apply_runbook_fallbacks(|name| {
            (name == "DATABASE_URL").then(|| "postgres://fallback/db".to_string())
        })
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://explicit/db");

        // A secret file that cannot be read stops the start instead of falling back to SQLite.
        let mut s = Settings::defaults_with(&[]).unwrap();
        let err = s
            .apply_runbook_fallbacks(|name| {
                (name == "DATABASE_URL_FILE").then(|| "/nonexistent/database_url".to_string())
            })
            .unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL_FILE"), "{err}");
    }

    #[test]
    fn defaults_parse_and_use_the_runbook_ports() {
        let s = Settings::defaults_with(&[]).unwrap();
        let ports: Vec<_> = s.servers().iter().map(|(m, srv)| (*m, srv.port)).collect();
        assert_eq!(
            ports,
            vec![
                ("api", 8080),
                ("security", 8087),
                ("query", 8084),
                ("response", 8085),
                ("embedder", 8082),
                ("storage", 8083)
            ]
        );
        assert_eq!(
            s.database.kind(&s.storage.data_dir).unwrap(),
            DatabaseKind::Sqlite(PathBuf::from("./data/doc-rag.sqlite3"))
        );
        assert_eq!(s.log.format, LogFormat::Pretty);
    }

    #[test]
    fn overrides_win_and_are_validated() {
        let s =
            Settings::defaults_with(&[("database.url".into(), "postgres://u:hunter2@db/x".into())])
                .unwrap();
        assert_eq!(
            s.database.kind(&s.storage.data_dir).unwrap(),
            DatabaseKind::Postgres
        );
        assert!(
            !format!("{s:?}").contains("hunter2"),
            "Debug must not print the database password"
        );
        let err = Settings::defaults_with(&[("ingest.chunk_overlap_tokens".into(), "500".into())])
            .unwrap_err();
        assert!(err.to_string().contains("chunk_overlap_tokens"));
        assert!(Settings::defaults_with(&[("database.url".into(), "mysql://x".into())]).is_err());
        assert!(Settings::defaults_with(&[("api.bind".into(), "localhost".into())]).is_err());
    }

    #[test]
    fn llm_settings_are_checked_only_when_a_provider_is_set() {
        let with = |pairs: &[(&str, &str)]| {
            Settings::defaults_with(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        // No provider: a short handler timeout is fine, the model's deadlines do not apply.
        assert!(
            with(&[
                ("limits.handler_timeout_secs", "3"),
                ("api.wait_timeout_secs", "2")
            ])
            .is_ok()
        );
        let url = ("response.llm.base_url", "http://127.0.0.1:8000/v1");
        let err = with(&[url]).unwrap_err().to_string();
        assert!(err.contains("response.llm.model"), "{err}");
        assert!(with(&[url, ("response.llm.model", "m")]).is_ok());
        let err = with(&[
            ("response.llm.base_url", "ftp://x"),
            ("response.llm.model", "m"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("base_url"), "{err}");
        let err = with(&[
            url,
            ("response.llm.model", "m"),
            ("response.llm.timeout_secs", "90"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("half of limits.handler_timeout_secs"), "{err}");
        let err = with(&[("response.llm.temperature", "3")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("temperature"), "{err}");
    }

    #[test]
    fn environment_file_layer_applies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prod.toml");
        std::fs::write(&file, "[log]\nformat = \"json\"\n[query]\nport = 9999\n").unwrap();
        let s = Settings::from_layers(Some(&file), None, &[("query.port".into(), "7777".into())])
            .unwrap();
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.query.port, 7777, "command line beats the file");
    }
}

#[cfg(test)]
mod docs_tests {
    /// docs/configuration.md (generated by scripts/config-docs.py) lists every key of the defaults.
    #[test]
    fn configuration_docs_cover_every_key() {
        let docs = include_str!("../../docs/configuration.md");
        let mut section = "";
        for line in super::DEFAULTS.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s;
            } else if let Some((key, _)) = line.split_once('=')
                && !line.starts_with('#')
            {
                let full = format!("`{section}.{}`", key.trim());
                assert!(
                    docs.contains(&full),
                    "docs/configuration.md lacks {full}; run scripts/config-docs.py"
                );
            }
        }
    }
}
