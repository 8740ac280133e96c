//! Route handlers: translate HTTP to service calls and back. No business
//! rules live here beyond transport (cookie or body) and CSRF.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::cookies::{refresh_cookie, removal_cookie};
use super::csrf;
use super::error::ApiError;
use super::extract::{ApiJson, AuthUser, Client, Transport};
use crate::auth::{Issued, SessionView};
use crate::domain::{RefreshToken, SessionId, UserId};

#[derive(Deserialize)]
pub struct CredentialsBody {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize)]
pub struct UserResponse {
    id: UserId,
    email: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    session_id: SessionId,
    /// Only with `X-Refresh-Transport: body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
pub struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[derive(Serialize)]
pub struct SessionResponse {
    id: SessionId,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    user_agent: Option<String>,
    ip: Option<String>,
    /// The session of the access token that asked.
    current: bool,
}

impl From<SessionView> for SessionResponse {
    fn from(v: SessionView) -> Self {
        Self {
            id: v.info.id,
            created_at: v.info.created_at,
            last_used_at: v.info.last_used_at,
            expires_at: v.info.expires_at,
            user_agent: v.info.user_agent,
            ip: v.info.ip,
            current: v.current,
        }
    }
}

#[derive(Serialize)]
pub struct SessionsResponse {
    sessions: Vec<SessionResponse>,
}

#[derive(Serialize)]
pub struct MeResponse {
    id: UserId,
    email: String,
    session_id: SessionId,
}

pub async fn register(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<CredentialsBody>,
) -> Result<impl IntoResponse, ApiError> {
    let user = state
        .auth
        .register(
            &body.email,
            body.password,
            client.ip_addr(),
            state.clock.now(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserResponse {
            id: user.id,
            email: user.email.to_string(),
            created_at: user.created_at,
        }),
    ))
}

pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    jar: CookieJar,
    ApiJson(body): ApiJson<CredentialsBody>,
) -> Result<Response, ApiError> {
    let issued = state
        .auth
        .login(&body.email, body.password, client, state.clock.now())
        .await?;
    Ok(token_response(&state, Transport::of(&headers), jar, issued))
}

pub async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    jar: CookieJar,
    body: Bytes,
) -> Result<Response, ApiError> {
    csrf::check(&headers, &state.origins)?;
    let transport = Transport::of(&headers);
    let carried_cookie = transport == Transport::Cookie && jar.get(&state.cookie.name).is_some();
    let token =
        presented_token(&state, transport, &jar, &body)?.ok_or(ApiError::MissingRefreshToken)?;
    match state.auth.refresh(&token, &client, state.clock.now()).await {
        Ok(issued) => Ok(token_response(&state, transport, jar, issued)),
        Err(e) => {
            let err = ApiError::Auth(e);
            if carried_cookie && err.status() == StatusCode::UNAUTHORIZED {
                Ok((jar.add(removal_cookie(&state.cookie)), err).into_response())
            } else {
                Err(err)
            }
        }
    }
}

pub async fn logout(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    jar: CookieJar,
    body: Bytes,
) -> Result<Response, ApiError> {
    csrf::check(&headers, &state.origins)?;
    let transport = Transport::of(&headers);
    // Idempotent: an unreadable body is the same as no token.
    let token = presented_token(&state, transport, &jar, &body).unwrap_or(None);
    state
        .auth
        .logout(token.as_ref(), &client, state.clock.now())
        .await?;
    Ok(clear_if_carried(
        &state,
        transport,
        jar,
        StatusCode::NO_CONTENT,
    ))
}

pub async fn logout_all(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Client(client): Client,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<Response, ApiError> {
    state
        .auth
        .logout_all(&who, &client, state.clock.now())
        .await?;
    Ok(clear_if_carried(
        &state,
        Transport::of(&headers),
        jar,
        StatusCode::NO_CONTENT,
    ))
}

pub async fn me(AuthUser(who): AuthUser) -> Json<MeResponse> {
    Json(MeResponse {
        id: who.user_id,
        email: who.email.to_string(),
        session_id: who.session_id,
    })
}

pub async fn sessions(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Json<SessionsResponse>, ApiError> {
    let list = state.auth.sessions(&who, state.clock.now()).await?;
    Ok(Json(SessionsResponse {
        sessions: list.into_iter().map(SessionResponse::from).collect(),
    }))
}

/// A malformed id cannot name one of the caller's sessions: 404, like any
/// other session that is not theirs.
pub async fn end_session(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    state
        .auth
        .end_session(&who, SessionId(id), &client, state.clock.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn change_password(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .change_password(
            &who,
            body.current_password,
            body.new_password,
            &client,
            state.clock.now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .auth
        .store()
        .ping()
        .await
        .map_err(|e| ApiError::Auth(crate::auth::AuthError::Unavailable(e)))?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

fn presented_token(
    state: &AppState,
    transport: Transport,
    jar: &CookieJar,
    body: &Bytes,
) -> Result<Option<RefreshToken>, ApiError> {
    match transport {
        Transport::Cookie => Ok(jar
            .get(&state.cookie.name)
            .map(|c| c.value())
            .filter(|v| !v.is_empty())
            .map(|v| RefreshToken::new(v.to_owned()))),
        Transport::Body => {
            if body.is_empty() {
                return Ok(None);
            }
            let parsed: RefreshBody = serde_json::from_slice(body).map_err(|e| {
                if e.is_data() {
                    ApiError::InvalidBody(e.to_string())
                } else {
                    ApiError::MalformedJson(e.to_string())
                }
            })?;
            Ok(Some(RefreshToken::new(parsed.refresh_token)))
        }
    }
}

/// 200 with the new tokens; the refresh token goes in the cookie, or in the
/// body when the client asked for it there (then no cookie is set).
fn token_response(
    state: &AppState,
    transport: Transport,
    jar: CookieJar,
    issued: Issued,
) -> Response {
    let mut body = TokenResponse {
        access_token: issued.access_token.expose().to_owned(),
        token_type: "Bearer",
        expires_in: issued.expires_in,
        session_id: issued.session_id,
        refresh_token: None,
    };
    let mut response = match transport {
        Transport::Body => {
            body.refresh_token = Some(issued.refresh_token.expose().to_owned());
            Json(body).into_response()
        }
        Transport::Cookie => {
            let cookie = refresh_cookie(
                &state.cookie,
                issued.refresh_token.expose().to_owned(),
                issued.refresh_max_age,
            );
            (jar.add(cookie), Json(body)).into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A response clears the refresh cookie only when the request carried one.
fn clear_if_carried(
    state: &AppState,
    transport: Transport,
    jar: CookieJar,
    status: StatusCode,
) -> Response {
    if transport == Transport::Cookie && jar.get(&state.cookie.name).is_some() {
        (status, jar.add(removal_cookie(&state.cookie))).into_response()
    } else {
        status.into_response()
    }
}
