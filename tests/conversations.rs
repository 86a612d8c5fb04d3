//! Conversations and feedback (issue 11) on embedded defaults, with extractive answers: follow-ups
//! rewritten by rule before retrieval, history per owner, ratings per answer and the admins'
//! satisfaction report.

mod common;

use common::{TestApp, authed_client, login, send};
use reqwest::Method;
use serde_json::{Value, json};

const CRANES: &str = "Sandhill cranes migrate south in autumn. They fly in V-shaped flocks.\n\n\
    Sandhill cranes eat grain, seeds, insects and small frogs found on wetlands.";
const REDIS: &str = "Check Redis memory usage with redis-cli info memory. Evictions start \
    when maxmemory is reached.";

/// A viewer with read access to `birds` and `ops`, logged in.
async fn viewer(app: &TestApp, email: &str) -> reqwest::Client {
    let (status, u) = send(
        &app.client,
        Method::POST,
        &app.url("security", "/v1/admin/users"),
        Some(json!({"email": email, "password": "a-good-password", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201, "{u}");
    let id = u["id"].as_str().unwrap();
    for collection in ["birds", "ops"] {
        let (status, g) = send(
            &app.client,
            Method::PUT,
            &app.api(&format!("/v1/collections/{collection}/grants/user:{id}")),
            Some(json!({"access": "read"})),
        )
        .await;
        assert_eq!(status, 200, "{g}");
    }
    let (status, t) = login(&app.api(""), email, "a-good-password").await;
    assert_eq!(status, 200, "{t}");
    authed_client(t["access_token"].as_str().unwrap())
}

async fn app() -> TestApp {
    let app = TestApp::spawn().await;
    app.ingest_text("Cranes", CRANES, json!({"collection": "birds"}))
        .await;
    app.ingest_text("Redis", REDIS, json!({"collection": "ops"}))
        .await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_use_earlier_turns_and_history_belongs_to_its_owner() {
    let app = app().await;
    let alice = viewer(&app, "alice@test.local").await;
    let bob = viewer(&app, "bob@test.local").await;

    let (status, conversation) = send(
        &alice,
        Method::POST,
        &app.api("/v1/conversations"),
        Some(json!({"title": "Cranes", "collection": "birds"})),
    )
    .await;
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap().to_string();
    assert_eq!(conversation["collection"], "birds");

    let ask = |client: reqwest::Client, query: &'static str| {
        let url = app.api("/v1/query");
        let id = id.clone();
        async move {
            send(
                &client,
                Method::POST,
                &url,
                Some(json!({"query": query, "conversation_id": id, "top_k": 1})),
            )
            .await
        }
    };
    let (status, first) = ask(alice.clone(), "When do sandhill cranes migrate?").await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first.get("rewritten_query").is_none(),
        "a first question stands alone: {first}"
    );
    assert_eq!(first["conversation_id"], id.as_str());

    // "they" leans on the first question: its topic is carried over before retrieval, and the
    // answer comes from the cranes passage about food.
    let (status, second) = ask(alice.clone(), "What do they eat?").await;
    assert_eq!(status, 200, "{second}");
    let rewritten = second["rewritten_query"].as_str().unwrap();
    assert!(
        rewritten.starts_with("What do they eat?") && rewritten.contains("cranes"),
        "{rewritten}"
    );
    assert_eq!(second["citations"][0]["title"], "Cranes", "{second}");
    assert!(
        second["answer"].as_str().unwrap().contains("grain"),
        "{second}"
    );

    let (status, detail) = send(
        &alice,
        Method::GET,
        &app.api(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    let turns = detail["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0]["question"], "When do sandhill cranes migrate?");
    assert_eq!(turns[0]["query_id"], first["query_id"]);
    assert_eq!(turns[1]["question"], "What do they eat?");
    assert_eq!(turns[1]["rewritten_query"], rewritten);
    assert_eq!(turns[1]["answer"], second["answer"]);

    let (_, listed) = send(&alice, Method::GET, &app.api("/v1/conversations"), None).await;
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(listed["conversations"][0]["id"], id.as_str());

    // Bob sees none of it, and cannot ask in it.
    let (_, listed) = send(&bob, Method::GET, &app.api("/v1/conversations"), None).await;
    assert_eq!(listed["conversations"], json!([]));
    let (status, _) = send(
        &bob,
        Method::GET,
        &app.api(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = ask(bob.clone(), "What do they eat?").await;
    assert_eq!(status, 404);
    let (status, _) = send(
        &bob,
        Method::DELETE,
        &app.api(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Bad input is a 400 naming the problem.
    let (status, e) = send(
        &alice,
        Method::GET,
        &app.api("/v1/conversations/not-a-uuid"),
        None,
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_id")));
    let (status, e) = send(
        &alice,
        Method::POST,
        &app.api("/v1/conversations"),
        Some(json!({"title": "x".repeat(300)})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = send(
        &alice,
        Method::POST,
        &app.api("/v1/conversations"),
        Some(json!({"collection": "secret-collection"})),
    )
    .await;
    assert_eq!(
        status, 404,
        "a collection the caller cannot read does not exist"
    );

    let (status, _) = send(
        &alice,
        Method::DELETE,
        &app.api(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = send(
        &alice,
        Method::GET,
        &app.api(&format!("/v1/conversations/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = ask(alice.clone(), "What do they eat?").await;
    assert_eq!(status, 404, "a deleted conversation takes no more turns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_rated_by_their_owner_and_summed_per_collection() {
    let app = app().await;
    let alice = viewer(&app, "alice@test.local").await;
    let bob = viewer(&app, "bob@test.local").await;
    let ask = |client: reqwest::Client, query: &'static str, collection: &'static str| {
        let url = app.api("/v1/query");
        async move {
            let (status, answer) = send(
                &client,
                Method::POST,
                &url,
                Some(json!({"query": query, "collection": collection})),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            answer["query_id"].as_str().unwrap().to_string()
        }
    };
    let redis = ask(alice.clone(), "How do I check Redis memory usage?", "ops").await;
    let cranes = ask(alice.clone(), "When do cranes migrate?", "birds").await;
    let bobs = ask(bob.clone(), "When do cranes migrate?", "birds").await;

    let rate = |client: reqwest::Client, body: Value| {
        let url = app.api("/v1/feedback");
        async move { send(&client, Method::POST, &url, Some(body)).await }
    };
    let (status, r) = rate(alice.clone(), json!({"query_id": redis, "rating": "up"})).await;
    assert_eq!(status, 201, "{r}");
    // A second rating replaces the first.
    let (status, _) = rate(
        alice.clone(),
        json!({"query_id": redis, "rating": "down", "comment": "too terse"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = rate(alice.clone(), json!({"query_id": cranes, "rating": "up"})).await;
    assert_eq!(status, 201);
    let (status, _) = rate(bob.clone(), json!({"query_id": bobs, "rating": "up"})).await;
    assert_eq!(status, 201);

    // Nobody rates someone else's answer, or one that does not exist; bad input is a 400.
    let (status, _) = rate(bob.clone(), json!({"query_id": redis, "rating": "up"})).await;
    assert_eq!(status, 404);
    let (status, _) = rate(
        alice.clone(),
        json!({"query_id": uuid::Uuid::new_v4(), "rating": "up"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, e) = rate(alice.clone(), json!({"query_id": redis, "rating": "meh"})).await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = rate(
        alice.clone(),
        json!({"query_id": redis, "rating": "up", "comment": "x".repeat(3000)}),
    )
    .await;
    assert_eq!(status, 400, "{e}");

    let (status, _) = send(&alice, Method::GET, &app.api("/v1/admin/feedback"), None).await;
    assert_eq!(status, 403, "admins only");
    let (status, report) = send(
        &app.client,
        Method::GET,
        &app.api("/v1/admin/feedback"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let by_collection: std::collections::HashMap<String, (i64, i64, f64)> = report["satisfaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["collection"].as_str().unwrap().to_string(),
                (
                    c["up"].as_i64().unwrap(),
                    c["down"].as_i64().unwrap(),
                    c["satisfaction"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(by_collection["ops"], (0, 1, 0.0));
    assert_eq!(by_collection["birds"], (2, 0, 1.0));
    assert_eq!(report["feedback"].as_array().unwrap().len(), 3);

    let (_, down) = send(
        &app.client,
        Method::GET,
        &app.api("/v1/admin/feedback?collection=ops&rating=down"),
        None,
    )
    .await;
    let entries = down["feedback"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{down}");
    assert_eq!(entries[0]["query_id"], redis.as_str());
    assert_eq!(entries[0]["comment"], "too terse");
    assert_eq!(entries[0]["question"], "How do I check Redis memory usage?");
    assert!(
        entries[0]["answer"]
            .as_str()
            .unwrap()
            .contains("info memory")
    );
    assert_eq!(down["satisfaction"].as_array().unwrap().len(), 1);

    let (status, _) = send(
        &app.client,
        Method::GET,
        &app.api("/v1/admin/feedback?since=yesterday"),
        None,
    )
    .await;
    assert_eq!(status, 400);

    let metrics = app.metrics().await;
    let count = |rating: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("feedback_total{{rating=\"{rating}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("up") >= 3.0 && count("down") >= 1.0, "{metrics}");
}
