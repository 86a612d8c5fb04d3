//! The CLI's HTTP client of the public REST API: the base URL and token, sending requests, and
//! turning every way a request can fail into a [`ClientError`] whose `Display` is what the user
//! sees (`<message> (<code>)` for API errors).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use super::client::ServerArgs;
use crate::api::model::ErrorBody;

/// Uploads and answers can legitimately take long, so only connecting is bounded.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured as given; a longer one is waited in steps of this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a request did not produce the expected response. `Display` is what the user sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("cannot reach doc-rag at {url}: is it running? (make run)")]
    Unreachable { url: String },
    #[error("{}", render_error_body(.body))]
    Api {
        status: StatusCode,
        body: ErrorBody,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("{}", render_http_error(*.status, .text))]
    Http { status: StatusCode, text: String },
    #[error("request to {url} timed out")]
    Timeout { url: String },
    #[error("{0}")]
    Transport(String),
    #[error("unexpected response from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    /// How long to wait before sending the same request again, when the server refused it before
    /// doing any work: 503 `overloaded` (too many uploads or queries in flight) or 429
    /// `rate_limited`, with the `Retry-After` it sent (a second when it sent none).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api {
                status,
                body,
                retry_after,
            } if (*status == StatusCode::SERVICE_UNAVAILABLE && body.code == "overloaded")
                || (*status == StatusCode::TOO_MANY_REQUESTS && body.code == "rate_limited") =>
            {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        }
    }

    /// The API error code, when the server answered with an [`ErrorBody`].
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }

    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An API error as the user sees it (the binary adds the `error: ` prefix).
pub(crate) fn render_error_body(body: &ErrorBody) -> String {
    format!("{} ({})", body.message, body.code)
}

fn render_http_error(status: StatusCode, text: &str) -> String {
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

/// Turns a non-success response into an error: the API's `ErrorBody` when the body is one,
/// otherwise the status and the start of whatever a proxy or crashed handler sent instead.
pub(crate) fn error_from_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> ClientError {
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(body) {
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return ClientError::Api {
            status,
            body,
            retry_after,
        };
    }
    ClientError::Http {
        status,
        text: super::output::excerpt(&String::from_utf8_lossy(body), 300),
    }
}

/// reqwest's `Display` stops at "error sending request"; the cause is further down the chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A response read to the end.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as `T` when the status is a success, else the error the body describes.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if !self.status.is_success() {
            return Err(self.error());
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn error(&self) -> ClientError {
        error_from_response(self.status, &self.headers, &self.body)
    }
}

pub(crate) struct Api {
    http: reqwest::Client,
    /// Without a trailing slash, so paths can be appended (keeps any path prefix of a proxy).
    pub(crate) base: String,
    token: Option<String>,
}

impl Api {
    pub(crate) async fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        let base = server.url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .with_context(|| format!("invalid --url {:?}", server.url))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("invalid --url {:?}: expected http://host:port", server.url);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("doc-rag-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let token = match server.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Some(t.to_string()),
            _ => super::credentials::token_for(&http, &base).await,
        };
        Ok(Api { http, base, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.url(path))
    }

    pub(crate) fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path))
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
            }
        } else if e.is_timeout() {
            ClientError::Timeout {
                url: e.url().map_or_else(|| self.base.clone(), |u| u.to_string()),
            }
        } else {
            ClientError::Transport(error_chain(&e))
        }
    }

    /// Sends with the bearer token (when configured); only transport failures are errors.
    async fn dispatch(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request.send().await.map_err(|e| self.transport_error(e))
    }

    /// Reads the whole of a response, whatever its status.
    async fn read(&self, response: reqwest::Response) -> Result<Answer, ClientError> {
        let status = response.status();
        let url = response.url().to_string();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?
            .to_vec();
        Ok(Answer {
            status,
            url,
            headers,
            body,
        })
    }

    /// Sends and hands back the response unread when it is a success, for a body read as it
    /// arrives (a stream); any other status is its error.
    pub(crate) async fn open(
        &self,
        request: RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = self.dispatch(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.read(response).await?.error())
    }

    /// A transport failure while reading a body that arrives over time.
    pub(crate) fn read_error(&self, e: reqwest::Error) -> ClientError {
        self.transport_error(e)
    }

    /// Sends with the bearer token (when configured) and reads the whole response, whatever its
    /// status; only transport failures are errors.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Answer, ClientError> {
        let response = self.dispatch(request).await?;
        self.read(response).await
    }

    /// Sends with the bearer token (when configured) and decodes a success body as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send(request).await?.decode()
    }

    /// Sends `request()` and, while the server answers that it is overloaded or rate-limited
    /// ([`ClientError::retry_after`]), waits as long as it asked and sends it again, until
    /// `deadline`. Returns the first other answer, whatever its status.
    pub(crate) async fn send_retrying(
        &self,
        request: impl Fn() -> RequestBuilder,
        deadline: Instant,
    ) -> Result<Answer, ClientError> {
        loop {
            let answer = self.send(request()).await?;
            if answer.status.is_success() {
                return Ok(answer);
            }
            match answer.error().retry_after() {
                Some(wait) if Instant::now() + wait.min(MAX_RETRY_AFTER) < deadline => {
                    tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
                }
                _ => return Ok(answer),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_api_error_bodies() {
        let none = HeaderMap::new();
        let body =
            br#"{"code":"invalid_request","message":"query must not be empty","request_id":"r-1"}"#;
        let err = error_from_response(StatusCode::BAD_REQUEST, &none, body);
        assert!(matches!(
            err,
            ClientError::Api {
                status: StatusCode::BAD_REQUEST,
                retry_after: None,
                ..
            }
        ));
        assert_eq!(err.to_string(), "query must not be empty (invalid_request)");
        assert_eq!(err.code(), Some("invalid_request"));
        assert_eq!(err.retry_after(), None);
        assert_eq!(
            anyhow::Error::from(err).to_string(),
            "query must not be empty (invalid_request)"
        );

        let proxy = error_from_response(
            StatusCode::BAD_GATEWAY,
            &none,
            b"<html>\n  bad gateway\n</html>",
        );
        assert_eq!(
            proxy.to_string(),
            "HTTP 502 Bad Gateway: <html> bad gateway </html>"
        );
        assert_eq!(proxy.status(), Some(StatusCode::BAD_GATEWAY));

        let empty = error_from_response(StatusCode::SERVICE_UNAVAILABLE, &none, b"");
        assert_eq!(empty.to_string(), "HTTP 503 Service Unavailable");
        assert_eq!(empty.retry_after(), None);

        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:8080".to_string(),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach doc-rag at http://127.0.0.1:8080: is it running? (make run)"
        );
    }

    #[test]
    fn overloaded_answers_say_when_to_retry() {
        let body = br#"{"code":"overloaded","message":"too many uploads in progress"}"#;
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        let err = error_from_response(StatusCode::SERVICE_UNAVAILABLE, &headers, body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

        // Without the header, a second; a 503 with another code (a timed-out request may have
        // done its work) is not retried.
        let err = error_from_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        let timeout = br#"{"code":"timeout","message":"took too long"}"#;
        let err = error_from_response(StatusCode::SERVICE_UNAVAILABLE, &headers, timeout);
        assert_eq!(err.retry_after(), None);
        let limited = br#"{"code":"rate_limited","message":"slow down"}"#;
        let err = error_from_response(StatusCode::TOO_MANY_REQUESTS, &headers, limited);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }
}
