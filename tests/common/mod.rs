//! Test harness: builds the real application on port 0 with a temporary data dir, on SQLite or on
//! a fresh PostgreSQL database of its own, and drives it over HTTP.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use doc_rag::config::Settings;
use serde_json::{Value, json};

pub fn model_dir() -> PathBuf {
    std::env::var_os("DOCRAG__EMBEDDER__MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")))
}

pub fn shared_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"))
}

pub fn postgres_admin_url() -> String {
    std::env::var("DOCRAG_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL database created for one test and dropped afterwards.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        let admin = postgres_admin_url();
        let name = format!("docrag_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(&admin)
            .expect("PostgreSQL answers (scripts/ensure-services.sh)");
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub fn drop_now(&self) {
        if let Ok(mut conn) = PgConnection::establish(&postgres_admin_url()) {
            let _ = conn.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        self.drop_now();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The bootstrap admin every test app is created with.
pub const ADMIN_EMAIL: &str = "admin@test.local";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// A client that sends `token` as `Authorization: Bearer` on every request.
pub fn authed_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Logs in at `api_base` (http://host:port) and returns the token pair as JSON.
/// Sends `method url` with an optional JSON body; the status and the JSON answer (`null` if none).
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client.request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn login(api_base: &str, email: &str, password: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{api_base}/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub struct TestApp {
    pub ports: BTreeMap<String, u16>,
    /// Authenticated as the bootstrap admin (an admin API key).
    pub client: reqwest::Client,
    /// No credentials at all.
    pub anon: reqwest::Client,
    /// The admin's API key, sent by `client`.
    pub admin_key: String,
    pub dir: tempfile::TempDir,
    pub db: Option<TestDatabase>,
    pub settings: Settings,
    /// The running application's modules, for tests that reach past the HTTP API (to damage a
    /// store on purpose, say).
    pub state: std::sync::Arc<doc_rag::AppState>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Backend::Sqlite, &[]).await
    }

    pub async fn spawn_with(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create()),
        };
        Self::spawn_in(dir, db, extra).await
    }

    /// The settings [`TestApp::spawn_in`] runs with: for opening the same stores directly.
    pub fn settings_for(
        dir: &std::path::Path,
        db: Option<&TestDatabase>,
        extra: &[(&str, &str)],
    ) -> Settings {
        let mut pairs: Vec<(String, String)> = vec![
            ("ingest.poll_interval_ms".into(), "200".into()),
            ("security.admin_email".into(), ADMIN_EMAIL.into()),
            ("security.admin_password".into(), ADMIN_PASSWORD.into()),
            ("security.sync_interval_ms".into(), "200".into()),
            // The test binary is not doc-rag: parse workers run the real binary.
            (
                "parser.command".into(),
                env!("CARGO_BIN_EXE_doc-rag").into(),
            ),
        ];
        // Request logs of thousands of uploads would drown the test output; DOCRAG_TEST_LOG=info shows them.
        pairs.push((
            "log.level".into(),
            std::env::var("DOCRAG_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ));
        if let Some(db) = &db {
            pairs.push(("database.url".into(), db.url.clone()));
        }
        for (k, v) in extra {
            pairs.push((k.to_string(), v.to_string()));
        }
        Settings::for_tests(dir, &model_dir(), &pairs).unwrap()
    }

    /// An app on stores prepared by the test (a restored backup, say): data in `dir`, and the
    /// metadata in `db` when given.
    pub async fn spawn_in(
        dir: tempfile::TempDir,
        db: Option<TestDatabase>,
        extra: &[(&str, &str)],
    ) -> Self {
        let settings = Self::settings_for(dir.path(), db.as_ref(), extra);
        doc_rag::telemetry::init_logging(&settings);
        let app = doc_rag::Application::build(settings.clone())
            .await
            .expect("application builds");
        let ports: BTreeMap<String, u16> = app
            .ports()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let state = app.state();
        let task = tokio::spawn(app.run_until_stopped());
        let anon = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let api_base = format!("http://127.0.0.1:{}", ports["api"]);
        let (status, tokens) = login(&api_base, ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(status, 200, "the bootstrap admin logs in: {tokens}");
        let jwt = tokens["access_token"].as_str().unwrap().to_string();
        let r = authed_client(&jwt)
            .post(format!("{api_base}/v1/api-keys"))
            .json(&json!({"name": "test harness", "role": "admin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let admin_key = r.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        TestApp {
            ports,
            client: authed_client(&admin_key),
            anon,
            admin_key,
            dir,
            db,
            settings,
            state,
            task,
        }
    }

    pub fn url(&self, module: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.ports[module], path)
    }

    pub fn api(&self, path: &str) -> String {
        self.url("api", path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.api(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The API port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("api", "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, url: &str) -> (u16, Value) {
        let r = self.client.get(url).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a text document and waits until it is indexed; returns the accepted body.
    pub async fn ingest_text(&self, title: &str, text: &str, extra: Value) -> Value {
        let mut body = json!({"title": title, "text": text});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, accepted) = self.post_json("/v1/documents?wait=true", &body).await;
        assert_eq!(status, 200, "ingest {title}: {accepted}");
        assert_eq!(accepted["status"], "done", "{accepted}");
        accepted
    }

    pub async fn wait_job(&self, job_id: &str) -> Value {
        for _ in 0..1200 {
            let (_, job) = self
                .get_json(&self.api(&format!("/v1/jobs/{job_id}")))
                .await;
            if job["status"] == "done" || job["status"] == "failed" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {job_id} did not finish");
    }

    pub async fn stats(&self) -> Value {
        let (status, stats) = self.get_json(&self.url("storage", "/v1/stats")).await;
        assert_eq!(status, 200);
        stats
    }

    /// `POST /v1/admin/verify` on the storage port.
    pub async fn verify(&self, repair: bool) -> Value {
        let r = self
            .client
            .post(self.url("storage", &format!("/v1/admin/verify?repair={repair}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }

    /// Uploads raw bytes as a file (multipart) without waiting; returns (status, body).
    pub async fn upload_file(&self, name: &str, mime: &str, bytes: Vec<u8>) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_string())
            .mime_str(mime)
            .unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        let r = self
            .client
            .post(self.api("/v1/documents"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn search(&self, query: &str, mode: &str, top_k: usize) -> Value {
        let (status, body) = self
            .post_json(
                "/v1/search",
                &json!({"query": query, "mode": mode, "top_k": top_k}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The runbook chunk that answers "How do I check Redis memory usage?".
pub fn runbook() -> String {
    std::fs::read_to_string(shared_dir().join("seed/runbook.md"))
        .expect("../shared/seed/runbook.md")
}

/// `doc-rag serve` as a child process on port 0 everywhere (JSON logs), with every stdout line
/// kept for inspection.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub ports: std::collections::HashMap<String, u16>,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// `sets`: extra `--set key=value`; `envs`: extra environment variables.
    pub fn start(data_dir: &std::path::Path, sets: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_with_args(data_dir, &[], sets, envs)
    }

    /// As [`ServerProcess::start`], with more arguments for `serve` (`--config FILE`, say).
    pub fn start_with_args(
        data_dir: &std::path::Path,
        args: &[&str],
        sets: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_doc-rag"));
        cmd.arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-format", "json"])
            .args(["--set", "api.bind=127.0.0.1"])
            .args(["--set", &format!("security.admin_email={ADMIN_EMAIL}")])
            .args([
                "--set",
                &format!("security.admin_password={ADMIN_PASSWORD}"),
            ])
            .args([
                "--set",
                &format!("embedder.model_dir={}", model_dir().display()),
            ]);
        for m in [
            "api", "security", "query", "response", "embedder", "storage",
        ] {
            cmd.args(["--set", &format!("{m}.port=0")]);
        }
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd.env_remove("JWT_SECRET");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send((
                        v["module"].as_str().unwrap_or("").to_string(),
                        v["port"].as_u64().unwrap_or(0) as u16,
                    ));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut ports = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while ports.len() < 6 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (m, p) = rx.recv_timeout(left).expect("server reports its six ports");
            ports.insert(m, p);
        }
        ServerProcess { child, ports, log }
    }

    pub fn url(&self, module: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[module])
    }

    /// A client logged in as the bootstrap admin.
    pub async fn admin_client(&self) -> reqwest::Client {
        let (status, tokens) = login(&self.url("api"), ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(status, 200, "{tokens}");
        authed_client(tokens["access_token"].as_str().unwrap())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private `redis-server` on `port` (nothing persisted), for tests that stop and restart Redis.
pub struct RedisServer(std::process::Child);

impl RedisServer {
    /// A Redis server on `port` (a restart on a port a test already uses).
    pub fn start(port: u16) -> Self {
        Self::try_start(port)
            .unwrap_or_else(|| panic!("redis-server could not listen on port {port}"))
    }

    /// A Redis server on a free port, and the port. Tests run in parallel and free ports are
    /// reused, so another test's server may take the port between the probe and the start;
    /// then the start is retried on another one.
    pub fn start_on_free_port() -> (Self, u16) {
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start(port) {
                return (server, port);
            }
        }
        panic!("redis-server could not start on five free ports");
    }

    /// `None` when our redis-server exits instead of serving: the port is taken, possibly by
    /// another test's server, which must not be mistaken for ours.
    fn try_start(port: u16) -> Option<Self> {
        let mut child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (rust-svc machine)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A server that cannot bind exits at once; give it the time to.
        std::thread::sleep(Duration::from_millis(100));
        match child.try_wait() {
            Ok(None) => Some(Self(child)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn redis_url() -> String {
    std::env::var("DOCRAG_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `secantusd-py` (SecantusDB, a MongoDB-wire-compatible server from PyPI), which
/// `scripts/ensure-services.sh` installs into a venv; `DOCRAG_TEST_SECANTUSD` overrides.
pub fn secantusd() -> PathBuf {
    std::env::var_os("DOCRAG_TEST_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/doc-rag-venv/bin/secantusd-py")
        })
}

/// A MongoDB-compatible server of one test's own, on `port`; in memory, or in `storage` (a
/// directory) so its data outlives a kill and restart.
pub struct MongoServer {
    child: std::process::Child,
    pub port: u16,
}

impl MongoServer {
    pub fn start(port: u16, storage: Option<&std::path::Path>) -> Self {
        let bin = secantusd();
        assert!(
            bin.exists(),
            "{} is missing: `make check-services` installs SecantusDB (PyPI) into a venv",
            bin.display()
        );
        let storage = storage.map_or(":memory:".to_string(), |p| p.display().to_string());
        let child = std::process::Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", &storage, "--log-level", "WARNING"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("secantusd-py starts");
        // Owned at once, so a failed start below still kills and reaps it (Drop).
        let server = Self { child, port };
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("secantusd-py did not listen on port {port} within 20 s");
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// SIGKILL, as a crash would; the port is free again when this returns.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `(key, value)` pairs that put a test app's documents in MongoDB at `url`, in a database of
/// its own.
pub fn mongo_settings(url: &str) -> Vec<(String, String)> {
    vec![
        ("documents.mongodb_url".into(), url.into()),
        (
            "documents.mongodb_database".into(),
            format!("docrag_{}", uuid::Uuid::new_v4().simple()),
        ),
        ("documents.timeout_ms".into(), "2000".into()),
    ]
}

/// `doc-rag eval ARGS` parsed as the binary parses it, for `eval::run` in-process.
pub fn eval_args(args: &[&str]) -> doc_rag::cli::eval::EvalArgs {
    use clap::Parser;
    let mut argv = vec!["doc-rag", "eval"];
    argv.extend_from_slice(args);
    match doc_rag::cli::Cli::try_parse_from(argv).unwrap().command {
        doc_rag::cli::Command::Eval(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}
