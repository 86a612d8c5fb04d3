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

pub struct TestApp {
    pub ports: BTreeMap<String, u16>,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub db: Option<TestDatabase>,
    pub settings: Settings,
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
        let mut pairs: Vec<(String, String)> =
            vec![("ingest.poll_interval_ms".into(), "200".into())];
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
        let settings = Settings::for_tests(dir.path(), &model_dir(), &pairs).unwrap();
        doc_rag::telemetry::init_logging(&settings.log);
        let app = doc_rag::Application::build(settings.clone())
            .await
            .expect("application builds");
        let ports = app
            .ports()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let task = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        TestApp {
            ports,
            client,
            dir,
            db,
            settings,
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
