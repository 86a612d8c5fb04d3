//! Bulk ingestion: `POST /v1/documents/bulk` takes many documents in one request (NDJSON, or a
//! JSON array) and stores the valid ones with their jobs in one transaction, under one batch id;
//! `GET /v1/batches/{id}` reports the batch's progress from its jobs. A corpus of thousands of
//! documents is then a few requests and a status poll every so often, not one round trip (and
//! dozens of polls) per document.
//!
//! A line that is not a valid document is refused with its line number and reason, and the rest
//! of the batch goes ahead, as in Elasticsearch's bulk API: one bad record must not cost a client
//! its whole upload.

use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::model::{BulkAccepted, BulkDocument, BulkRejection, CreateDocument, ErrorBody};
use super::{check_declared_length, content_type, denied, read_body, request_id, upload_from_json};
use crate::AppState;
use crate::http::{ApiError, ApiResult, deserialize_error};
use crate::ingest::{DEFAULT_COLLECTION, Upload};
use crate::limits::check_count;
use crate::security::Caller;

#[derive(Debug, Deserialize)]
pub struct BulkParams {
    /// The collection of documents that name none.
    collection: Option<String>,
}

/// One element of the request: its 1-based position and either the document or why it is not one.
type Element = (usize, Result<CreateDocument, ApiError>);

/// Splits the body into documents. NDJSON: one JSON object per line, blank lines skipped (line
/// numbers stay those of the file). JSON: an array of objects.
fn parse_elements(body: &[u8], ndjson: bool) -> ApiResult<Vec<Element>> {
    let decode =
        |v: Result<CreateDocument, serde_json::Error>| v.map_err(|e| deserialize_error(&e));
    if ndjson {
        Ok(body
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .map(|(i, line)| (i + 1, decode(serde_json::from_slice(line))))
            .collect())
    } else {
        let items: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("expected a JSON array of documents: {e}"),
            )
        })?;
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, decode(serde_json::from_value(v))))
            .collect())
    }
}

fn rejection(line: usize, e: &ApiError) -> BulkRejection {
    BulkRejection {
        line,
        code: e.code.to_string(),
        message: e.message.clone(),
    }
}

/// Upload many documents at once. Each element is a `CreateDocument`; the batch's progress is at
/// `GET /v1/batches/{batch_id}`.
#[utoipa::path(post, path = "/v1/documents/bulk",
    request_body(content = Vec<CreateDocument>, description = "NDJSON (application/x-ndjson), one document per line, or a JSON array"),
    params(("collection" = Option<String>, Query, description = "collection of documents that name none")),
    responses((status = 202, body = BulkAccepted), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_documents(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<BulkParams>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let limit = state.settings.api.max_bulk_body_bytes;
    check_declared_length(&req, limit)?;
    let content_type = content_type(&req);
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let ndjson = match essence {
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => true,
        "application/json" => false,
        _ => {
            return Err(ApiError::unsupported_media(
                "send application/x-ndjson (one document per line) or application/json (an array)",
            ));
        }
    };
    let wait = Duration::from_secs(state.settings.limits.body_read_timeout_secs);
    let body = read_body(payload, limit, wait).await?;
    let elements = parse_elements(&body, ndjson)?;
    drop(body);
    if elements.is_empty() {
        return Err(ApiError::bad_request("the batch has no documents"));
    }
    check_count(
        "documents in one bulk request",
        "bulk_max_documents",
        state.settings.limits.bulk_max_documents,
        elements.len(),
    )?;

    let rid = request_id(&req);
    let default_collection = params.into_inner().collection;
    let mut rejected = Vec::new();
    let mut forbidden = BTreeSet::new();
    let mut lines = Vec::with_capacity(elements.len());
    let mut uploads: Vec<Upload> = Vec::with_capacity(elements.len());
    for (line, element) in elements {
        let upload = element.and_then(|mut doc| {
            if doc.collection.is_none() {
                doc.collection.clone_from(&default_collection);
            }
            upload_from_json(doc, rid.clone())
        });
        match upload {
            Ok(upload) => {
                let collection = upload.collection.as_deref().unwrap_or(DEFAULT_COLLECTION);
                if caller.can_write(collection) {
                    lines.push(line);
                    uploads.push(upload);
                } else {
                    let why = format!("you may not write to collection {collection:?}");
                    rejected.push(rejection(
                        line,
                        &ApiError::new(StatusCode::FORBIDDEN, "forbidden", why),
                    ));
                    forbidden.insert(collection.to_string());
                }
            }
            Err(e) => rejected.push(rejection(line, &e)),
        }
    }
    if !forbidden.is_empty() {
        let names: Vec<String> = forbidden.into_iter().collect();
        // Audited once per request, not once per line.
        let _ = denied(
            &state,
            &req,
            format!("bulk upload to collections {names:?} without write access"),
        )
        .await;
    }

    let outcome = if uploads.is_empty() {
        None
    } else {
        Some(state.ingest.submit_batch(uploads).await?)
    };
    let mut documents = Vec::new();
    let mut batch_id = None;
    if let Some(outcome) = outcome {
        batch_id = outcome.batch_id;
        documents = outcome
            .submitted
            .into_iter()
            .map(|(i, s)| BulkDocument {
                line: lines[i],
                document_id: s.document_id,
                job_id: s.job_id,
                replaced: s.replaced,
            })
            .collect();
        for (i, e) in outcome.rejected {
            rejected.push(rejection(lines[i], &ApiError::from(e)));
        }
    }
    rejected.sort_by_key(|r| r.line);
    let Some(batch_id) = batch_id else {
        let first = rejected
            .first()
            .map(|r| format!("; line {}: {}", r.line, r.message))
            .unwrap_or_default();
        return Ok(HttpResponse::BadRequest().json(json!({
            "code": "invalid_request",
            "message": format!("no document of the batch was accepted{first}"),
            "rejected": rejected,
        })));
    };
    documents.sort_by_key(|d| d.line);
    Ok(HttpResponse::Accepted().json(BulkAccepted {
        batch_id,
        accepted: documents.len(),
        documents,
        rejected,
    }))
}

/// A bulk upload's progress: its jobs by state, and the failures with their reasons.
#[utoipa::path(get, path = "/v1/batches/{id}",
    responses((status = 200, body = crate::storage::BatchView), (status = 404, body = ErrorBody)))]
pub async fn get_batch(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let (view, collections) = state
        .storage
        .metadata
        .get_batch(*id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch"))?;
    // A batch touching a collection the caller cannot read does not exist for them.
    if !caller.is_admin() && !collections.iter().all(|c| caller.can_read(c)) {
        return Err(ApiError::not_found("batch"));
    }
    Ok(HttpResponse::Ok().json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_keeps_file_line_numbers_and_reports_bad_lines() {
        let body = b"{\"text\": \"a\"}\n\n  \n{not json}\n{\"text\": \"b\", \"bogus\": 1}\n{\"title\": \"t\", \"text\": \"c\"}";
        let parsed = parse_elements(body, true).unwrap();
        let lines: Vec<usize> = parsed.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 4, 5, 6]);
        assert!(parsed[0].1.is_ok());
        assert_eq!(parsed[1].1.as_ref().unwrap_err().code, "malformed_json");
        assert_eq!(parsed[2].1.as_ref().unwrap_err().code, "invalid_request");
        assert_eq!(parsed[3].1.as_ref().unwrap().title.as_deref(), Some("t"));
    }

    #[test]
    fn a_json_array_is_numbered_from_one_and_anything_else_is_malformed() {
        let parsed = parse_elements(br#"[{"text": "a"}, 3, {"text": "b"}]"#, false).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].0, 2);
        assert_eq!(parsed[1].1.as_ref().unwrap_err().code, "invalid_request");
        assert!(parsed[2].1.is_ok());
        let err = parse_elements(br#"{"text": "a"}"#, false).unwrap_err();
        assert_eq!(err.code, "malformed_json");
    }
}
