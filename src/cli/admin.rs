//! `doc-rag login`, `logout` and `admin …`: sessions and the security administration the runbook's
//! incident procedures need (create users, change roles, disable accounts, API keys, rotate the
//! JWT signing key, revoke every session, block addresses, read the audit log, rate limits).
//!
//! Each admin verb is one request to the security API. It goes over HTTP to the security port
//! (8087) with a token, or, with `--local` on the server itself, to the same handlers run
//! in-process against the configured database as the local operator: the way in when no admin
//! can log in (lost password, compromised keys).

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{HttpMessage, web};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::ServiceArgs;
use super::client::ServerArgs;
use super::credentials::{self, Stored};
use crate::security::audit::ClientIp;
use crate::security::{Caller, SecurityService, TokenPair};
use crate::storage::sql::SqlStore;

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long)]
    pub email: String,
    /// Read the password from the first line of standard input instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Base URL of the security port
    #[arg(
        long,
        env = "DOCRAG_ADMIN_URL",
        default_value = "http://127.0.0.1:8087"
    )]
    pub url: String,
    /// Admin access token or API key (default: the session `doc-rag login` stored)
    #[arg(long, env = "DOCRAG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Work on the database directly, as the local operator (run on the server; no login)
    #[arg(long)]
    pub local: bool,
    /// With --local: the service configuration to read the database settings from
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create a user (the password is prompted for, or read with --password-stdin)
    CreateUser {
        email: String,
        #[arg(long, default_value = "viewer", value_parser = ["admin", "editor", "viewer"])]
        role: String,
        #[arg(long)]
        password_stdin: bool,
    },
    ListUsers,
    /// Change a user's role (user: id or email)
    SetRole {
        user: String,
        #[arg(value_parser = ["admin", "editor", "viewer"])]
        role: String,
    },
    /// Disable a user: they cannot log in, and their tokens and keys stop working at once
    DisableUser {
        user: String,
    },
    EnableUser {
        user: String,
    },
    DeleteUser {
        user: String,
    },
    /// Set a user's password (prompted for, or --password-stdin); ends their sessions
    SetPassword {
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create an API key; its secret is printed once
    CreateApiKey {
        name: String,
        #[arg(long, default_value = "viewer", value_parser = ["admin", "editor", "viewer"])]
        role: String,
        /// Limit the key to one collection
        #[arg(long)]
        collection: Option<String>,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    ListApiKeys,
    RevokeApiKey {
        id: String,
    },
    /// Make a new JWT signing key current
    RotateJwt {
        /// Retire the old keys at once: every access token they signed stops working
        #[arg(long)]
        revoke_old: bool,
    },
    /// End every session: all access and refresh tokens stop working
    RevokeSessions,
    /// Block an address or CIDR on every port
    BlockIp {
        cidr: String,
        #[arg(long)]
        reason: Option<String>,
        /// Lift the block after this many seconds
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Lift a block (its id, or the CIDR it blocks)
    UnblockIp {
        block: String,
    },
    ListIpBlocks,
    /// Security events, newest first
    Audit {
        /// User id, email, or principal (user:<id>, key:<id>)
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// RFC 3339 time, e.g. 2026-11-29T00:00:00Z
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Give a user (id or email) or key (key:<id>) read or write access to a collection
    Grant {
        collection: String,
        principal: String,
        #[arg(value_parser = ["read", "write"])]
        access: String,
    },
    RevokeGrant {
        collection: String,
        principal: String,
    },
    ListGrants {
        collection: String,
    },
    /// Show the rate limits, or change them: --set query_ip=100/s (repeatable; "" turns one off)
    RateLimits {
        #[arg(long = "set", value_name = "KEY=RATE")]
        set: Vec<String>,
    },
}

fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<SecretString> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(SecretString::from(
            line.trim_end_matches(['\r', '\n']).to_string(),
        ));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt for the password: use --password-stdin");
    }
    Ok(SecretString::from(rpassword::prompt_password(prompt)?))
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin, "Password: ")?;
    let base = args.server.url.trim_end_matches('/').to_string();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": args.email, "password": password.expose_secret()}))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{} ({})",
            body["message"].as_str().unwrap_or("login failed"),
            body["code"].as_str().unwrap_or(status.as_str())
        );
    }
    let pair: TokenPair = serde_json::from_value(body)?;
    let path = credentials::save(&Stored::from_pair(&base, &pair))?;
    println!(
        "Logged in to {base} as {} ({}). Session stored in {}.",
        pair.user.email,
        pair.user.role.as_str(),
        path.display()
    );
    Ok(())
}

pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let base = args.server.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();
    if let Some(token) = args
        .server
        .token
        .or(credentials::token_for(&http, &base).await)
    {
        let _ = http
            .post(format!("{base}/v1/auth/logout"))
            .bearer_auth(token)
            .send()
            .await;
    }
    if credentials::remove() {
        println!("Logged out; the stored session is removed.");
    } else {
        println!("No stored session.");
    }
    Ok(())
}

/// Where admin requests go.
enum Target {
    Remote {
        http: reqwest::Client,
        base: String,
        token: Option<String>,
    },
    Local(web::Data<SecurityService>),
}

impl Target {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = match self {
            Target::Remote { http, base, token } => {
                let method = reqwest::Method::from_bytes(method.as_str().as_bytes())?;
                let mut request = http.request(method, format!("{base}{path}"));
                if let Some(t) = token {
                    request = request.bearer_auth(t);
                }
                if let Some(b) = body {
                    request = request.json(&b);
                }
                let response = request
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {base}"))?;
                let status = response.status().as_u16();
                let bytes = response.bytes().await?;
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
            Target::Local(security) => call_local(security.clone(), method, path, body).await,
        };
        if !(200..300).contains(&status) {
            bail!(
                "{} ({})",
                value["message"].as_str().unwrap_or("request failed"),
                value["code"].as_str().unwrap_or(&status.to_string())
            );
        }
        Ok(value)
    }

    async fn user_id(&self, user: &str) -> anyhow::Result<String> {
        if !user.contains('@') {
            return Ok(user.to_string());
        }
        let users = self.call(Method::GET, "/v1/admin/users", None).await?;
        let email = user.trim().to_lowercase();
        users["users"]
            .as_array()
            .and_then(|list| list.iter().find(|u| u["email"] == email.as_str()))
            .and_then(|u| u["id"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no user with email {email}"))
    }

    async fn principal(&self, p: &str) -> anyhow::Result<String> {
        if p.contains(':') {
            Ok(p.to_string())
        } else {
            Ok(format!("user:{}", self.user_id(p).await?))
        }
    }
}

/// Runs one request through the security routes in this process, as the local operator.
async fn call_local(
    security: web::Data<SecurityService>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(security)
            .wrap(from_fn(as_local_operator))
            .configure(crate::security::routes),
    )
    .await;
    let mut request = actix_web::test::TestRequest::default()
        .method(method)
        .uri(path);
    if let Some(b) = body {
        request = request.set_json(b);
    }
    let response = actix_web::test::call_service(&app, request.to_request()).await;
    let status = response.status().as_u16();
    let bytes = actix_web::test::read_body(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// In place of the guard: the caller is the operator at the console.
async fn as_local_operator(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody + 'static>,
    actix_web::Error,
> {
    req.extensions_mut().insert(Caller::local_admin());
    req.extensions_mut().insert(ClientIp(std::net::IpAddr::V4(
        std::net::Ipv4Addr::LOCALHOST,
    )));
    next.call(req).await
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn target(args: &AdminArgs) -> anyhow::Result<Target> {
    if args.local {
        let settings = args.service.settings()?;
        crate::telemetry::init_cli_logging();
        let store = SqlStore::connect(&settings.database, &settings.storage.data_dir)
            .await
            .context("opening the database")?;
        let security = SecurityService::start(settings.security.clone(), Arc::new(store))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(Target::Local(web::Data::from(security)));
    }
    let base = args.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .user_agent(concat!("doc-rag-cli/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let token = credentials::explicit_or_stored(&http, args.token.as_deref()).await;
    if token.is_none() {
        bail!("no credentials: `doc-rag login`, --token / DOCRAG_TOKEN, or --local on the server");
    }
    Ok(Target::Remote { http, base, token })
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let t = target(&args).await?;
    use AdminCommand::*;
    let out = match args.command {
        CreateUser {
            email,
            role,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &format!("Password for {email}: "))?;
            t.call(
                Method::POST,
                "/v1/admin/users",
                Some(json!({"email": email, "password": password.expose_secret(), "role": role})),
            )
            .await?
        }
        ListUsers => t.call(Method::GET, "/v1/admin/users", None).await?,
        SetRole { user, role } => {
            let id = t.user_id(&user).await?;
            t.call(
                Method::PATCH,
                &format!("/v1/admin/users/{}", encode(&id)),
                Some(json!({"role": role})),
            )
            .await?
        }
        DisableUser { user } => {
            let id = t.user_id(&user).await?;
            t.call(
                Method::PATCH,
                &format!("/v1/admin/users/{}", encode(&id)),
                Some(json!({"disabled": true})),
            )
            .await?
        }
        EnableUser { user } => {
            let id = t.user_id(&user).await?;
            t.call(
                Method::PATCH,
                &format!("/v1/admin/users/{}", encode(&id)),
                Some(json!({"disabled": false})),
            )
            .await?
        }
        SetPassword {
            user,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &format!("New password for {user}: "))?;
            let id = t.user_id(&user).await?;
            t.call(
                Method::PATCH,
                &format!("/v1/admin/users/{}", encode(&id)),
                Some(json!({"password": password.expose_secret()})),
            )
            .await?
        }
        DeleteUser { user } => {
            let id = t.user_id(&user).await?;
            t.call(
                Method::DELETE,
                &format!("/v1/admin/users/{}", encode(&id)),
                None,
            )
            .await?;
            json!({"deleted": id})
        }
        CreateApiKey {
            name,
            role,
            collection,
            expires_in_days,
        } => {
            let v = t.call(Method::POST, "/v1/api-keys", Some(json!({"name": name, "role": role, "collection": collection, "expires_in_days": expires_in_days}))).await?;
            eprintln!("The key is shown this once; store it now.");
            v
        }
        ListApiKeys => t.call(Method::GET, "/v1/api-keys?all=true", None).await?,
        RevokeApiKey { id } => {
            t.call(
                Method::DELETE,
                &format!("/v1/api-keys/{}", encode(&id)),
                None,
            )
            .await?;
            json!({"revoked": id})
        }
        RotateJwt { revoke_old } => {
            t.call(
                Method::POST,
                "/v1/admin/keys/rotate",
                Some(json!({"revoke_old": revoke_old})),
            )
            .await?
        }
        RevokeSessions => {
            t.call(Method::POST, "/v1/admin/sessions/revoke-all", None)
                .await?
        }
        BlockIp {
            cidr,
            reason,
            expires_in,
        } => {
            t.call(
                Method::POST,
                "/v1/admin/ip-blocks",
                Some(json!({"cidr": cidr, "reason": reason, "expires_in_secs": expires_in})),
            )
            .await?
        }
        UnblockIp { block } => {
            let list = t.call(Method::GET, "/v1/admin/ip-blocks", None).await?;
            let wanted = crate::security::network::parse_cidr(&block)
                .ok()
                .map(|n| n.to_string());
            let ids: Vec<String> = list["ip_blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| {
                    b["id"] == block.as_str() || wanted.as_deref().is_some_and(|w| b["cidr"] == w)
                })
                .filter_map(|b| b["id"].as_str().map(str::to_string))
                .collect();
            if ids.is_empty() {
                bail!("no IP block {block:?}");
            }
            for id in &ids {
                t.call(
                    Method::DELETE,
                    &format!("/v1/admin/ip-blocks/{}", encode(id)),
                    None,
                )
                .await?;
            }
            json!({"unblocked": ids})
        }
        ListIpBlocks => t.call(Method::GET, "/v1/admin/ip-blocks", None).await?,
        Audit {
            user,
            ip,
            event,
            since,
            until,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [
                ("user", user),
                ("ip", ip),
                ("event", event),
                ("since", since),
                ("until", until),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", encode(&v)));
                }
            }
            t.call(
                Method::GET,
                &format!("/v1/admin/audit?{}", query.join("&")),
                None,
            )
            .await?
        }
        Grant {
            collection,
            principal,
            access,
        } => {
            let p = t.principal(&principal).await?;
            t.call(
                Method::PUT,
                &format!(
                    "/v1/collections/{}/grants/{}",
                    encode(&collection),
                    encode(&p)
                ),
                Some(json!({"access": access})),
            )
            .await?
        }
        RevokeGrant {
            collection,
            principal,
        } => {
            let p = t.principal(&principal).await?;
            t.call(
                Method::DELETE,
                &format!(
                    "/v1/collections/{}/grants/{}",
                    encode(&collection),
                    encode(&p)
                ),
                None,
            )
            .await?;
            json!({"revoked": p, "collection": collection})
        }
        ListGrants { collection } => {
            t.call(
                Method::GET,
                &format!("/v1/collections/{}/grants", encode(&collection)),
                None,
            )
            .await?
        }
        RateLimits { set } => {
            if set.is_empty() {
                t.call(Method::GET, "/v1/admin/rate-limits", None).await?
            } else {
                let mut body = serde_json::Map::new();
                for kv in set {
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--set {kv}: expected KEY=RATE"))?;
                    body.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
                }
                t.call(
                    Method::PUT,
                    "/v1/admin/rate-limits",
                    Some(Value::Object(body)),
                )
                .await?
            }
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
