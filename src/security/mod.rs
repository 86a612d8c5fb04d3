//! Security: who is calling. Authentication (users, API keys, JWTs, revocation) arrives with its own
//! issue; until then every caller is anonymous. Every public route already takes a [`Caller`]
//! extractor, so enforcing authentication later changes this module, not the routes.
//!
//! The security module serves its own port with `/health`, `/ready` and `/metrics`.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::FutureExt;

use crate::AppState;
use crate::http::{ApiError, Check, check_database};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(_req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Ok(Caller::Anonymous))
    }
}

pub fn routes(_cfg: &mut web::ServiceConfig) {}

pub fn readiness(
    state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move { vec![check_database(&state).await] }.boxed()
}
