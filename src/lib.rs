//! doc-rag: a document-RAG service in one process.
//!
//! Six modules — api (8080), security (8087), query (8084), response (8085), embedder (8082) and
//! storage (8083) — each serve their own HTTP port and call each other in-process through traits
//! and channels; webhooks deliver job and document events from the database (admin API on 8080). [`Application::build`] wires them once around a shared [`AppState`]; `main` and
//! the tests both start the service through it.

pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod embedder;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod query;
pub mod response;
pub mod retry;
pub mod security;
pub mod storage;
pub mod telemetry;
pub mod webhooks;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use anyhow::Context;
use tokio::sync::watch;

use crate::api::model::SearchRequest;
use crate::config::Settings;
use crate::embedder::{Bm25Encoder, Embedder};
use crate::http::Readiness;
use crate::ingest::{IngestService, Ingestor};
use crate::query::{QueryError, QueryService, SearchParams, Searcher, validate_params};
use crate::response::history::History;
use crate::response::{Responder, ResponseService};
use crate::security::SecurityService;
use crate::storage::Storage;
use crate::storage::cache::MemoryCache;
use crate::storage::cache::redis::RedisCache;
use crate::storage::mongo::MongoDocumentStore;
use crate::storage::redis::RedisClient;
use crate::storage::sql::SqlStore;
use crate::storage::vector::edge::EdgeVectorIndex;
use crate::storage::vector::server::QdrantVectorIndex;
use crate::webhooks::WebhookService;
use secrecy::ExposeSecret;

/// The shared core every module server gets: settings and a handle to each module.
pub struct AppState {
    pub settings: Settings,
    pub storage: Storage,
    pub embedder: Arc<dyn Embedder>,
    pub bm25: Arc<Bm25Encoder>,
    pub ingest: Arc<dyn Ingestor>,
    pub search: Arc<dyn Searcher>,
    pub response: Arc<dyn Responder>,
    /// Conversations, answer records and feedback (the response module's).
    pub history: Arc<History>,
    pub security: Arc<SecurityService>,
    pub webhooks: Arc<WebhookService>,
}

impl AppState {
    pub fn query_params(&self, req: SearchRequest) -> Result<SearchParams, QueryError> {
        let s = &self.settings.query;
        validate_params(
            s,
            req.query,
            req.top_k,
            s.default_top_k,
            req.mode,
            req.collection,
            req.filter,
        )
    }
}

/// Opens every store as configured (creating the data dir) and runs migrations.
pub async fn open_storage(settings: &Settings) -> anyhow::Result<Storage> {
    let data_dir = &settings.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let sql = Arc::new(connect_database(settings).await?);
    let dim = settings.embedder.dimension;
    // Server-backed stores may start after doc-rag (containers start in any order).
    let startup_wait = Duration::from_secs(settings.database.startup_wait_secs);
    let vectors: Arc<dyn storage::VectorIndex> = if settings.vectors.qdrant_url.is_empty() {
        let vector_dir = data_dir.join("vectors");
        Arc::new(
            tokio::task::spawn_blocking(move || EdgeVectorIndex::open(&vector_dir, dim))
                .await?
                .context("vector index")?,
        )
    } else {
        Arc::new(
            QdrantVectorIndex::connect(&settings.vectors, dim, startup_wait)
                .await
                .context("vector index (Qdrant server)")?,
        )
    };
    let documents: Arc<dyn storage::DocumentStore> =
        if settings.documents.mongodb_url.expose_secret().is_empty() {
            sql.clone()
        } else {
            Arc::new(
                MongoDocumentStore::connect(&settings.documents, startup_wait)
                    .await
                    .context("document store (MongoDB)")?,
            )
        };
    let ttl = Duration::from_secs(settings.cache.ttl_secs);
    let redis = match settings.cache.redis_url.expose_secret() {
        "" => None,
        url => Some(Arc::new(
            RedisClient::new(
                url,
                settings.cache.redis_pool_size,
                Duration::from_millis(settings.cache.redis_timeout_ms),
            )
            .context("cache")?,
        )),
    };
    let cache: Arc<dyn storage::Cache> = match &redis {
        // With the vectors on a shared server other replicas may change what a cached result
        // shows (a deleted document's text, say), and an in-process cache would not hear of it.
        None if !settings.vectors.qdrant_url.is_empty() => {
            tracing::warn!(
                module = "storage",
                "vectors.qdrant_url is set but cache.redis_url is not: result caching is off, \
                 since replicas could not invalidate each other's in-process caches"
            );
            Arc::new(MemoryCache::new(0, ttl))
        }
        None => Arc::new(MemoryCache::new(settings.cache.max_bytes, ttl)),
        Some(redis) => Arc::new(
            RedisCache::new(Arc::clone(redis), ttl).with_prefix(&settings.cache.redis_prefix),
        ),
    };
    Ok(Storage {
        metadata: sql.clone(),
        answers: sql.clone(),
        security: sql.clone(),
        webhooks: sql,
        documents,
        vectors,
        cache,
        redis,
    })
}

/// Connects to the database, waiting for a PostgreSQL server that is not up yet (containers start
/// in any order) for up to `database.startup_wait_secs`, with a log line per attempt, instead of
/// exiting and crash-looping. SQLite and configuration errors fail at once.
pub(crate) async fn connect_database(settings: &Settings) -> anyhow::Result<SqlStore> {
    let server = !settings.database.url.expose_secret().is_empty();
    storage::breaker::wait_at_startup(
        "the database",
        Duration::from_secs(settings.database.startup_wait_secs),
        |e| server && matches!(e, storage::StorageError::Pool(_)),
        || SqlStore::connect(&settings.database, &settings.storage.data_dir),
    )
    .await
    .context("database")
}

pub struct Application {
    servers: Vec<(&'static str, Server)>,
    ports: BTreeMap<&'static str, u16>,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Builds the whole service: stores, model, modules, workers and the six bound listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Installed before anything is counted, so nothing before the first scrape is lost.
        telemetry::metrics_handle();
        let embedder = embedder::load(&settings.embedder)
            .await
            .context("embedder")?;
        Self::build_with(settings, embedder).await
    }

    /// [`Application::build`] around an embedder the caller loaded: the scaling benchmark wraps
    /// the model to replay its vectors for duplicated documents.
    pub async fn build_with(
        settings: Settings,
        embedder: Arc<dyn Embedder>,
    ) -> anyhow::Result<Self> {
        telemetry::metrics_handle();
        telemetry::register_event_counters();
        telemetry::set_slow_request_ms(settings.log.slow_request_ms);
        let storage = open_storage(&settings).await?;
        let limiter: Arc<dyn security::limits::RateLimiter> = match &storage.redis {
            None => Arc::new(security::limits::GovernorLimiter::new(&settings.security)),
            Some(redis) => Arc::new(security::redis_limits::RedisLimiter::new(
                Arc::clone(redis),
                &settings.cache.redis_prefix,
                &settings.security,
            )),
        };
        let security = SecurityService::start_with(
            settings.security.clone(),
            storage.security.clone(),
            limiter,
        )
        .await
        .context("security")?;
        let bm25 = Arc::new(Bm25Encoder::new(&settings.query).map_err(anyhow::Error::msg)?);
        let ingest = Arc::new(IngestService::new(
            storage.clone(),
            embedder.clone(),
            bm25.clone(),
            settings.ingest.clone(),
            settings.parser.clone(),
            settings.limits.clone(),
        )?);
        ingest.recover().await.context("requeue unfinished jobs")?;
        let search: Arc<dyn Searcher> = Arc::new(QueryService::new(
            storage.clone(),
            embedder.clone(),
            bm25.clone(),
            settings.query.clone(),
            settings.limits.clone(),
        ));
        let history = Arc::new(History::new(
            storage.answers.clone(),
            settings.response.history_turns,
        ));
        history.spawn_pruning(Duration::from_secs(
            settings.response.answers_retention_days * 86_400,
        ));
        let response = Arc::new(ResponseService::new(
            search.clone(),
            bm25.clone(),
            settings.response.clone(),
            settings.query.clone(),
            history.clone(),
        )?);
        let webhooks = Arc::new(
            WebhookService::new(storage.webhooks.clone(), settings.webhooks.clone())
                .context("webhooks")?,
        );
        let state = Arc::new(AppState {
            settings: settings.clone(),
            storage: storage.clone(),
            embedder,
            bm25,
            ingest: ingest.clone(),
            search,
            response,
            history,
            security: security.clone(),
            webhooks: webhooks.clone(),
        });

        let modules: [(&'static str, Readiness, http::Routes); 6] = [
            ("api", api::readiness, api::routes),
            ("security", security::readiness, security::routes),
            ("query", query::http::readiness, query::http::routes),
            (
                "response",
                response::http::readiness,
                response::http::routes,
            ),
            (
                "embedder",
                embedder::http::readiness,
                embedder::http::routes,
            ),
            ("storage", storage::http::readiness, storage::http::routes),
        ];
        let addrs: BTreeMap<_, _> = settings.servers().into_iter().collect();
        let mut servers = Vec::new();
        let mut ports = BTreeMap::new();
        for (name, readiness, routes) in modules {
            let addr = addrs[name].addr()?;
            let listener = TcpListener::bind(addr)
                .with_context(|| format!("{name}: cannot listen on {addr}"))?;
            let workers = if name == "api" {
                settings.api.workers
            } else {
                1
            };
            let (server, port) =
                http::serve_module(name, listener, state.clone(), readiness, routes, workers)?;
            tracing::info!(module = name, %addr, port, "listening");
            servers.push((name, server));
            ports.insert(name, port);
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut background = ingest.spawn_workers(shutdown_rx.clone());
        background.push(ingest.spawn_sweeper(shutdown_rx.clone()));
        background.push(security.spawn_sync(shutdown_rx.clone()));
        background.push(webhooks.spawn_worker(shutdown_rx.clone()));
        background.push(tokio::spawn(startup_verify(storage.clone())));
        telemetry::gauges::record_build_info();
        background.push(tokio::spawn(telemetry::gauges::sample(
            storage.clone(),
            settings.storage.data_dir.clone(),
            shutdown_rx.clone(),
        )));
        backup::service::record_existing(&settings);
        if let Some(schedule) = settings.backup.parsed_schedule()? {
            background.push(backup::service::spawn_schedule(
                storage.clone(),
                settings.clone(),
                schedule,
                shutdown_rx.clone(),
            ));
        }
        background.push(tokio::spawn(optimize_loop(storage.clone(), shutdown_rx)));
        Ok(Self {
            servers,
            ports,
            state,
            shutdown,
            background,
        })
    }

    /// The port a module bound (useful with port 0).
    pub fn port(&self, module: &str) -> u16 {
        self.ports.get(module).copied().unwrap_or(0)
    }

    pub fn ports(&self) -> &BTreeMap<&'static str, u16> {
        &self.ports
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until a server stops or the process is asked to stop (SIGINT/SIGTERM), then stops
    /// the rest gracefully and lets the workers finish their current step.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handles: Vec<ServerHandle> = self.servers.iter().map(|(_, s)| s.handle()).collect();
        let running: Vec<_> = self
            .servers
            .into_iter()
            .map(|(name, server)| Box::pin(async move { (name, server.await) }))
            .collect();
        let mut all = futures::future::select_all(running);
        let stopped = tokio::select! {
            ((name, result), _, rest) = &mut all => Some(((name, result), rest)),
            _ = shutdown_signal() => None,
        };
        let (first, remaining) = match stopped {
            Some((first, rest)) => (Some(first), rest),
            None => (None, all.into_inner()),
        };
        match &first {
            Some((name, Ok(()))) => tracing::warn!(module = name, "server stopped; shutting down"),
            Some((name, Err(e))) => {
                tracing::error!(module = name, error = %e, "server failed; shutting down")
            }
            None => tracing::info!("shutdown requested"),
        }
        let _ = self.shutdown.send(true);
        // The servers act on stop commands only while their futures are polled.
        tokio::join!(
            http::stop_all(&handles),
            futures::future::join_all(remaining)
        );
        for task in self.background {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        tracing::info!("stopped");
        match first {
            Some((name, Err(e))) => Err(anyhow::anyhow!("{name} server failed: {e}")),
            _ => Ok(()),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Checks that the stores agree, once, after start-up, and logs the result (check mode: repairs
/// are an operator's decision, `doc-rag verify --repair` or `POST /v1/admin/verify?repair=true`).
async fn startup_verify(storage: Storage) {
    match storage::verify::verify(&storage, false).await {
        Ok(r) if r.ok => tracing::info!(
            module = "storage",
            documents = r.checked.documents,
            vectors = r.checked.vectors,
            "verify: the stores agree"
        ),
        Ok(r) => {
            for p in &r.problems {
                tracing::warn!(module = "storage", kind = %p.kind, id = %p.id, detail = %p.detail, "verify: problem");
            }
            tracing::warn!(
                module = "storage",
                problems = r.problems.len(),
                "verify: the stores disagree; run `doc-rag verify --repair`"
            );
        }
        Err(e) => tracing::warn!(module = "storage", error = %e, "verify could not run"),
    }
}

/// Lets the vector index merge segments and build its HNSW graph in the background. Optimising
/// holds up index writes while it runs, so it waits until ingestion is idle.
async fn optimize_loop(storage: Storage, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown.changed() => return,
        }
        match storage.metadata.stats().await {
            Ok(s) if s.jobs.queued + s.jobs.running == 0 => {}
            _ => continue,
        }
        if let Err(e) = storage.vectors.optimize().await {
            tracing::warn!(module = "storage", error = %e, "vector index optimisation failed");
        }
        if let Err(e) = storage.metadata.compact().await {
            tracing::warn!(module = "storage", error = %e, "database compaction failed");
        }
    }
}
