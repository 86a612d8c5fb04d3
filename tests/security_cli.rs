//! The security procedures of docs/security_procedures.md, run as an operator would: the real
//! `doc-rag` binary serving with JSON logs, and the CLI (`login`, `admin …`, `ingest`, `search`)
//! against it, remotely and with `--local`. At the end, the whole captured log is scanned for every
//! secret the test used: none may appear.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, ServerProcess, authed_client, login};
use serde_json::{Value, json};

struct Cli {
    config_dir: tempfile::TempDir,
}

impl Cli {
    fn run(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_doc-rag"));
        cmd.args(args)
            .env("DOCRAG_CONFIG_DIR", self.config_dir.path())
            .env_remove("DOCRAG_TOKEN")
            .env_remove("JWT_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> String {
        let out = self.run(args, envs, stdin);
        assert!(
            out.status.success(),
            "doc-rag {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args, &[], None)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_procedures_work_from_the_cli_and_no_secret_reaches_the_log() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let jwt_secret_a = "first-jwt-secret-0123456789abcdefghijklmnopqrstuvwxyz";
    let jwt_secret_b = "second-jwt-secret-9876543210zyxwvutsrqponmlkjihgfedcba";
    let mut server = ServerProcess::start(
        data.path(),
        &["log.level=info", "security.sync_interval_ms=200"],
        &[("JWT_SECRET", jwt_secret_a)],
    );
    let api = server.url("api");
    let sec = server.url("security");
    let cli = Cli {
        config_dir: tempfile::tempdir().unwrap(),
    };
    let mut secrets: Vec<String> = vec![
        ADMIN_PASSWORD.into(),
        jwt_secret_a.into(),
        jwt_secret_b.into(),
    ];

    // doc-rag login stores the session privately; later commands use it.
    let out = cli.ok(
        &[
            "login",
            "--url",
            &api,
            "--email",
            ADMIN_EMAIL,
            "--password-stdin",
        ],
        &[],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert!(out.contains("Logged in"), "{out}");
    let stored_path = cli.config_dir.path().join("credentials.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stored_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&stored_path).unwrap()).unwrap();
    secrets.push(stored["access_token"].as_str().unwrap().into());
    secrets.push(stored["refresh_token"].as_str().unwrap().into());
    let kid = jsonwebtoken::decode_header(stored["access_token"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap();
    assert!(
        kid.starts_with("env-"),
        "JWT_SECRET is the current key: {kid}"
    );

    // Users, keys and grants.
    let viewer_password = "viewer-password-123";
    secrets.push(viewer_password.into());
    let out = cli.ok(
        &[
            "admin",
            "--url",
            &sec,
            "create-user",
            "viewer@x.org",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        &[],
        Some(&format!("{viewer_password}\n")),
    );
    let viewer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(viewer["role"], "viewer");
    let key: Value = cli.json(&[
        "admin",
        "--url",
        &sec,
        "create-api-key",
        "ingest-bot",
        "--role",
        "editor",
    ]);
    let api_key = key["key"].as_str().unwrap().to_string();
    secrets.push(api_key.clone());
    let key_principal = format!("key:{}", key["id"].as_str().unwrap());
    cli.json(&[
        "admin",
        "--url",
        &sec,
        "grant",
        "default",
        &key_principal,
        "write",
    ]);
    cli.json(&[
        "admin",
        "--url",
        &sec,
        "grant",
        "default",
        "viewer@x.org",
        "read",
    ]);
    let grants = cli.json(&["admin", "--url", &sec, "list-grants", "default"]);
    assert_eq!(grants["grants"].as_array().unwrap().len(), 2, "{grants}");
    let users = cli.json(&["admin", "--url", &sec, "list-users"]);
    assert_eq!(users["users"].as_array().unwrap().len(), 2);

    // The key works for the client commands through DOCRAG_TOKEN and --token.
    let doc_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        doc_dir.path().join("notes.md"),
        "# Lanterns\nThe paper lanterns are stored in the north shed.\n",
    )
    .unwrap();
    cli.ok(
        &["ingest", "--url", &api, doc_dir.path().to_str().unwrap()],
        &[("DOCRAG_TOKEN", &api_key)],
        None,
    );
    let out = cli.ok(
        &[
            "search",
            "--url",
            &api,
            "--token",
            &api_key,
            "where are the lanterns",
        ],
        &[],
        None,
    );
    assert!(out.contains("north shed"), "{out}");
    let out = cli.run(
        &[
            "search",
            "--url",
            &api,
            "--token",
            "drk_not-a-key",
            "lanterns",
        ],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_token"));

    // DDoS: block an address, rate-limit, unblock.
    let block = cli.json(&[
        "admin",
        "--url",
        &sec,
        "block-ip",
        "203.0.113.9",
        "--reason",
        "flood",
    ]);
    assert_eq!(block["cidr"], "203.0.113.9/32");
    let listed = cli.json(&["admin", "--url", &sec, "list-ip-blocks"]);
    assert_eq!(listed["ip_blocks"].as_array().unwrap().len(), 1);
    let limits = cli.json(&[
        "admin",
        "--url",
        &sec,
        "rate-limits",
        "--set",
        "query_ip=100/s",
        "--set",
        "ingest_user=10/m",
    ]);
    assert_eq!(
        (limits["query_ip"].as_str(), limits["ingest_user"].as_str()),
        (Some("100/s"), Some("10/m"))
    );
    let unblocked = cli.json(&["admin", "--url", &sec, "unblock-ip", "203.0.113.9"]);
    assert_eq!(unblocked["unblocked"].as_array().unwrap().len(), 1);

    // Failed logins show up in the audit log with the source address.
    let wrong = "definitely-wrong-password";
    assert_eq!(login(&api, "viewer@x.org", wrong).await.0, 401);
    let audit = cli.json(&["admin", "--url", &sec, "audit", "--event", "login_failure"]);
    let event = &audit["events"][0];
    assert_eq!(
        (event["ip"].as_str(), event["outcome"].as_str()),
        (Some("127.0.0.1"), Some("failure"))
    );
    let by_user = cli.json(&["admin", "--url", &sec, "audit", "--user", "viewer@x.org"]);
    assert!(!by_user["events"].as_array().unwrap().is_empty());

    // A user disabled from the server's console (--local, another process) is locked out within
    // a sync interval.
    let (status, tokens) = login(&api, "viewer@x.org", viewer_password).await;
    assert_eq!(status, 200);
    let viewer_token = tokens["access_token"].as_str().unwrap().to_string();
    secrets.push(viewer_token.clone());
    secrets.push(tokens["refresh_token"].as_str().unwrap().into());
    let viewer_client = authed_client(&viewer_token);
    assert_eq!(
        viewer_client
            .get(format!("{api}/v1/auth/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    cli.json(&[
        "admin",
        "--local",
        "--data-dir",
        &data_dir,
        "disable-user",
        "viewer@x.org",
    ]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        viewer_client
            .get(format!("{api}/v1/auth/me"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let local_audit = cli.json(&[
        "admin",
        "--local",
        "--data-dir",
        &data_dir,
        "audit",
        "--event",
        "user_disabled",
    ]);
    assert_eq!(local_audit["events"][0]["actor"], "local-admin");
    // Recovery from the console: a new password, the account enabled again.
    let new_password = "viewer-password-after-reset";
    secrets.push(new_password.into());
    cli.ok(
        &[
            "admin",
            "--local",
            "--data-dir",
            &data_dir,
            "set-password",
            "viewer@x.org",
            "--password-stdin",
        ],
        &[],
        Some(&format!("{new_password}\n")),
    );
    cli.json(&[
        "admin",
        "--local",
        "--data-dir",
        &data_dir,
        "enable-user",
        "viewer@x.org",
    ]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(login(&api, "viewer@x.org", viewer_password).await.0, 401);
    assert_eq!(login(&api, "viewer@x.org", new_password).await.0, 200);

    // Compromise: rotate (JWT_SECRET is set, so rotation is a restart with a new secret) and end
    // every session.
    let out = cli.run(
        &["admin", "--url", &sec, "rotate-jwt", "--revoke-old"],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli.json(&["admin", "--url", &sec, "revoke-sessions"]);
    let out = cli.run(&["admin", "--url", &sec, "list-users"], &[], None);
    assert!(!out.status.success(), "the stored session ended too");
    cli.ok(
        &[
            "login",
            "--url",
            &api,
            "--email",
            ADMIN_EMAIL,
            "--password-stdin",
        ],
        &[],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&stored_path).unwrap()).unwrap();
    let before_restart = stored["access_token"].as_str().unwrap().to_string();
    secrets.push(before_restart.clone());
    secrets.push(stored["refresh_token"].as_str().unwrap().into());

    let mut log: Vec<String> = server.log.lock().unwrap().clone();
    server.stop();
    let mut server = ServerProcess::start(
        data.path(),
        &["log.level=info"],
        &[("JWT_SECRET", jwt_secret_b)],
    );
    let api = server.url("api");
    let r = authed_client(&before_restart)
        .get(format!("{api}/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "tokens of the old secret stop working");
    let admin = server.admin_client().await;
    assert_eq!(
        admin
            .get(format!("{api}/v1/auth/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = admin
        .post(format!("{api}/v1/search"))
        .json(&json!({"query": "lanterns"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the data is intact");
    log.extend(server.log.lock().unwrap().iter().cloned());
    server.stop();

    // The log: audit lines and request lines with who and where, and no secret anywhere.
    let parsed: Vec<Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(parsed.len(), log.len(), "every line is JSON");
    let audit_events: Vec<&str> = parsed
        .iter()
        .filter(|v| v["audit"] == true)
        .filter_map(|v| v["event"].as_str())
        .collect();
    for event in [
        "login_success",
        "login_failure",
        "user_created",
        "api_key_created",
        "grant_set",
        "ip_blocked",
        "ip_unblocked",
        "rate_limits_changed",
        "revoke_all_sessions",
    ] {
        assert!(
            audit_events.contains(&event),
            "audit log line for {event}: {audit_events:?}"
        );
    }
    let requests: Vec<&Value> = parsed
        .iter()
        .filter(|v| v["message"] == "request")
        .collect();
    assert!(
        requests.iter().any(|v| v["span"]["user"]
            .as_str()
            .is_some_and(|u| u.starts_with("key:"))),
        "request lines name the caller"
    );
    assert!(
        requests.iter().all(|v| v["span"]["client_ip"].is_string()),
        "request lines carry client_ip"
    );
    for secret in &secrets {
        for line in &log {
            assert!(
                !line.contains(secret.as_str()),
                "a secret ({}…) is in the log: {line}",
                &secret[..6]
            );
        }
    }
    let joined = log.join("\n");
    assert!(!joined.contains(wrong), "not even a wrong password");
}
