//! The OpenAPI 3.1 document and the `/openapi.json` and `/docs` routes. The
//! document comes from the handlers' `#[utoipa::path]` annotations through
//! utoipa-axum's router, which registers each handler at the path and methods
//! its annotation names, so a served route and its documentation cannot
//! drift apart. Here: the problem+json responses a route can give, with the
//! codes each can carry, the security schemes, and the reference page.

use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{OpenApi, RefOr, ResponseBuilder};
use utoipa::{ToResponse, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// Security scheme names, as the handlers' `security(...)` refer to them.
pub const BEARER: &str = "bearer";
pub const REFRESH_COOKIE: &str = "refresh_cookie";
pub const SERVICE_CREDENTIAL: &str = "service_credential";

/// The HTML pages' policy: scripts and styles only from authd itself (the
/// reference page's web components set inline styles), no frames around them,
/// no plugins, no `<base>` rewriting, forms only back to authd.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

/// RapiDoc 9.3.8 (MIT; npm package `rapidoc`, `dist/rapidoc-min.js`),
/// embedded: the page loads nothing from elsewhere.
const RAPIDOC_JS: &str = include_str!("../../assets/rapidoc/rapidoc-min.js");
const RAPIDOC_PATH: &str = "/docs/rapidoc-9.3.8.min.js";

/// Response headers a problem can carry.
enum Header {
    RetryAfter,
    WwwAuthenticate,
    ClearCookie,
}

/// An `application/problem+json` response whose `status` and `code` are
/// exactly these.
fn problem(
    status: u16,
    description: &str,
    codes: &[&str],
    headers: &[Header],
) -> RefOr<utoipa::openapi::Response> {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("RFC 9457 problem details"))
        .property(
            "type",
            string()
                .pattern(Some("^urn:authd:problem:[a-z_]+$"))
                .description(Some("`urn:authd:problem:` + `code`")),
        )
        .required("type")
        .property("title", string())
        .required("title")
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        )
        .required("status")
        .property(
            "detail",
            string().description(Some("For people; never parse it")),
        )
        .required("detail")
        .property(
            "code",
            string()
                .enum_values(Some(codes.iter().copied()))
                .description(Some("Stable: branch on this")),
        )
        .required("code");
    let mut response = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new().schema(Some(schema)).build(),
    );
    for h in headers {
        let (name, schema, description) = match h {
            Header::RetryAfter => (
                "Retry-After",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
                "Seconds to wait before trying again",
            ),
            Header::WwwAuthenticate => (
                "WWW-Authenticate",
                string(),
                "`Bearer realm=\"authd\"`, with `error=\"invalid_token\"` when a token was presented (RFC 6750)",
            ),
            Header::ClearCookie => (
                "Set-Cookie",
                string(),
                "Clears the refresh cookie (`Max-Age=0`) when the request carried one",
            ),
        };
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(Some(schema))
                .description(Some(description))
                .build(),
        );
    }
    response.build().into()
}

/// A problem response usable as `response = inline(Name)` in a handler's
/// annotation.
macro_rules! problem_response {
    ($name:ident, $status:literal, $description:literal, [$($code:literal),+ $(,)?] $(, $header:ident)*) => {
        pub struct $name;
        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (
                    stringify!($name),
                    problem($status, $description, &[$($code),+], &[$(Header::$header),*]),
                )
            }
        }
    };
}

problem_response!(
    MalformedJson,
    400,
    "The body is not valid JSON (`malformed_json`), or a header or cookie that must appear once is repeated (`ambiguous_request`)",
    ["malformed_json", "ambiguous_request"]
);
problem_response!(
    Ambiguous,
    400,
    "A header or cookie that must appear once (`Origin`, `Authorization`, the refresh cookie) is repeated",
    ["ambiguous_request"]
);
problem_response!(
    InvalidQuery,
    400,
    "The query string is malformed",
    ["validation_failed"]
);
problem_response!(
    InvalidCredentials,
    401,
    "Wrong email or password",
    ["invalid_credentials"]
);
problem_response!(
    RefreshRefused,
    401,
    "No usable refresh token: the `code` says why",
    [
        "invalid_token",
        "token_expired",
        "refresh_token_reused",
        "session_revoked",
        "session_expired",
    ],
    ClearCookie
);
problem_response!(
    BearerRefused,
    401,
    "No usable access token",
    [
        "missing_token",
        "invalid_token",
        "token_expired",
        "session_revoked"
    ],
    WwwAuthenticate
);
problem_response!(
    PasswordRefused,
    401,
    "No usable access token, or the current password is wrong (`invalid_credentials`, without `WWW-Authenticate`)",
    [
        "missing_token",
        "invalid_token",
        "token_expired",
        "session_revoked",
        "invalid_credentials"
    ],
    WwwAuthenticate
);
problem_response!(
    ServiceCredentialRefused,
    401,
    "No or a wrong service credential",
    ["missing_token", "invalid_token"],
    WwwAuthenticate
);
problem_response!(
    SignupDisabled,
    403,
    "Sign-up is disabled",
    ["signup_disabled"]
);
problem_response!(
    CsrfRefused,
    403,
    "Refused before anything else: an `Origin` that is not allowed (`origin_not_allowed`); `Sec-Fetch-Site: cross-site` without an `Origin`, or a request a form could make (`csrf_rejected`)",
    ["origin_not_allowed", "csrf_rejected"]
);
problem_response!(
    SessionNotFound,
    404,
    "No live session of the caller has this id",
    ["not_found"]
);
problem_response!(
    EmailTaken,
    409,
    "The email is already registered",
    ["email_taken"]
);
problem_response!(
    RequestTimeout,
    408,
    "The body did not arrive within `REQUEST_TIMEOUT`",
    ["request_timeout"]
);
problem_response!(
    PayloadTooLarge,
    413,
    "The body is over 16 KiB, or its `Content-Length` says so (refused before it is read)",
    ["payload_too_large"]
);
problem_response!(
    UnsupportedMediaType,
    415,
    "Send `Content-Type: application/json`",
    ["unsupported_media_type"]
);
problem_response!(
    ValidationFailed,
    422,
    "A field is missing, of the wrong type, or breaks a rule (the detail names it)",
    ["validation_failed"]
);
problem_response!(
    HeadersTooLarge,
    431,
    "The request headers are over 16 KiB (over 64 KiB, hyper answers 431 itself, with no body, and closes the connection)",
    ["headers_too_large"]
);
problem_response!(
    RateLimited,
    429,
    "Too many failed attempts: locked for a while",
    ["rate_limited"],
    RetryAfter
);
problem_response!(
    Internal,
    500,
    "Internal error; the detail never says more",
    ["internal"]
);
problem_response!(
    Unavailable,
    503,
    "The database, the password hasher or the request deadline: retry after `Retry-After`",
    ["unavailable"],
    RetryAfter
);

/// The document's fixed parts; the routes add their paths.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "authd",
        description = "Authentication service: login, rotating refresh tokens with reuse detection, sessions. \
            Every error is `application/problem+json` with a stable `code`. The refresh token travels in an \
            HttpOnly cookie, or in JSON bodies when a request sends `X-Refresh-Transport: body`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    tags(
        (name = "auth", description = "Sign-up, sign-in, token rotation, sign-out"),
        (name = "sessions", description = "The caller's sessions and password"),
        (name = "health", description = "Liveness and readiness"),
        (name = "revocations", description = "Ended sessions, for other services (service credential)"),
        (name = "meta", description = "This document, its reference page, metrics, the demo"),
    )
)]
struct Base;

/// What the published document says about this deployment.
pub struct Deployment<'a> {
    pub base_path: &'a str,
    pub public_url: Option<&'a str>,
    pub cookie_name: &'a str,
}

/// The routes' document completed for this deployment: servers (the base
/// path, behind `PUBLIC_URL` when set) and the security schemes, with the
/// refresh cookie under its configured name.
pub fn finish(mut doc: OpenApi, deployment: &Deployment<'_>) -> OpenApi {
    let base = <Base as utoipa::OpenApi>::openapi();
    doc.info = base.info;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.tags = base.tags;
    let prefix = if deployment.base_path == "/" {
        ""
    } else {
        deployment.base_path
    };
    doc.servers = match deployment.public_url {
        Some(origin) => Some(vec![Server::new(format!("{origin}{prefix}"))]),
        // Without one, "/" is the default: leaving it out keeps tools from
        // joining "/" and "/login" into "//login".
        None if prefix.is_empty() => None,
        None => Some(vec![Server::new(prefix)]),
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "The access token from `/login` or `/refresh` (`typ: at+jwt`, HS256, 15 minutes by default)",
                ))
                .build(),
        ),
    );
    let mut cookie = ApiKeyValue::new(deployment.cookie_name);
    cookie.description = Some(
        "The refresh token, an HttpOnly cookie set by `/login` and `/refresh`. \
         Native clients send `X-Refresh-Transport: body` and use the `refresh_token` JSON field instead."
            .to_owned(),
    );
    components.add_security_scheme(
        REFRESH_COOKIE,
        SecurityScheme::ApiKey(ApiKey::Cookie(cookie)),
    );
    components.add_security_scheme(
        SERVICE_CREDENTIAL,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`REVOCATIONS_TOKEN`, the credential of services reading the revocation feed",
                ))
                .build(),
        ),
    );
    doc
}

/// The published document and reference page, built once per router.
#[derive(Clone)]
pub struct Published {
    json: Bytes,
    page: Bytes,
}

impl Published {
    pub fn new(doc: &OpenApi, base_path: &str) -> Self {
        let prefix = if base_path == "/" { "" } else { base_path };
        let mut json = serde_json::to_value(doc).unwrap_or_default();
        tidy(&mut json);
        let json = json.to_string();
        let page = DOCS_HTML
            .replace("{{openapi}}", &format!("{prefix}/openapi.json"))
            .replace("{{rapidoc}}", &format!("{prefix}{RAPIDOC_PATH}"));
        Self {
            json: Bytes::from(json),
            page: Bytes::from(page),
        }
    }
}

/// Two things utoipa writes that these routes do not mean: an optional
/// header parameter becomes nullable (`type: [string, null]`; a header is
/// absent, never null), and an optional JSON body becomes `oneOf: [T, null]`
/// (the body may be left out; `null` is not one these routes take).
fn tidy(doc: &mut serde_json::Value) {
    use serde_json::Value;
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        for parameter in operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(Value::Array(types)) = parameter.pointer_mut("/schema/type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    parameter["schema"]["type"] = only;
                }
            }
        }
        for media in operation
            .pointer_mut("/requestBody/content")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|content| content.values_mut())
        {
            let Some(Value::Array(choices)) = media.pointer("/schema/oneOf") else {
                continue;
            };
            let not_null: Vec<Value> = choices
                .iter()
                .filter(|c| c.get("type").is_none_or(|t| t != "null"))
                .cloned()
                .collect();
            if let [only] = not_null.as_slice() {
                media["schema"] = only.clone();
            }
        }
    }
}

/// Web fonts stay off (`load-fonts`, `regular-font`, `mono-font`): RapiDoc's
/// default font comes from Google's servers. The empty icon spares the
/// browser a request for /favicon.ico.
const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>authd API reference</title>
  <link rel="icon" href="data:,">
  <script type="module" src="{{rapidoc}}"></script>
</head>
<body>
  <rapi-doc spec-url="{{openapi}}" render-style="read" show-header="false"
    allow-spec-url-load="false" allow-spec-file-load="false" allow-server-selection="false"
    load-fonts="false" regular-font="system-ui, sans-serif" mono-font="ui-monospace, monospace"
    schema-description-expanded="true" default-schema-tab="schema"></rapi-doc>
</body>
</html>
"#;

/// The document, the reference page and its script.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
        .routes(routes!(rapidoc_js))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = inline(Object)),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn openapi_json(Extension(published): Extension<Published>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        published.json,
    )
        .into_response()
}

/// The API reference page (RapiDoc, served from the binary).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "meta",
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn docs(Extension(published): Extension<Published>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
        ],
        published.page,
    )
        .into_response()
}

/// The reference page's script; its name carries its version, so it may be
/// cached for good.
#[utoipa::path(
    get,
    path = "/docs/rapidoc-9.3.8.min.js",
    tag = "meta",
    responses(
        (status = 200, description = "JavaScript", content_type = "text/javascript", body = String),
        (status = 500, response = inline(Internal)),
        (status = 503, response = inline(Unavailable)),
    )
)]
pub async fn rapidoc_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        RAPIDOC_JS,
    )
        .into_response()
}

/// Any JSON object (the document's own schema is OpenAPI's).
#[derive(ToSchema)]
#[schema(as = OpenApiDocument)]
pub struct Object(#[allow(dead_code)] serde_json::Map<String, serde_json::Value>);
