//! Route handlers: translate HTTP to service calls and back. No business
//! rules live here beyond transport (cookie or body) and CSRF.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::cookies::{refresh_cookie, removal_cookie};
use super::csrf;
use super::error::{ApiError, parse_json};
use super::extract::{ApiJson, AuthUser, Client, Transport};
use super::limits::cookie_count;
use super::openapi::{
    Ambiguous, BearerRefused, CsrfRefused, EmailTaken, HeadersTooLarge, Internal,
    InvalidCredentials, MalformedJson, PasswordRefused, PayloadTooLarge, RateLimited,
    RefreshRefused, RequestTimeout, SessionNotFound, SignupDisabled, Unavailable,
    UnsupportedMediaType, ValidationFailed,
};
use crate::auth::{Issued, SessionView};
use crate::domain::{RefreshToken, SessionId, UserId};

/// A sign-in: any strings (an address that cannot be stored is simply unknown).
#[derive(Deserialize, ToSchema)]
pub struct CredentialsBody {
    /// Compared in its canonical form (NFKC, case-folded).
    email: String,
    password: String,
}

/// A new account. The lengths are the document's; the policy beyond them
/// (RFC 5322 grammar, look-alike characters, common passwords) answers 422.
#[derive(Deserialize, ToSchema)]
pub struct RegisterBody {
    /// Stored in its canonical form (NFKC, case-folded); at most 254 characters.
    #[schema(min_length = 1, max_length = 254)]
    email: String,
    /// 8 to 128 characters, not a common password.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
}

/// With `X-Refresh-Transport: body` only.
#[derive(Deserialize, ToSchema)]
pub struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    #[schema(value_type = uuid::Uuid)]
    id: UserId,
    /// The canonical form.
    email: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub enum TokenType {
    Bearer,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    token_type: TokenType,
    /// Seconds until the access token expires.
    #[schema(minimum = 0)]
    expires_in: u64,
    #[schema(value_type = uuid::Uuid)]
    session_id: SessionId,
    /// Only with `X-Refresh-Transport: body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    refresh_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordBody {
    current_password: String,
    /// 8 to 128 characters, not a common password.
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    #[schema(value_type = uuid::Uuid)]
    id: SessionId,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    #[schema(required = true)]
    user_agent: Option<String>,
    #[schema(required = true)]
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

#[derive(Serialize, ToSchema)]
pub struct SessionsResponse {
    /// Newest first.
    sessions: Vec<SessionResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    #[schema(value_type = uuid::Uuid)]
    id: UserId,
    email: String,
    #[schema(value_type = uuid::Uuid)]
    session_id: SessionId,
}

#[derive(Serialize, ToSchema)]
pub enum HealthStatus {
    #[serde(rename = "ok")]
    Ok,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: HealthStatus,
}

/// Create an account.
#[utoipa::path(
    post,
    path = "/register",
    tag = "auth",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered", body = UserResponse),
        (status = 400, response = inline(MalformedJson)),
        (status = 403, response = inline(SignupDisabled)),
        (status = 409, response = inline(EmailTaken)),
        (status = 408, response = inline(RequestTimeout)),
        (status = 413, response = inline(PayloadTooLarge)),
        (status = 415, response = inline(UnsupportedMediaType)),
        (status = 422, response = inline(ValidationFailed)),
        (status = 431, response = inline(HeadersTooLarge)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<RegisterBody>,
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

/// Sign in: a new session, an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/login",
    tag = "auth",
    params(
        ("X-Refresh-Transport" = Option<String>, Header, description = "`body`: the refresh token travels as `refresh_token` in the JSON bodies and no cookie is set (native clients); otherwise the cookie"),
    ),
    request_body = CredentialsBody,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse,
            headers(("Set-Cookie" = String, description = "The refresh cookie (not with `X-Refresh-Transport: body`)"))),
        (status = 400, response = inline(MalformedJson)),
        (status = 401, response = inline(InvalidCredentials)),
        (status = 408, response = inline(RequestTimeout)),
        (status = 413, response = inline(PayloadTooLarge)),
        (status = 415, response = inline(UnsupportedMediaType)),
        (status = 422, response = inline(ValidationFailed)),
        (status = 429, response = inline(RateLimited)),
        (status = 431, response = inline(HeadersTooLarge)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
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

/// Rotate the refresh token: a new access token and a new refresh token.
/// Inside the reuse grace window a repeated token gets the same successor.
#[utoipa::path(
    post,
    path = "/refresh",
    tag = "auth",
    params(
        ("X-Refresh-Transport" = Option<String>, Header, description = "`body`: the refresh token travels as `refresh_token` in the JSON bodies and no cookie is set (native clients); otherwise the cookie"),
        ("X-Requested-With" = Option<String>, Header, description = "Any value; needed unless the request is `Content-Type: application/json` (CSRF)"),
    ),
    request_body(content = Option<RefreshBody>, description = "`{\"refresh_token\": …}` with `X-Refresh-Transport: body`; otherwise ignored (send `{}` as JSON)"),
    security(("refresh_cookie" = []), ()),
    responses(
        (status = 200, description = "Rotated", body = TokenResponse,
            headers(("Set-Cookie" = String, description = "The new refresh cookie (not with `X-Refresh-Transport: body`)"))),
        (status = 400, response = inline(MalformedJson)),
        (status = 401, response = inline(RefreshRefused)),
        (status = 403, response = inline(CsrfRefused)),
        (status = 408, response = inline(RequestTimeout)),
        (status = 413, response = inline(PayloadTooLarge)),
        (status = 422, response = inline(ValidationFailed)),
        (status = 431, response = inline(HeadersTooLarge)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    jar: CookieJar,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    csrf::check(&headers, &state.origins)?;
    single_cookie(&state, &headers)?;
    let body = body?;
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

/// End this session (its whole token family). Idempotent: no token, an
/// unusable one or an ended session all answer 204.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "auth",
    params(
        ("X-Refresh-Transport" = Option<String>, Header, description = "`body`: the refresh token travels as `refresh_token` in the JSON bodies and no cookie is set (native clients); otherwise the cookie"),
        ("X-Requested-With" = Option<String>, Header, description = "Any value; needed unless the request is `Content-Type: application/json` (CSRF)"),
    ),
    request_body(content = Option<RefreshBody>, description = "`{\"refresh_token\": …}` with `X-Refresh-Transport: body`; otherwise ignored"),
    security(("refresh_cookie" = []), ()),
    responses(
        (status = 204, description = "Signed out",
            headers(("Set-Cookie" = String, description = "Clears the refresh cookie when the request carried one"))),
        (status = 400, response = inline(Ambiguous)),
        (status = 403, response = inline(CsrfRefused)),
        (status = 408, response = inline(RequestTimeout)),
        (status = 413, response = inline(PayloadTooLarge)),
        (status = 431, response = inline(HeadersTooLarge)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    jar: CookieJar,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    csrf::check(&headers, &state.origins)?;
    single_cookie(&state, &headers)?;
    let body = body?;
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

/// End every session of the caller.
#[utoipa::path(
    post,
    path = "/logout-all",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session ended",
            headers(("Set-Cookie" = String, description = "Clears the refresh cookie when the request carried one"))),
        (status = 400, response = inline(Ambiguous)),
        (status = 401, response = inline(BearerRefused)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
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

/// The caller.
#[utoipa::path(
    get,
    path = "/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = MeResponse),
        (status = 400, response = inline(Ambiguous)),
        (status = 401, response = inline(BearerRefused)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn me(AuthUser(who): AuthUser) -> Json<MeResponse> {
    Json(MeResponse {
        id: who.user_id,
        email: who.email.to_string(),
        session_id: who.session_id,
    })
}

/// The caller's live sessions.
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Live sessions, newest first", body = SessionsResponse),
        (status = 400, response = inline(Ambiguous)),
        (status = 401, response = inline(BearerRefused)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn sessions(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Json<SessionsResponse>, ApiError> {
    let list = state.auth.sessions(&who, state.clock.now()).await?;
    Ok(Json(SessionsResponse {
        sessions: list.into_iter().map(SessionResponse::from).collect(),
    }))
}

/// End one of the caller's sessions. A malformed id cannot name one of them:
/// 404, like any other session that is not theirs.
#[utoipa::path(
    delete,
    path = "/sessions/{id}",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "A session id from `GET /sessions`")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, response = inline(Ambiguous)),
        (status = 401, response = inline(BearerRefused)),
        (status = 404, response = inline(SessionNotFound)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn end_session(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Client(client): Client,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id
        .ok()
        .and_then(|Path(id)| uuid::Uuid::parse_str(&id).ok())
        .ok_or(ApiError::NotFound)?;
    state
        .auth
        .end_session(&who, SessionId(id), &client, state.clock.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change the caller's password; every other session ends.
#[utoipa::path(
    post,
    path = "/password",
    tag = "sessions",
    request_body = PasswordBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Changed; the caller's session lives on"),
        (status = 400, response = inline(MalformedJson)),
        (status = 401, response = inline(PasswordRefused)),
        (status = 408, response = inline(RequestTimeout)),
        (status = 413, response = inline(PayloadTooLarge)),
        (status = 415, response = inline(UnsupportedMediaType)),
        (status = 422, response = inline(ValidationFailed)),
        (status = 429, response = inline(RateLimited)),
        (status = 431, response = inline(HeadersTooLarge)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
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

/// The process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses(
        (status = 200, description = "Alive", body = Health),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

/// The database answers (within a second).
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state
        .auth
        .store()
        .ping()
        .await
        .map_err(|e| ApiError::Auth(crate::auth::AuthError::Unavailable(e)))?;
    Ok(Json(Health {
        status: HealthStatus::Ok,
    }))
}

pub async fn not_found() -> ApiError {
    ApiError::NoRoute
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Two refresh cookies (one `Cookie` header or several): which one a
/// cookie parser keeps is not something to leave to chance.
fn single_cookie(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if cookie_count(headers, &state.cookie.name) > 1 {
        Err(ApiError::Ambiguous("refresh cookie"))
    } else {
        Ok(())
    }
}

/// Every JSON request body the API reads, by the route that reads it
/// (`/register`, `/login`, `/password`; `/refresh` and `/logout` with
/// `X-Refresh-Transport: body`), parsed exactly as that route parses it once
/// the content type is right: `Ok` or a 4xx problem with a stable code. For
/// the property tests and the fuzz targets (fuzz/).
pub fn parse_request_body(route: &str, body: &[u8]) -> Result<(), ApiError> {
    fn extracted<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(), ApiError> {
        Json::<T>::from_bytes(body)
            .map(drop)
            .map_err(ApiError::from)
    }
    match route {
        "/register" => extracted::<RegisterBody>(body),
        "/login" => extracted::<CredentialsBody>(body),
        "/password" => extracted::<PasswordBody>(body),
        "/refresh" | "/logout" => parse_json::<RefreshBody>(body).map(drop),
        _ => Err(ApiError::NoRoute),
    }
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
            let parsed: RefreshBody = parse_json(body)?;
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
        token_type: TokenType::Bearer,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROUTES: [&str; 5] = ["/register", "/login", "/password", "/refresh", "/logout"];
    const FIELDS: [&str; 5] = [
        "email",
        "password",
        "current_password",
        "new_password",
        "refresh_token",
    ];

    /// Bodies: arbitrary bytes, arbitrary JSON, and objects with our field
    /// names holding values of any type, duplicated, or next to others.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            "\\PC{0,20}".prop_map(|s| serde_json::Value::from(s).to_string()),
            Just("\"\\u0000\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
        ];
        let key = prop_oneof![
            prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
            "[a-zA-Z_\\PC]{0,12}",
        ];
        let object = prop::collection::vec((key, leaf), 0..5).prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k)))
                .collect();
            format!("{{{}}}", members.join(","))
        });
        prop_oneof![
            object.prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..200),
            "[ -~]{0,200}".prop_map(String::into_bytes),
            Just(b"{\"email\":\"a@example.com\",\"password\":\"x\"} trailing".to_vec()),
            Just(b"[".repeat(4096)),
        ]
    }

    /// Every name a problem's detail quotes between backticks.
    fn quoted(detail: &str) -> Vec<&str> {
        detail.split('`').skip(1).step_by(2).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes on any JSON route: accepted, or a 4xx problem with a
        /// stable code whose detail names only our own fields, never a
        /// panic.
        #[test]
        fn any_body_is_accepted_or_a_stable_4xx(
            route in prop::sample::select(ROUTES.to_vec()),
            body in body(),
        ) {
            if let Err(e) = parse_request_body(route, &body) {
                let (status, code, _) = e.parts();
                prop_assert!(status.is_client_error(), "{} {}", status, code);
                prop_assert!(matches!(code, "malformed_json" | "validation_failed"), "{}", code);
                let detail = e.to_string();
                for name in quoted(&detail) {
                    let ours = FIELDS.contains(&name);
                    prop_assert!(ours, "{:?} quotes {:?}", detail, name);
                }
            }
        }

        /// Well-formed bodies of any string values are accepted.
        #[test]
        fn well_formed_bodies_are_accepted(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let creds = serde_json::json!({"email": a, "password": b}).to_string();
            prop_assert!(parse_request_body("/login", creds.as_bytes()).is_ok());
            prop_assert!(parse_request_body("/register", creds.as_bytes()).is_ok());
            let change = serde_json::json!({"current_password": a, "new_password": b}).to_string();
            prop_assert!(parse_request_body("/password", change.as_bytes()).is_ok());
            let refresh = serde_json::json!({"refresh_token": a}).to_string();
            prop_assert!(parse_request_body("/refresh", refresh.as_bytes()).is_ok());
        }

        /// The refresh cookie read from any `Cookie` header: never a panic;
        /// a well-formed one is found with its value.
        #[test]
        fn any_cookie_header_is_read_safely(
            junk in "[ -~]{0,200}",
            token in "[A-Za-z0-9._-]{1,200}",
        ) {
            let jar = |value: &str| {
                let mut headers = HeaderMap::new();
                headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
                CookieJar::from_headers(&headers)
            };
            let _ = jar(&junk).get("__Host-authd_rt");
            let ours = format!("__Host-authd_rt={token}");
            prop_assert_eq!(jar(&ours).get("__Host-authd_rt").map(|c| c.value().to_owned()), Some(token));
        }
    }
}
