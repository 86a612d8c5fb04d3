//! Cost of authentication on the warm path: what every request pays before its handler runs.
//!
//! `cargo bench --bench auth` verifies a user's access JWT (HMAC, claims, revocation, user state,
//! grants) and resolves an API key (hash, key, owner, grants) many times over a SQLite-backed
//! security service whose caches are warm, and prints the mean and the 99th percentile per call.
//! The target is under 50 µs. Under `cargo test` it runs a short smoke pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use doc_rag::config::Settings;
use doc_rag::security::audit::AuditCtx;
use doc_rag::security::{Credential, NewApiKey, Permission, Role, SecurityService};
use doc_rag::storage::sql::SqlStore;
use secrecy::SecretString;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(label: &str, n: usize, security: &SecurityService, credential: &Credential) {
    // Warm the caches.
    let caller = security
        .authenticate(credential)
        .await
        .expect("credential is valid");
    assert!(caller.can_read("docs"), "{label}: the grant is seen");
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let caller = security.authenticate(credential).await.expect("valid");
        std::hint::black_box(caller.read_scope());
        times.push(t.elapsed());
    }
    let total = started.elapsed();
    times.sort();
    println!(
        "{label:<28} {n:>7} calls  mean {:>6.2} µs  p50 {:>6.2} µs  p99 {:>6.2} µs",
        total.as_secs_f64() * 1e6 / n as f64,
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 200_000 } else { 2_000 };
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings::for_tests(
        dir.path(),
        dir.path(),
        &[
            ("security.admin_email".into(), "admin@bench.local".into()),
            (
                "security.admin_password".into(),
                "bench-admin-password".into(),
            ),
        ],
    )
    .expect("settings");
    let store = SqlStore::connect(&settings.database, dir.path())
        .await
        .expect("database");
    let security = SecurityService::start(settings.security.clone(), Arc::new(store))
        .await
        .expect("security");
    let ctx = AuditCtx::default();
    let viewer = security
        .create_user(
            &ctx,
            "viewer@bench.local",
            SecretString::from("viewer-password"),
            Role::Viewer,
        )
        .await
        .expect("user");
    security
        .set_grant(
            &ctx,
            "docs",
            &format!("user:{}", viewer.id),
            Permission::Read,
        )
        .await
        .expect("grant");
    let pair = security
        .login(
            &ctx,
            "viewer@bench.local",
            SecretString::from("viewer-password"),
        )
        .await
        .expect("login");
    let admin = security
        .login(
            &ctx,
            "admin@bench.local",
            SecretString::from("bench-admin-password"),
        )
        .await
        .expect("admin login");
    let admin_caller = security
        .authenticate(&Credential::Bearer(admin.access_token))
        .await
        .expect("admin");
    let (key, _) = security
        .create_api_key(
            &ctx,
            &admin_caller,
            NewApiKey {
                name: "bench".into(),
                role: Role::Viewer,
                collection: Some("docs".into()),
                expires_at: None,
            },
        )
        .await
        .expect("key");

    println!(
        "warm authentication ({} mode)",
        if full { "bench" } else { "smoke" }
    );
    measure(
        "viewer JWT + grants",
        n,
        &security,
        &Credential::Bearer(pair.access_token),
    )
    .await;
    measure(
        "API key (X-API-Key)",
        n,
        &security,
        &Credential::ApiKey(key),
    )
    .await;
}
