//! Security, end to end over HTTP on the real service: deny by default on every port, sessions and
//! tokens, roles and per-collection access (listing, search, answers, jobs, cache), API keys, rate
//! limits, lockout, IP blocks and the audit log. Session and access tests run on SQLite and on
//! PostgreSQL.

mod common;

use std::time::Duration;

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, TestApp, authed_client, login, send};
use reqwest::Method;
use serde_json::{Value, json};

/// A logged-in user and an authenticated client.
struct Session {
    id: String,
    client: reqwest::Client,
    access: String,
    refresh: String,
}

async fn login_session(app: &TestApp, email: &str, password: &str) -> Session {
    let (status, t) = login(&app.api(""), email, password).await;
    assert_eq!(status, 200, "{email}: {t}");
    Session {
        id: t["user"]["id"].as_str().unwrap().to_string(),
        client: authed_client(t["access_token"].as_str().unwrap()),
        access: t["access_token"].as_str().unwrap().to_string(),
        refresh: t["refresh_token"].as_str().unwrap().to_string(),
    }
}

/// Creates a user with `role` and collection grants, and logs them in.
async fn user(app: &TestApp, email: &str, role: &str, grants: &[(&str, &str)]) -> Session {
    let (status, u) = send(
        &app.client,
        Method::POST,
        &app.url("security", "/v1/admin/users"),
        Some(json!({"email": email, "password": "a-good-password", "role": role})),
    )
    .await;
    assert_eq!(status, 201, "{u}");
    let id = u["id"].as_str().unwrap();
    for (collection, access) in grants {
        let (status, g) = send(
            &app.client,
            Method::PUT,
            &app.api(&format!("/v1/collections/{collection}/grants/user:{id}")),
            Some(json!({"access": access})),
        )
        .await;
        assert_eq!(status, 200, "{g}");
    }
    login_session(app, email, "a-good-password").await
}

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = send(
        &app.client,
        Method::GET,
        &app.url("security", &format!("/v1/admin/audit?{query}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

fn has_event(events: &[Value], event: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == event && e["outcome"] == outcome)
}

/// Every route that is not on the allow-list refuses a caller without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_get_401_on_every_route_of_every_port() {
    // The API port on a non-loopback address, so /metrics there needs the scrape token too.
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("api.bind", "0.0.0.0"),
            ("security.metrics_token", "scrape-secret"),
            ("security.service_token", "service-secret"),
        ],
    )
    .await;
    let (status, spec) = app.get_json(&app.api("/openapi.json")).await;
    assert_eq!(status, 200);
    let public = [
        ("GET", "/health"),
        ("GET", "/ready"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/refresh"),
    ];
    let mut walked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let upper = method.to_uppercase();
            let concrete = path
                .replace("{id}", "7c9e6679-7425-40de-944b-e07fc1f97e0b")
                .replace("{name}", "default")
                .replace("{principal}", "user:x");
            let (status, body) = send(
                &app.anon,
                Method::from_bytes(upper.as_bytes()).unwrap(),
                &app.api(&concrete),
                None,
            )
            .await;
            if public.contains(&(upper.as_str(), path.as_str())) {
                assert_ne!(status, 401, "{upper} {path} is public");
            } else {
                assert_eq!(status, 401, "anonymous {upper} {path}: {body}");
                assert_eq!(body["code"], "unauthorized", "{upper} {path}");
            }
            walked += 1;
        }
    }
    assert!(
        walked >= 24
            && [
                "/v1/documents",
                "/v1/auth/logout",
                "/v1/api-keys",
                "/v1/collections/{name}/grants/{principal}"
            ]
            .iter()
            .all(|p| spec["paths"].get(p).is_some()),
        "the walk covered the API ({walked} operations)"
    );

    // Every internal route, and paths that match no route at all.
    let internal = [
        ("security", "GET", "/v1/admin/users"),
        ("security", "POST", "/v1/admin/users"),
        ("security", "PATCH", "/v1/admin/users/x"),
        ("security", "DELETE", "/v1/admin/users/x"),
        ("security", "POST", "/v1/admin/keys/rotate"),
        ("security", "POST", "/v1/admin/sessions/revoke-all"),
        ("security", "GET", "/v1/admin/ip-blocks"),
        ("security", "POST", "/v1/admin/ip-blocks"),
        ("security", "DELETE", "/v1/admin/ip-blocks/x"),
        ("security", "GET", "/v1/admin/audit"),
        ("security", "GET", "/v1/admin/rate-limits"),
        ("security", "PUT", "/v1/admin/rate-limits"),
        ("security", "GET", "/v1/auth/me"),
        ("security", "POST", "/v1/api-keys"),
        ("query", "POST", "/v1/search"),
        ("response", "POST", "/v1/generate"),
        ("embedder", "POST", "/v1/embed"),
        ("storage", "GET", "/v1/stats"),
        ("api", "GET", "/no/such/route"),
        ("storage", "GET", "/no/such/route"),
    ];
    for (module, method, path) in internal {
        let (status, body) = send(
            &app.anon,
            Method::from_bytes(method.as_bytes()).unwrap(),
            &app.url(module, path),
            None,
        )
        .await;
        assert_eq!(status, 401, "anonymous {method} {module}{path}: {body}");
    }

    // /metrics: open on loopback-bound module ports, scrape token or admin on the public one.
    let (status, _) = send(
        &app.anon,
        Method::GET,
        &app.url("storage", "/metrics"),
        None,
    )
    .await;
    assert_eq!(status, 200, "loopback module port");
    let (status, _) = send(&app.anon, Method::GET, &app.api("/metrics"), None).await;
    assert_eq!(status, 401, "non-loopback port without token");
    let (status, _) = send(
        &authed_client("scrape-secret"),
        Method::GET,
        &app.api("/metrics"),
        None,
    )
    .await;
    assert_eq!(status, 200, "scrape token");
    let (status, _) = send(
        &authed_client("wrong-secret"),
        Method::GET,
        &app.api("/metrics"),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Anonymous readiness says which dependencies fail and nothing else.
    for module in [
        "api", "security", "query", "response", "embedder", "storage",
    ] {
        let (status, body) = send(&app.anon, Method::GET, &app.url(module, "/ready"), None).await;
        assert_eq!(status, 200, "{module}");
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["failing", "status"], "{module}: {body}");
    }

    // Internal ports: admin or the service token; the service token opens nothing else.
    let viewer = user(&app, "viewer@x.org", "viewer", &[]).await;
    let (status, body) = send(
        &viewer.client,
        Method::GET,
        &app.url("storage", "/v1/stats"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let service = authed_client("service-secret");
    let (status, _) = send(
        &service,
        Method::GET,
        &app.url("storage", "/v1/stats"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        &service,
        Method::POST,
        &app.url("embedder", "/v1/embed"),
        Some(json!({"texts": ["x"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(&service, Method::GET, &app.api("/v1/documents"), None).await;
    assert_eq!(status, 401, "the service token is not a user credential");
    let (status, _) = send(
        &app.client,
        Method::GET,
        &app.url("storage", "/v1/stats"),
        None,
    )
    .await;
    assert_eq!(status, 200, "admin");

    // Security headers.
    let r = app
        .anon
        .post(app.api("/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = app.anon.get(app.api("/v1/documents")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
}

async fn sessions_refresh_reuse_logout_and_password(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[]).await;
    let alice = user(&app, "alice@x.org", "editor", &[]).await;

    // Wrong password and unknown user look the same; a disabled user cannot log in.
    let (s, b) = login(&app.api(""), "alice@x.org", "wrong-password").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (401, Some("invalid_credentials")),
        "{b}"
    );
    let (s, b) = login(&app.api(""), "nobody@x.org", "whatever-password").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (401, Some("invalid_credentials")),
        "{b}"
    );

    let (s, me) = send(&alice.client, Method::GET, &app.api("/v1/auth/me"), None).await;
    assert_eq!(s, 200);
    assert_eq!(me["role"], "editor");
    assert_eq!(me["user"]["email"], "alice@x.org");

    // Refresh rotates; the old refresh token is single-use and its reuse revokes the family.
    let (s, second) = send(
        &app.anon,
        Method::POST,
        &app.api("/v1/auth/refresh"),
        Some(json!({"refresh_token": alice.refresh})),
    )
    .await;
    assert_eq!(s, 200, "{second}");
    assert_ne!(second["refresh_token"], alice.refresh.as_str());
    let fresh = authed_client(second["access_token"].as_str().unwrap());
    assert_eq!(
        send(&fresh, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        200
    );
    let (s, b) = send(
        &app.anon,
        Method::POST,
        &app.api("/v1/auth/refresh"),
        Some(json!({"refresh_token": alice.refresh})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (401, Some("token_revoked")),
        "reuse: {b}"
    );
    let (s, b) = send(
        &app.anon,
        Method::POST,
        &app.api("/v1/auth/refresh"),
        Some(json!({"refresh_token": second["refresh_token"]})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (401, Some("token_revoked")),
        "the family is revoked: {b}"
    );
    let (s, b) = send(&fresh, Method::GET, &app.api("/v1/auth/me"), None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (401, Some("token_revoked")),
        "so are its access tokens: {b}"
    );
    let (s, _) = send(
        &app.anon,
        Method::POST,
        &app.api("/v1/auth/refresh"),
        Some(json!({"refresh_token": "made-up"})),
    )
    .await;
    assert_eq!(s, 401);

    // Logout ends the session it belongs to, not others.
    let one = login_session(&app, "alice@x.org", "a-good-password").await;
    let two = login_session(&app, "alice@x.org", "a-good-password").await;
    assert_eq!(
        send(&one.client, Method::POST, &app.api("/v1/auth/logout"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        send(&one.client, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        401
    );
    let (s, _) = send(
        &app.anon,
        Method::POST,
        &app.api("/v1/auth/refresh"),
        Some(json!({"refresh_token": one.refresh})),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(
        send(&two.client, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        200
    );

    // A password change needs the current password and ends every session.
    let (s, _) = send(
        &two.client,
        Method::POST,
        &app.api("/v1/auth/password"),
        Some(json!({"current_password": "nope-nope", "new_password": "another-password"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, b) = send(
        &two.client,
        Method::POST,
        &app.api("/v1/auth/password"),
        Some(json!({"current_password": "a-good-password", "new_password": "short"})),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_request")));
    let (s, _) = send(
        &two.client,
        Method::POST,
        &app.api("/v1/auth/password"),
        Some(json!({"current_password": "a-good-password", "new_password": "another-password"})),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        send(&two.client, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        login(&app.api(""), "alice@x.org", "a-good-password")
            .await
            .0,
        401
    );
    let alice = login_session(&app, "alice@x.org", "another-password").await;

    // Disabling stops the user's tokens at once; enabling lets them log in again.
    let admin_users = app.url("security", &format!("/v1/admin/users/{}", alice.id));
    let (s, u) = send(
        &app.client,
        Method::PATCH,
        &admin_users,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!((s, &u["disabled"]), (200, &json!(true)));
    let (s, b) = send(&alice.client, Method::GET, &app.api("/v1/auth/me"), None).await;
    assert_eq!(s, 401, "{b}");
    let (s, b) = login(&app.api(""), "alice@x.org", "another-password").await;
    assert_eq!((s, b["code"].as_str()), (401, Some("invalid_credentials")));
    send(
        &app.client,
        Method::PATCH,
        &admin_users,
        Some(json!({"disabled": false})),
    )
    .await;
    let alice = login_session(&app, "alice@x.org", "another-password").await;

    // revoke-all ends every session, the admin's included.
    let admin = login_session(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (s, _) = send(
        &admin.client,
        Method::POST,
        &app.url("security", "/v1/admin/sessions/revoke-all"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    for session in [&alice, &admin] {
        assert_eq!(
            send(&session.client, Method::GET, &app.api("/v1/auth/me"), None)
                .await
                .0,
            401
        );
        let (s, _) = send(
            &app.anon,
            Method::POST,
            &app.api("/v1/auth/refresh"),
            Some(json!({"refresh_token": session.refresh})),
        )
        .await;
        assert_eq!(s, 401);
    }
    let after = login_session(&app, "alice@x.org", "another-password").await;
    assert_eq!(
        send(&after.client, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        200,
        "new logins work"
    );

    // The last enabled admin cannot be demoted, disabled or deleted.
    let (s, users) = send(
        &app.client,
        Method::GET,
        &app.url("security", "/v1/admin/users"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let admin_id = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == ADMIN_EMAIL)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = send(
        &app.client,
        Method::PATCH,
        &app.url("security", &format!("/v1/admin/users/{admin_id}")),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(s, 409);
    let (s, _) = send(
        &app.client,
        Method::DELETE,
        &app.url("security", &format!("/v1/admin/users/{admin_id}")),
        None,
    )
    .await;
    assert_eq!(s, 409);

    let events = audit(&app, "limit=1000").await;
    for (event, outcome) in [
        ("login_success", "success"),
        ("login_failure", "failure"),
        ("refresh_reuse", "denied"),
        ("logout", "success"),
        ("password_change", "success"),
        ("password_change", "failure"),
        ("user_disabled", "success"),
        ("user_enabled", "success"),
        ("revoke_all_sessions", "success"),
        ("user_created", "success"),
    ] {
        assert!(
            has_event(&events, event, outcome),
            "audit has {event}/{outcome}"
        );
    }
    let failure = events
        .iter()
        .find(|e| e["event"] == "login_failure")
        .unwrap();
    assert_eq!(failure["ip"], "127.0.0.1");
    assert!(failure["request_id"].is_string());
    assert_eq!(
        audit(&app, &format!("user={}&event=login_success", "alice@x.org"))
            .await
            .len(),
        6,
        "alice's logins, filtered by email"
    );
    assert!(audit(&app, "ip=10.9.9.9").await.is_empty());
    let t0 = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(
        audit(
            &app,
            &format!("since={}", t0.to_rfc3339().replace('+', "%2B"))
        )
        .await
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refresh_reuse_logout_and_password_on_sqlite() {
    sessions_refresh_reuse_logout_and_password(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refresh_reuse_logout_and_password_on_postgres() {
    sessions_refresh_reuse_logout_and_password(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_retired_tampered_and_unsigned_tokens() {
    let app = TestApp::spawn().await;
    let bob = user(&app, "bob@x.org", "viewer", &[]).await;
    let me = app.api("/v1/auth/me");

    // Rotation: tokens of the old key keep working until they expire.
    let (s, r) = send(
        &app.client,
        Method::POST,
        &app.url("security", "/v1/admin/keys/rotate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(send(&bob.client, Method::GET, &me, None).await.0, 200);
    let newer = login_session(&app, "bob@x.org", "a-good-password").await;
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_eq!(kid(&newer.access), r["kid"].as_str().unwrap());
    assert_ne!(kid(&bob.access), kid(&newer.access));

    // --revoke-old: the old key stops at once.
    let (s, _) = send(
        &app.client,
        Method::POST,
        &app.url("security", "/v1/admin/keys/rotate"),
        Some(json!({"revoke_old": true})),
    )
    .await;
    assert_eq!(s, 200);
    for old in [&bob, &newer] {
        let (s, b) = send(&old.client, Method::GET, &me, None).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (401, Some("token_key_retired")),
            "{b}"
        );
    }
    let current = login_session(&app, "bob@x.org", "a-good-password").await;
    assert_eq!(send(&current.client, Method::GET, &me, None).await.0, 200);

    // Tampered payload (role raised to admin), alg none, garbage.
    let parts: Vec<&str> = current.access.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["role"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "kid": kid(&current.access)}).to_string()),
        b64.encode(claims.to_string())
    );
    for token in [
        tampered,
        none,
        "garbage".to_string(),
        format!("{}x", current.access),
    ] {
        let (s, b) = send(&authed_client(&token), Method::GET, &me, None).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (401, Some("invalid_token")),
            "{token}: {b}"
        );
    }
    let events = audit(&app, "event=jwt_rotation").await;
    assert_eq!(events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_expire() {
    let app =
        TestApp::spawn_with(Backend::Sqlite, &[("security.access_token_ttl_secs", "1")]).await;
    let s = user(&app, "eve@x.org", "viewer", &[]).await;
    assert_eq!(
        send(&s.client, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        200
    );
    // One second of life plus the five seconds of clock leeway.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, b) = send(&s.client, Method::GET, &app.api("/v1/auth/me"), None).await;
    assert_eq!(
        (status, b["code"].as_str()),
        (401, Some("token_expired")),
        "{b}"
    );
    let (status, fresh) = send(
        &app.anon,
        Method::POST,
        &app.api("/v1/auth/refresh"),
        Some(json!({"refresh_token": s.refresh})),
    )
    .await;
    assert_eq!(
        status, 200,
        "the refresh token outlives the access token: {fresh}"
    );
}

async fn roles_and_collection_isolation(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[]).await;
    let a = app
        .ingest_text(
            "Alpha handbook",
            "The alpha team deploys the orchid service every Tuesday.",
            json!({"collection": "alpha"}),
        )
        .await;
    let b = app
        .ingest_text(
            "Beta handbook",
            "The beta team deploys the orchid service every Friday.",
            json!({"collection": "beta"}),
        )
        .await;
    let a_id = a["document_id"].as_str().unwrap().to_string();
    let b_id = b["document_id"].as_str().unwrap().to_string();
    let b_job = b["job_id"].as_str().unwrap().to_string();

    let viewer = user(&app, "viewer@x.org", "viewer", &[("alpha", "read")]).await;
    let editor = user(
        &app,
        "editor@x.org",
        "editor",
        &[("alpha", "write"), ("beta", "read")],
    )
    .await;
    let nobody = user(&app, "nobody@x.org", "editor", &[]).await;

    // The admin warms the cache with a search over everything.
    let query = json!({"query": "when does the team deploy the orchid service", "top_k": 10});
    let (s, all) = send(
        &app.client,
        Method::POST,
        &app.api("/v1/search"),
        Some(query.clone()),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(all["results"].as_array().unwrap().len(), 2);

    // The viewer of alpha sees alpha only, everywhere, and never the admin's cached result.
    let (s, hits) = send(
        &viewer.client,
        Method::POST,
        &app.api("/v1/search"),
        Some(query.clone()),
    )
    .await;
    assert_eq!(s, 200);
    let docs: Vec<&str> = hits["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(docs, [a_id.as_str()], "{hits}");
    assert_eq!(
        hits["cached"], false,
        "cache keys include the caller's scope"
    );
    let (_, again) = send(
        &viewer.client,
        Method::POST,
        &app.api("/v1/search"),
        Some(query.clone()),
    )
    .await;
    assert_eq!(again["cached"], true);
    assert_eq!(again["results"], hits["results"]);
    let (s, answer) = send(
        &viewer.client,
        Method::POST,
        &app.api("/v1/query"),
        Some(json!({"query": "when does the team deploy the orchid service"})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        answer["citations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["document_id"] == a_id.as_str()),
        "{answer}"
    );
    assert!(
        !answer["answer"].as_str().unwrap().contains("Friday"),
        "{answer}"
    );
    let (s, _) = send(
        &viewer.client,
        Method::POST,
        &app.api("/v1/search"),
        Some(json!({"query": "orchid", "collection": "beta"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, scoped) = send(
        &viewer.client,
        Method::POST,
        &app.api("/v1/search"),
        Some(json!({"query": "orchid", "collection": "beta"})),
    )
    .await;
    assert!(scoped["results"].as_array().unwrap().is_empty(), "{scoped}");
    let (s, list) = send(&viewer.client, Method::GET, &app.api("/v1/documents"), None).await;
    assert_eq!(s, 200);
    assert_eq!(list["documents"].as_array().unwrap().len(), 1);
    assert_eq!(list["documents"][0]["id"], a_id.as_str());
    let (_, list) = send(
        &viewer.client,
        Method::GET,
        &app.api("/v1/documents?collection=beta"),
        None,
    )
    .await;
    assert!(list["documents"].as_array().unwrap().is_empty());
    assert_eq!(
        send(
            &viewer.client,
            Method::GET,
            &app.api(&format!("/v1/documents/{b_id}")),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        send(
            &viewer.client,
            Method::GET,
            &app.api(&format!("/v1/documents/{a_id}")),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(
            &viewer.client,
            Method::GET,
            &app.api(&format!("/v1/jobs/{b_job}")),
            None
        )
        .await
        .0,
        404
    );
    let (_, cols) = send(
        &viewer.client,
        Method::GET,
        &app.api("/v1/collections"),
        None,
    )
    .await;
    let names: Vec<&str> = cols["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha"]);

    // A caller with no grants sees nothing at all.
    let (_, hits) = send(
        &nobody.client,
        Method::POST,
        &app.api("/v1/search"),
        Some(query.clone()),
    )
    .await;
    assert!(hits["results"].as_array().unwrap().is_empty());
    let (_, list) = send(&nobody.client, Method::GET, &app.api("/v1/documents"), None).await;
    assert!(list["documents"].as_array().unwrap().is_empty());

    // Route classes by role: ingest and delete need write; the viewer may not.
    let doc = json!({"title": "t", "text": "some text", "collection": "alpha"});
    let (s, b) = send(
        &viewer.client,
        Method::POST,
        &app.api("/v1/documents"),
        Some(doc.clone()),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    let (s, _) = send(
        &viewer.client,
        Method::DELETE,
        &app.api(&format!("/v1/documents/{a_id}")),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, b) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/documents?wait=true"),
        Some(doc.clone()),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/documents"),
        Some(json!({"title": "t", "text": "x", "collection": "beta"})),
    )
    .await;
    assert_eq!(s, 403, "read-only grant");
    let (s, _) = send(
        &editor.client,
        Method::DELETE,
        &app.api(&format!("/v1/documents/{b_id}")),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/documents"),
        Some(json!({"title": "t", "text": "x"})),
    )
    .await;
    assert_eq!(s, 403, "no grant on the default collection");
    let (s, _) = send(
        &editor.client,
        Method::DELETE,
        &app.api(&format!(
            "/v1/documents/{}",
            b["document_id"].as_str().unwrap()
        )),
        None,
    )
    .await;
    assert_eq!(s, 200);
    // Admin-only routes.
    for session in [&viewer, &editor] {
        let (s, _) = send(
            &session.client,
            Method::GET,
            &app.url("security", "/v1/admin/users"),
            None,
        )
        .await;
        assert_eq!(s, 403);
        let (s, _) = send(
            &session.client,
            Method::PUT,
            &app.api(&format!("/v1/collections/beta/grants/user:{}", session.id)),
            Some(json!({"access": "write"})),
        )
        .await;
        assert_eq!(s, 403, "nobody grants themselves access");
        let (s, _) = send(
            &session.client,
            Method::POST,
            &app.url("query", "/v1/search"),
            Some(json!({"query": "x"})),
        )
        .await;
        assert_eq!(s, 403, "internal ports");
    }
    // A grant takes effect at once; removing it too.
    let grant = app.api(&format!("/v1/collections/beta/grants/user:{}", viewer.id));
    assert_eq!(
        send(
            &app.client,
            Method::PUT,
            &grant,
            Some(json!({"access": "read"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(
            &viewer.client,
            Method::GET,
            &app.api(&format!("/v1/documents/{b_id}")),
            None
        )
        .await
        .0,
        200
    );
    let (_, grants) = send(
        &app.client,
        Method::GET,
        &app.api("/v1/collections/beta/grants"),
        None,
    )
    .await;
    assert_eq!(grants["grants"].as_array().unwrap().len(), 2, "{grants}");
    assert_eq!(send(&app.client, Method::DELETE, &grant, None).await.0, 204);
    assert_eq!(
        send(
            &viewer.client,
            Method::GET,
            &app.api(&format!("/v1/documents/{b_id}")),
            None
        )
        .await
        .0,
        404
    );

    let events = audit(&app, "event=permission_denied").await;
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .any(|e| e["actor"] == format!("user:{}", viewer.id))
    );
    assert!(has_event(
        &audit(&app, "event=document_deleted").await,
        "document_deleted",
        "success"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_collection_isolation_on_sqlite() {
    roles_and_collection_isolation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_collection_isolation_on_postgres() {
    roles_and_collection_isolation(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_have_role_scope_expiry_and_revocation() {
    let app = TestApp::spawn().await;
    app.ingest_text(
        "Alpha",
        "Alpha notes about lanterns.",
        json!({"collection": "alpha"}),
    )
    .await;
    app.ingest_text(
        "Beta",
        "Beta notes about lanterns.",
        json!({"collection": "beta"}),
    )
    .await;
    let editor = user(&app, "ed@x.org", "editor", &[("alpha", "write")]).await;

    // A key limited to alpha, sent both ways.
    let (s, created) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "ci", "role": "editor", "collection": "alpha"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("drk_"));
    let by_header = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-api-key", key.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    for client in [authed_client(&key), by_header] {
        let (s, hits) = send(
            &client,
            Method::POST,
            &app.api("/v1/search"),
            Some(json!({"query": "lanterns"})),
        )
        .await;
        assert_eq!(s, 200);
        assert!(
            hits["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["collection"] == "alpha"),
            "{hits}"
        );
        let (s, _) = send(
            &client,
            Method::POST,
            &app.api("/v1/documents"),
            Some(json!({"title": "t", "text": "x", "collection": "alpha"})),
        )
        .await;
        assert_eq!(s, 202);
        let (s, _) = send(
            &client,
            Method::POST,
            &app.api("/v1/documents"),
            Some(json!({"title": "t", "text": "x", "collection": "beta"})),
        )
        .await;
        assert_eq!(s, 403);
    }
    // Never more than the creator: no admin keys from an editor, no keys for collections they cannot write.
    let (s, _) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "x", "role": "admin"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "x", "role": "editor", "collection": "beta"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = send(
        &authed_client(&key),
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(s, 403, "keys do not mint keys");
    // Listing shows no secret; only hashes are stored.
    let (_, list) = send(&editor.client, Method::GET, &app.api("/v1/api-keys"), None).await;
    assert_eq!(list["api_keys"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&key));

    // Revocation stops the key at once.
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        send(
            &editor.client,
            Method::DELETE,
            &app.api(&format!("/v1/api-keys/{id}")),
            None
        )
        .await
        .0,
        204
    );
    let (s, b) = send(
        &authed_client(&key),
        Method::POST,
        &app.api("/v1/search"),
        Some(json!({"query": "lanterns"})),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("token_revoked")));

    // Expiry (keys are minted by users, not by other keys).
    let admin = login_session(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (s, short) = send(
        &admin.client,
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "short", "role": "viewer", "expires_at": soon})),
    )
    .await;
    assert_eq!(s, 201, "{short}");
    let short_key = short["key"].as_str().unwrap();
    assert_eq!(
        send(
            &authed_client(short_key),
            Method::GET,
            &app.api("/v1/auth/me"),
            None
        )
        .await
        .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (s, b) = send(
        &authed_client(short_key),
        Method::GET,
        &app.api("/v1/auth/me"),
        None,
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("token_expired")));
    let (s, _) = send(
        &admin.client,
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "past", "expires_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(s, 400);

    // A key dies with its owner's account.
    let (s, k2) = send(
        &editor.client,
        Method::POST,
        &app.api("/v1/api-keys"),
        Some(json!({"name": "k2", "role": "viewer", "collection": "alpha"})),
    )
    .await;
    assert_eq!(s, 201);
    send(
        &app.client,
        Method::PATCH,
        &app.url("security", &format!("/v1/admin/users/{}", editor.id)),
        Some(json!({"disabled": true})),
    )
    .await;
    let (s, b) = send(
        &authed_client(k2["key"].as_str().unwrap()),
        Method::GET,
        &app.api("/v1/auth/me"),
        None,
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("account_disabled")));

    let events = audit(&app, "limit=500").await;
    assert!(
        has_event(&events, "api_key_created", "success")
            && has_event(&events, "api_key_revoked", "success")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_recover_and_logins_lock_out() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("security.login_max_failures", "3")]).await;
    let limits = app.url("security", "/v1/admin/rate-limits");
    let (s, l) = send(
        &app.client,
        Method::PUT,
        &limits,
        Some(json!({"query_user": "3/s"})),
    )
    .await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["query_user"], "3/s");
    assert_eq!(l["auth_ip"], "60/m", "other limits keep their value");
    let (s, b) = send(
        &app.client,
        Method::PUT,
        &limits,
        Some(json!({"query_user": "fast"})),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    let search = || {
        app.client
            .post(app.api("/v1/search"))
            .json(&json!({"query": "anything"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(search().await.unwrap().status(), 200);
    }
    let limited = search().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        limited.json::<Value>().await.unwrap()["code"],
        "rate_limited"
    );
    // Other routes are not limited, and the limit refills.
    assert_eq!(
        app.client
            .get(app.api("/v1/documents"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(search().await.unwrap().status(), 200, "recovered");
    // Turned off at run time.
    send(
        &app.client,
        Method::PUT,
        &limits,
        Some(json!({"query_user": ""})),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(search().await.unwrap().status(), 200);
    }
    assert!(has_event(
        &audit(&app, "event=rate_limited").await,
        "rate_limited",
        "denied"
    ));
    assert!(has_event(
        &audit(&app, "event=rate_limits_changed").await,
        "rate_limits_changed",
        "success"
    ));

    // Three wrong passwords lock the account, even against the right one.
    let victim = user(&app, "victim@x.org", "viewer", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            login(&app.api(""), "victim@x.org", "wrong-password")
                .await
                .0,
            401
        );
    }
    let r = app
        .anon
        .post(app.api("/v1/auth/login"))
        .json(&json!({"email": "victim@x.org", "password": "a-good-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 60
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "too_many_login_attempts"
    );
    // Other accounts are not affected, nor the victim's existing session.
    assert_eq!(
        login(&app.api(""), ADMIN_EMAIL, ADMIN_PASSWORD).await.0,
        200
    );
    assert_eq!(
        send(&victim.client, Method::GET, &app.api("/v1/auth/me"), None)
            .await
            .0,
        200
    );
    let failures = audit(&app, "event=login_failure").await;
    assert!(failures.iter().any(|e| e["detail"] == "wrong password"));
    assert!(
        failures.iter().any(|e| e["outcome"] == "denied"),
        "the locked-out attempt is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_blocks_single_cidr_expiry_and_trusted_proxies() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[("security.trusted_proxies", "127.0.0.1")],
    )
    .await;
    let blocks = app.url("security", "/v1/admin/ip-blocks");
    let from = |ip: &str| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-forwarded-for", ip.parse().unwrap());
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", app.admin_key).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    let (s, single) = send(
        &app.client,
        Method::POST,
        &blocks,
        Some(json!({"cidr": "203.0.113.7", "reason": "scraping"})),
    )
    .await;
    assert_eq!(s, 201, "{single}");
    assert_eq!(single["cidr"], "203.0.113.7/32");
    let (s, _) = send(
        &app.client,
        Method::POST,
        &blocks,
        Some(json!({"cidr": "198.51.100.0/24", "reason": "botnet"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = send(
        &app.client,
        Method::POST,
        &blocks,
        Some(json!({"cidr": "192.0.2.1", "expires_in_secs": 1})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, b) = send(
        &app.client,
        Method::POST,
        &blocks,
        Some(json!({"cidr": "not-an-ip"})),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    for module in [
        "api", "security", "query", "response", "embedder", "storage",
    ] {
        let (s, b) = send(
            &from("203.0.113.7"),
            Method::GET,
            &app.url(module, "/health"),
            None,
        )
        .await;
        assert_eq!(
            (s, b["code"].as_str()),
            (403, Some("ip_blocked")),
            "{module}"
        );
    }
    assert_eq!(
        send(
            &from("198.51.100.9"),
            Method::GET,
            &app.api("/v1/documents"),
            None
        )
        .await
        .0,
        403,
        "in the CIDR"
    );
    assert_eq!(
        send(
            &from("198.51.101.9"),
            Method::GET,
            &app.api("/v1/documents"),
            None
        )
        .await
        .0,
        200,
        "outside it"
    );
    // The proxy chain is read right to left: the client is the nearest untrusted hop.
    assert_eq!(
        send(
            &from("198.51.100.9, 10.1.1.1"),
            Method::GET,
            &app.api("/health"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(
            &from("10.1.1.1, 198.51.100.9"),
            Method::GET,
            &app.api("/health"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        send(&from("192.0.2.1"), Method::GET, &app.api("/health"), None)
            .await
            .0,
        403
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        send(&from("192.0.2.1"), Method::GET, &app.api("/health"), None)
            .await
            .0,
        200,
        "expired"
    );

    // Unblock.
    let id = single["id"].as_str().unwrap();
    assert_eq!(
        send(
            &app.client,
            Method::DELETE,
            &app.url("security", &format!("/v1/admin/ip-blocks/{id}")),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(&from("203.0.113.7"), Method::GET, &app.api("/health"), None)
            .await
            .0,
        200
    );
    let (_, list) = send(&app.client, Method::GET, &blocks, None).await;
    assert_eq!(list["ip_blocks"].as_array().unwrap().len(), 2);
    let events = audit(&app, "limit=500").await;
    assert!(
        has_event(&events, "ip_blocked", "success")
            && has_event(&events, "ip_unblocked", "success")
    );
    // Request logs and audit entries carry the forwarded client address.
    let (_, _) = send(
        &from("198.51.101.20"),
        Method::GET,
        &app.url("security", "/v1/admin/audit?limit=1"),
        None,
    )
    .await;

    // Without trusted proxies, X-Forwarded-For is ignored: a spoofed header neither blocks nor
    // unblocks; the real peer address is what counts.
    let plain = TestApp::spawn().await;
    let (s, _) = send(
        &plain.client,
        Method::POST,
        &plain.url("security", "/v1/admin/ip-blocks"),
        Some(json!({"cidr": "203.0.113.7"})),
    )
    .await;
    assert_eq!(s, 201);
    let spoof = |ip: &str| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-forwarded-for", ip.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    assert_eq!(
        send(
            &spoof("203.0.113.7"),
            Method::GET,
            &plain.api("/health"),
            None
        )
        .await
        .0,
        200
    );
    let (s, _) = send(
        &plain.client,
        Method::POST,
        &plain.url("security", "/v1/admin/ip-blocks"),
        Some(json!({"cidr": "127.0.0.0/8", "reason": "block the peer itself"})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        send(&spoof("8.8.8.8"), Method::GET, &plain.api("/health"), None)
            .await
            .0,
        403
    );
    assert_eq!(
        send(
            &plain.client,
            Method::GET,
            &plain.url("storage", "/v1/stats"),
            None
        )
        .await
        .0,
        403,
        "admins too"
    );
}
