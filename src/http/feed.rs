//! `GET /revocations` and `GET /revocations/stream`: the revocation feed for
//! other services, behind the service credential (`REVOCATIONS_TOKEN`). Served
//! only when the credential is configured.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::openapi::{Internal, InvalidQuery, ServiceCredentialRefused, Unavailable};
use crate::auth::AuthError;
use crate::domain::SessionId;
use crate::revocations::RevocationFeed;
use crate::store::Revocation;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stream))
}

#[derive(Deserialize)]
pub struct FeedQuery {
    /// A cursor from this feed (a previous response's `cursor`, or an event
    /// id); absent: every entry still kept.
    after: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// The session that ended.
    #[schema(value_type = uuid::Uuid)]
    sid: SessionId,
    at: DateTime<Utc>,
}

impl From<Revocation> for Revoked {
    fn from(r: Revocation) -> Self {
        Self {
            sid: r.sid,
            at: r.at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    revoked: Vec<Revoked>,
    /// Pass as `after` to get what comes next.
    cursor: String,
}

/// The feed, if this request carries the service credential.
fn authorized(state: &AppState, headers: &HeaderMap) -> Result<Arc<RevocationFeed>, ApiError> {
    let feed = state.feed.clone().ok_or(ApiError::NotFound)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(ApiError::MissingBearer)?;
    if feed.admits(presented) {
        Ok(feed)
    } else {
        Err(ApiError::Bearer(AuthError::InvalidToken))
    }
}

fn cursor(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(0),
        Some(s) => {
            s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::InvalidQuery("after must be a cursor from this feed".into())
            })
        }
    }
}

fn query(q: Result<Query<FeedQuery>, QueryRejection>) -> Result<FeedQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|_| ApiError::InvalidQuery("the query string is malformed".into()))
}

/// Sessions ended after `after`, in commit order.
#[utoipa::path(
    get,
    path = "/revocations",
    tag = "revocations",
    params(("after" = Option<String>, Query, description = "A `cursor` from a previous page; absent: every entry still kept")),
    security(("service_credential" = [])),
    responses(
        (status = 200, description = "A page of the feed", body = FeedPage),
        (status = 400, response = inline(InvalidQuery)),
        (status = 401, response = inline(ServiceCredentialRefused)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Json<FeedPage>, ApiError> {
    let feed = authorized(&state, &headers)?;
    let after = cursor(query(q)?.after.as_deref())?;
    let page = feed
        .page(after)
        .await
        .map_err(|e| ApiError::Auth(e.into()))?;
    let cursor = page.last().map_or(after, |r| r.seq).to_string();
    Ok(Json(FeedPage {
        revoked: page.into_iter().map(Revoked::from).collect(),
        cursor,
    }))
}

/// Server-Sent Events, one `revoked` event per entry with the cursor as its
/// id: a client that reconnects with `Last-Event-ID` resumes where it was.
#[utoipa::path(
    get,
    path = "/revocations/stream",
    tag = "revocations",
    params(
        ("after" = Option<String>, Query, description = "A cursor to start after"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id seen; wins over `after`"),
    ),
    security(("service_credential" = [])),
    responses(
        (status = 200, description = "`event: revoked`, `id: <cursor>`, `data: {\"sid\", \"at\"}` per entry; keep-alive comments every 15 s",
            content_type = "text/event-stream", body = String),
        (status = 400, response = inline(InvalidQuery)),
        (status = 401, response = inline(ServiceCredentialRefused)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let feed = authorized(&state, &headers)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = cursor(resume.or(query(q)?.after).as_deref())?;
    let events = feed.follow(after).map(|r| {
        let event = Event::default()
            .event("revoked")
            .id(r.seq.to_string())
            .json_data(Revoked::from(r))
            .unwrap_or_else(|_| Event::default().comment("unencodable entry"));
        Ok::<_, Infallible>(event)
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
