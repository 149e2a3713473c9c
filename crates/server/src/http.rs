//! The HTTP API: routes, bearer-key auth with scopes, body and time limits, JSON errors
//! with stable codes, metrics, and a graceful shutdown that finishes in-flight requests.
//!
//! Every error is a JSON body `{"error": CODE, "message": TEXT}` whose `error` is one of
//! [`ErrorCode`]s and never changes meaning; `message` is for people and may change. Malformed
//! input is a 4xx, never a 500: the only 5xx are a failing store (503), a request that ran
//! out of time (503), and bugs (500).

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use codereader_otp::{Code, CodeError};
use codereader_verifier::{Caller, ClientId, Outcome, OwnedSubject};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::apikeys::{ApiKeys, ClientCertificate, Refusal, Scope};
use crate::error_code::ErrorCode;
use crate::metrics::Metrics;
use crate::sealwatch::SealWatch;
use crate::service::{self, Enrollment, Library, ServiceError, Verdict};
use crate::webhooks::Webhooks;
use crate::wire;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    /// Seconds for a Retry-After header.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this stable code (and the status it carries) and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = wire::ErrorBody {
            error: self.code,
            message: &self.message,
        };
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        match error {
            ServiceError::Invalid { code, .. } | ServiceError::Conflict { code, .. } => {
                Self::new(code, message)
            }
            ServiceError::NotFound { .. } => Self::new(ErrorCode::UnknownToken, message),
            ServiceError::Store(_) => Self::new(
                ErrorCode::StoreUnavailable,
                "the token store is unavailable; retry later",
            ),
            // The module's own words stay in the log (its key's id and URI are no business
            // of a caller).
            ServiceError::KeyUnavailable(_) => Self::new(
                ErrorCode::StoreUnavailable,
                "the key-encryption key is unavailable; retry later",
            ),
            _ => Self::new(ErrorCode::Internal, message),
        }
    }
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes, except for imports.
    pub max_body: usize,
    /// Largest PSKC import body, in bytes.
    pub max_import_body: usize,
    /// Longest time one request may take.
    pub request_timeout: Duration,
    /// Longest time a request's body may take to arrive, counted from the end of its head;
    /// a body still incomplete then is a 408 `body_timeout` (the client's fault), never a
    /// 5xx. A body still arriving when `request_timeout` runs out is a 408 too.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 64 * 1024,
            max_import_body: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(5),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    library: Arc<Library>,
    keys: RwLock<Arc<ApiKeys>>,
    metrics: Metrics,
    store_calls: Arc<Semaphore>,
    queued_verifies: Arc<Semaphore>,
    /// Least time a `rejected` verification takes to answer (zero: no floor).
    rejected_floor: Duration,
    seals: SealWatch,
    /// Webhook destinations' delivery, for `/metrics` and `/healthz`.
    webhooks: Option<Arc<Webhooks>>,
}

/// Most verifications handed to a store's own thread and not answered yet; more wait (holding
/// no thread) until one is answered, so an overload cannot grow the store's queue without
/// bound. Far above what one SQLite writer commits in one batch.
const MAX_QUEUED_VERIFIES: usize = 4096;

impl AppState {
    /// A server for `library`, admitting `keys`, running at most `store_concurrency` store
    /// calls at once (the others wait their turn in a fair queue, holding no thread, rather
    /// than contending inside the store for connections or locks).
    pub fn new(library: Arc<Library>, keys: ApiKeys, store_concurrency: usize) -> Self {
        AppState {
            library,
            keys: RwLock::new(Arc::new(keys)),
            metrics: Metrics::default(),
            store_calls: Arc::new(Semaphore::new(store_concurrency.max(1))),
            queued_verifies: Arc::new(Semaphore::new(MAX_QUEUED_VERIFIES)),
            rejected_floor: Duration::ZERO,
            seals: SealWatch::default(),
            webhooks: None,
        }
    }

    /// Reports these webhook destinations in `/metrics` and `/healthz`.
    #[must_use]
    pub fn with_webhooks(mut self, webhooks: Arc<Webhooks>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Makes every `rejected` verification take at least `floor` to answer, waiting
    /// without holding a thread. With unknown serials answered like wrong codes, the store
    /// work still differs (a wrong code updates its token, an unknown serial only writes an
    /// audit line: 1.9 against 1.25 ms on SQLite in a debug build), so without a floor
    /// above that difference the time would tell them apart.
    #[must_use]
    pub fn with_rejected_floor(mut self, floor: Duration) -> Self {
        self.rejected_floor = floor;
        self
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Replaces the admitted keys (after the API-key file changed); requests already past
    /// the auth check are not affected.
    pub fn replace_keys(&self, keys: ApiKeys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    fn keys(&self) -> Arc<ApiKeys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

type Shared = Arc<AppState>;

/// Who made a request: the name of its API key, recorded in the audit trail.
#[derive(Debug, Clone)]
struct CallerName(String);

/// Every route of the API, with the scope a key needs for it (`None`: no key). The router
/// is made from this list, and a test checks that `openapi.yaml` documents each of its
/// paths, so a route is added in one place.
pub(crate) fn routes(limits: Limits) -> [(&'static str, Option<Scope>, MethodRouter<Shared>); 11] {
    [
        ("/v1/verify", Some(Scope::Verify), post(verify)),
        (
            "/v1/tokens",
            Some(Scope::Admin),
            post(enroll).get(list_tokens),
        ),
        (
            "/v1/tokens/import",
            Some(Scope::Admin),
            post(import).layer(DefaultBodyLimit::max(limits.max_import_body)),
        ),
        (
            "/v1/tokens/{serial}",
            Some(Scope::Admin),
            get(show).delete(disable),
        ),
        (
            "/v1/tokens/{serial}/activate",
            Some(Scope::Admin),
            post(activate),
        ),
        (
            "/v1/tokens/{serial}/resync",
            Some(Scope::Admin),
            post(resync),
        ),
        (
            "/v1/tokens/{serial}/unlock",
            Some(Scope::Admin),
            post(unlock),
        ),
        ("/v1/tokens/{serial}/audit", Some(Scope::Admin), get(audit)),
        ("/v1/events", Some(Scope::Admin), get(events)),
        ("/healthz", None, get(healthz)),
        ("/metrics", None, get(metrics)),
    ]
}

/// The application: [`routes`], each group of one scope behind its key check, and the
/// middleware every request goes through.
pub fn router(state: Shared, limits: Limits) -> Router {
    let (mut open, mut verify, mut admin) = (Router::new(), Router::new(), Router::new());
    for (path, scope, method) in routes(limits) {
        match scope {
            None => open = open.route(path, method),
            Some(Scope::Verify) => verify = verify.route(path, method),
            Some(Scope::Admin) => admin = admin.route(path, method),
        }
    }
    let scoped = |routes: Router<Shared>, scope| {
        routes.route_layer(middleware::from_fn_with_state(
            (state.clone(), scope),
            require_scope,
        ))
    };
    open.merge(scoped(verify, Scope::Verify))
        .merge(scoped(admin, Scope::Admin))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(middleware::from_fn_with_state(
            (state.clone(), limits),
            time_limit,
        ))
        .with_state(state)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The SIGTERM handler is installed when this is
/// called (inside the runtime), not when the future is first polled, so a SIGTERM that
/// arrives right after the server announced itself still drains instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate())
            .map_err(|e| eprintln!("codereader-verifier: cannot watch SIGTERM ({e}); Ctrl-C only"))
            .ok()
    };
    let interrupt = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt => {}
            }
            return;
        }
        let _ = interrupt.await;
    }
}

async fn time_limit(
    State((state, limits)): State<(Shared, Limits)>,
    request: Request,
    next: Next,
) -> Response {
    let limit = limits.request_timeout;
    let (request, body) = BodyDeadline::wrap(request, limits.body_timeout);
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(_) if body.expired() => body_timeout(limits.body_timeout),
        Ok(response) => response,
        Err(_) if body.waiting() => body_timeout(limit.min(limits.body_timeout)),
        // The store call may still complete in its blocking thread; the client only learns
        // that the answer did not come in time (and may retry: a used code then says "replayed").
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    };
    state.metrics.record_status(response.status().as_u16());
    response
}

async fn require_scope(
    State((state, scope)): State<(Shared, Scope)>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        });
    let keys = state.keys();
    let now = crate::apikeys::unix_now();
    // A bearer key if there is one; else a client certificate registered as a key (mutual
    // TLS standing in for bearer keys).
    let checked = match (presented, request.extensions().get::<ClientCertificate>()) {
        (Some(presented), _) => keys.check(presented.as_bytes(), now),
        (None, Some(certificate)) => keys.check_certificate(certificate, now),
        (None, None) => {
            return unauthorized("an `Authorization: Bearer KEY` header is required");
        }
    };
    let entry = match checked {
        Ok(entry) => entry,
        Err(Refusal::Expired) => return unauthorized("the API key has expired"),
        Err(_) if presented.is_none() => {
            return unauthorized("no bearer key, and the client certificate is not registered");
        }
        Err(_) => return unauthorized("unknown API key"),
    };
    if entry.scope != scope {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!("this call needs a key with scope '{scope}'"),
        )
        .into_response();
    }
    let caller = CallerName(format!("api:{}", entry.name));
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take this method",
    )
}

async fn healthz(State(state): State<Shared>) -> Response {
    // A store round trip: a server whose database is gone is not healthy (503).
    match blocking(&state, |s| s.ping()).await {
        Ok(()) => seal_health(&state),
        Err(error) => error.into_response(),
    }
}

/// Counts a seed that did not open and logs it, once per token and keyring.
fn note_seal_error(state: &Shared, serial: &str, missing_key: bool, message: &str) {
    state.metrics.record_seal_error();
    let generation = state.library.keyring_generation();
    if state.seals.record(generation, serial, missing_key) {
        let hint = if missing_key {
            " (the keyring is behind a rotation: SIGHUP reloads it)"
        } else {
            ""
        };
        eprintln!("codereader-verifier: {message}{hint}");
    }
}

/// `/healthz` once the store answered: `ok`, or `degraded` while the keyring in use has met
/// seeds it cannot open (503 if it lacks their key: see the `sealwatch` module).
fn seal_health(state: &Shared) -> Response {
    let health = state.seals.health(state.library.keyring_generation());
    let failing = state
        .webhooks
        .as_ref()
        .map(|w| w.failing())
        .filter(|f| !f.is_empty());
    if health.missing_key == 0 && health.unopenable == 0 {
        let body = wire::Health {
            message: failing
                .is_some()
                .then_some("webhook destinations are failing; see the log"),
            seal_errors: None,
            status: if failing.is_some() { "degraded" } else { "ok" },
            webhooks_failing: failing,
        };
        return axum::Json(body).into_response();
    }
    let status = if health.missing_key > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = wire::Health {
        message: Some("seeds did not open under this server's keyring; see the log"),
        seal_errors: Some(wire::SealErrors {
            missing_key: health.missing_key,
            unopenable: health.unopenable,
        }),
        status: "degraded",
        webhooks_failing: failing,
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        {
            let mut text = state.metrics.render();
            if let Some(webhooks) = &state.webhooks {
                webhooks.render(&mut text);
            }
            text
        },
    )
        .into_response()
}

/// Reads a JSON body into `T`, with stable error codes for each way it can be wrong.
fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(body_error)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                ErrorCode::InvalidRequest,
                without_value(&without_field_name(&e.to_string())),
            ),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(ErrorCode::InvalidJson, format!("the body is not JSON: {e}"))
            }
        }
    })
}

/// serde's "invalid type: integer `482915`, expected a string" without the value: a code
/// or secret sent with the wrong type must not come back in the message (callers log
/// messages). Field names and the expected type stay, they are what helps.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        // The expected part is serde's own text and follows the value; the value may
        // contain anything, so look for the last ", expected ".
        let Some(at) = rest.rfind(", expected ") else {
            return format!("{prefix}a value of the wrong type");
        };
        let (unexpected, expected) = rest.split_at(at);
        // "integer `5`", "string \"abc\"", "floating point `1.5`": keep the kind only.
        let kind = unexpected
            .split(['`', '"'])
            .next()
            .unwrap_or_default()
            .trim_end();
        return format!("{prefix}{kind}{expected}");
    }
    message.to_owned()
}

/// serde's "unknown field `482915`, expected one of `token`, `user`, `code`" without the
/// name: a field that is not part of the API may be a code or a secret pasted in the wrong
/// place (`{"token":"SN-1","482915":""}`), so no part of it comes back. The documented
/// names that are expected, and where the field is, stay.
fn without_field_name(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field ") else {
        return message.to_owned();
    };
    // serde's own text follows the name and holds no ", expected " or ", there are no
    // fields"; the name may hold anything, so look for the last one.
    let tail = rest
        .rfind(", expected ")
        .or_else(|| rest.rfind(", there are no fields"))
        .map_or("", |at| &rest[at..]);
    // serde_json appends " at line L column C" after serde's text; keep it when the tail
    // was found (it is part of the tail), else there is nothing safe to keep.
    format!("unknown field (its name is not repeated){tail}")
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            "the request body is larger than the server accepts",
        )
    } else {
        ApiError::new(ErrorCode::InvalidRequest, rejection.body_text())
    }
}

fn path_serial(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(serial)| serial)
        .map_err(|e| ApiError::new(ErrorCode::InvalidId, e.body_text()))
}

fn parse_code(field: &str, text: &str) -> Result<Code, ApiError> {
    Code::parse(text).map_err(|e| {
        let why = match e {
            CodeError::Empty => "is empty".to_owned(),
            CodeError::WrongLength { len } => format!("has {len} characters; 6 to 8 are needed"),
            CodeError::NotDigit { position } => {
                format!("has a character other than 0-9 at position {position}")
            }
            _ => "is not 6 to 8 ASCII digits".to_owned(),
        };
        ApiError::new(ErrorCode::InvalidCode, format!("`{field}` {why}"))
    })
}

/// Runs a blocking library call off the async threads; counts store errors.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    call: impl FnOnce(&Library) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    let library = state.library.clone();
    // The permit travels with the blocking call, so a request that times out does not free
    // its slot while its store call is still running.
    let permit = state
        .store_calls
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(ErrorCode::StoreUnavailable, "the server is shutting down"))?;
    let result = tokio::task::spawn_blocking(move || {
        let result = call(&library);
        drop(permit);
        result
    })
    .await;
    answer(state, result.ok())
}

/// A service call's result as the API answers it (`None`: the call never answered, e.g. it
/// panicked); counts and logs store errors.
fn answer<T>(state: &Shared, result: Option<Result<T, ServiceError>>) -> Result<T, ApiError> {
    match result {
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => {
            if matches!(error, ServiceError::Store(_)) {
                state.metrics.record_store_error();
                eprintln!("codereader-verifier: {error}");
            }
            // Not logged per request: the key logs when it loses and regains its module.
            if matches!(error, ServiceError::KeyUnavailable(_)) {
                state.metrics.record_key_unavailable();
            }
            if let ServiceError::Seal {
                serial,
                missing_key,
                message,
            } = &error
            {
                note_seal_error(state, serial, *missing_key, message);
            }
            Err(error.into())
        }
        None => Err(ApiError::new(ErrorCode::Internal, "internal error")),
    }
}

/// Verifies through the library's one asynchronous call: the verification runs where the
/// store writes (SQLite's writer thread) and the answer comes back through a oneshot once
/// it is committed, so the request waits holding no thread.
async fn verify_code(
    state: &Shared,
    subject: OwnedSubject,
    code: Code,
    caller: Caller,
    client: Option<ClientId>,
) -> Result<Verdict, ApiError> {
    // At most `MAX_QUEUED_VERIFIES` handed over and not answered yet; the permit is
    // released when the answer comes, whether or not the request is still waiting for it.
    let permit = state
        .queued_verifies
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(ErrorCode::StoreUnavailable, "the server is shutting down"))?;
    let (reply, verdict) = tokio::sync::oneshot::channel();
    state
        .library
        .verify_then(subject, code, caller, client.as_ref(), move |result| {
            drop(permit);
            // The request may have timed out and gone; the work is done and audited anyway.
            let _ = reply.send(result);
        });
    answer(state, verdict.await.ok())
}

fn caller_of(request_caller: Option<axum::Extension<CallerName>>) -> String {
    request_caller.map_or_else(|| "api:unknown".to_owned(), |c| c.0.0.clone())
}

/// 429 `rate_limited` with Retry-After, for a client that has spent its failure budget.
fn rate_limited(retry_at: u64) -> ApiError {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let wait = retry_at.saturating_sub(now).max(1);
    let mut error = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many failed attempts from this client; retry in {wait} s"),
    );
    error.retry_after = Some(wait);
    error
}

async fn verify(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<wire::Decision>, ApiError> {
    let request: wire::VerifyRequest = parse_json(body)?;
    // Checked in this order: the shape, the code, the client, the subject's id.
    let subject = match (request.token, request.user) {
        (Some(token), None) => service::token_id(&token).map(OwnedSubject::Token),
        (None, Some(user)) => service::user_id(&user).map(OwnedSubject::User),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give exactly one of `token` and `user`",
            ));
        }
    };
    let code = parse_code("code", &request.code)?;
    let client = request
        .client
        .as_deref()
        .map(service::client_id)
        .transpose()?;
    let subject = subject?;
    let caller = service::caller(&caller_of(caller))?;
    let started = Instant::now();
    let verdict = verify_code(&state, subject, code, caller, client).await?;
    let decision = wire::Decision::try_from(&verdict)?;
    state
        .metrics
        .record_verify(decision.result(), started.elapsed());
    match verdict.outcome {
        Outcome::RateLimited { retry_at } => return Err(rate_limited(retry_at.0)),
        Outcome::Rejected { .. } => {
            tokio::time::sleep_until((started + state.rejected_floor).into()).await;
        }
        _ => {}
    }
    Ok(axum::Json(decision))
}

async fn enroll(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: wire::EnrollRequest = parse_json(body)?;
    let enrollment = match (request.uri, request.secret) {
        (Some(uri), None) => {
            if request.kind.is_some()
                || request.algorithm.is_some()
                || request.digits.is_some()
                || request.period.is_some()
                || request.counter.is_some()
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "with `uri`, the parameters come from the URI; give no others",
                ));
            }
            Enrollment::Uri(uri)
        }
        (None, Some(secret)) => {
            let hotp = match request.kind.as_deref() {
                None | Some("totp") => false,
                Some("hotp") => true,
                Some(_) => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "`kind` is \"totp\" or \"hotp\"",
                    ));
                }
            };
            if !hotp && request.counter.is_some() || hotp && request.period.is_some() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "`counter` is for HOTP tokens and `period` for TOTP tokens",
                ));
            }
            Enrollment::Params {
                hotp,
                secret_base32: secret,
                algorithm: request.algorithm.unwrap_or_else(|| "SHA1".to_owned()),
                digits: request.digits.unwrap_or(6),
                period: request.period.unwrap_or(30),
                counter: request.counter.unwrap_or(0),
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give exactly one of `uri` and `secret`",
            ));
        }
    };
    let serial = service::token_id(&request.serial)?;
    let caller = service::caller(&caller_of(caller))?;
    let info = blocking(&state, move |lib| lib.enroll(&serial, &enrollment, &caller)).await?;
    Ok((StatusCode::CREATED, axum::Json(wire::Token::from(&info))).into_response())
}

async fn import(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<wire::Imported>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let (pskc, psk_hex) = if content_type == "application/json" {
        let request: wire::ImportRequest = parse_json(body)?;
        (request.pskc, request.preshared_key)
    } else if content_type.ends_with("/xml") || content_type.ends_with("+xml") {
        let body = body.map_err(body_error)?;
        let text = String::from_utf8(body.to_vec()).map_err(|_| {
            ApiError::new(ErrorCode::InvalidRequest, "the PSKC document is not UTF-8")
        })?;
        (text, None)
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json ({\"pskc\": ...}) or application/pskc+xml",
        ));
    };
    let psk = match psk_hex {
        Some(hex) => Some(zeroize::Zeroizing::new(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(hex.trim().as_bytes())
                .map_err(|_| {
                    ApiError::new(ErrorCode::InvalidRequest, "`preshared_key` must be hex")
                })?,
        )),
        None => None,
    };
    let caller = service::caller(&caller_of(caller))?;
    let report = blocking(&state, move |lib| {
        lib.import_pskc(&pskc, psk.as_ref().map(|k| k.as_slice()), false, &caller)
    })
    .await?;
    Ok(axum::Json(wire::Imported::from(&report)))
}

async fn show(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<wire::Token>, ApiError> {
    let serial = service::token_id(&path_serial(path)?)?;
    let info = blocking(&state, move |lib| lib.show(&serial)).await?;
    Ok(axum::Json(wire::Token::from(&info)))
}

async fn disable(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<wire::Token>, ApiError> {
    let serial = service::token_id(&path_serial(path)?)?;
    let caller = service::caller(&caller_of(caller))?;
    let info = blocking(&state, move |lib| lib.disable(&serial, &caller)).await?;
    Ok(axum::Json(wire::Token::from(&info)))
}

async fn unlock(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<wire::Token>, ApiError> {
    let serial = service::token_id(&path_serial(path)?)?;
    let caller = service::caller(&caller_of(caller))?;
    let info = blocking(&state, move |lib| lib.unlock(&serial, &caller)).await?;
    Ok(axum::Json(wire::Token::from(&info)))
}

async fn activate(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<wire::Activated>, ApiError> {
    let serial = path_serial(path)?;
    let request: wire::ActivateRequest = parse_json(body)?;
    let code = parse_code("code", &request.code)?;
    let serial = service::token_id(&serial)?;
    let user = service::user_id(&request.user)?;
    let caller = service::caller(&caller_of(caller))?;
    let asked = user.clone();
    let verdict = blocking(&state, move |lib| {
        lib.activate(&serial, &asked, &code, &caller)
    })
    .await?;
    Ok(axum::Json(wire::Activated::new(&verdict, &user)?))
}

async fn resync(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<wire::Decision>, ApiError> {
    let serial = path_serial(path)?;
    let request: wire::ResyncRequest = parse_json(body)?;
    let first = parse_code("code", &request.code)?;
    let second = parse_code("next_code", &request.next_code)?;
    let serial = service::token_id(&serial)?;
    let caller = service::caller(&caller_of(caller))?;
    let verdict = blocking(&state, move |lib| {
        lib.resync(&serial, &first, &second, &caller)
    })
    .await?;
    Ok(axum::Json(wire::Decision::try_from(&verdict)?))
}

/// How far a request's body has come: set by its [`BodyDeadline`], read by [`time_limit`]
/// to tell a client that stalled (408) from a server that did (503).
#[derive(Debug, Default)]
struct BodyProgress {
    /// The handler is waiting for bytes the client has not sent.
    waiting: std::sync::atomic::AtomicBool,
    /// The body deadline passed before the body was complete.
    expired: std::sync::atomic::AtomicBool,
}

impl BodyProgress {
    fn waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn expired(&self) -> bool {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A request body that fails once its deadline passes (a body shorter than its
/// Content-Length, or one sent a byte now and then), so that a stalled client costs the
/// server one timer, not a request slot until the request timeout, and gets a 4xx.
///
/// The timer is made only when the body first has to be waited for: a body that arrived with
/// its head (nearly every request) costs no timer registration and no allocation.
struct BodyDeadline {
    inner: axum::body::Body,
    /// When the body must be complete.
    due: tokio::time::Instant,
    /// Armed at the first wait for bytes.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    progress: Arc<BodyProgress>,
}

impl BodyDeadline {
    /// `request` with its body under a deadline `limit` from now, and the body's progress.
    fn wrap(request: Request, limit: Duration) -> (Request, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress::default());
        let shared = progress.clone();
        let request = request.map(|inner| {
            axum::body::Body::new(BodyDeadline {
                inner,
                due: tokio::time::Instant::now() + limit,
                deadline: None,
                progress: shared,
            })
        });
        (request, progress)
    }
}

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::sync::atomic::Ordering::Relaxed;
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.progress.waiting.store(false, Relaxed);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let due = this.due;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.progress.waiting.store(false, Relaxed);
                    this.progress.expired.store(true, Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new(
                        "the request body did not arrive in time",
                    ))));
                }
                this.progress.waiting.store(true, Relaxed);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // Keeps the Content-Length visible to the body cap, which refuses an announced
        // oversized body before reading it.
        self.inner.size_hint()
    }
}

/// 408 for a body that did not arrive within `limit`. The connection closes after it: the
/// rest of the body may still come, and would be read as the next request.
fn body_timeout(limit: Duration) -> Response {
    let mut response = ApiError::new(
        ErrorCode::BodyTimeout,
        format!(
            "the request body did not arrive within {} ms; send the whole body at once",
            limit.as_millis()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn audit(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<wire::AuditPage>, ApiError> {
    let serial = path_serial(path)?;
    let (limit, before) = wire::audit_query(query.as_deref())
        .map_err(|message| ApiError::new(ErrorCode::InvalidRequest, message))?;
    let serial = service::token_id(&serial)?;
    // One line more than asked tells whether there is a next page.
    let entries = blocking(&state, move |lib| lib.audit(&serial, before, limit + 1)).await?;
    Ok(axum::Json(wire::AuditPage::new(entries, limit)))
}

/// `GET /v1/events?after=ID&limit=N`: the events after `ID`, oldest first, for consumers
/// that poll (ids grow in commit order, so resuming after the last one misses none).
async fn events(
    State(state): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<wire::EventPage>, ApiError> {
    let (after, limit) = wire::events_query(query.as_deref())
        .map_err(|message| ApiError::new(ErrorCode::InvalidRequest, message))?;
    let events = blocking(&state, move |lib| lib.events_after(after, limit)).await?;
    let next = events.last().map_or(after, |e| e.id);
    Ok(axum::Json(wire::EventPage {
        events: events.iter().map(wire::EventBody::of).collect(),
        next,
    }))
}

async fn list_tokens(
    State(state): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<wire::TokenPage>, ApiError> {
    let (after, limit) = wire::list_query(query.as_deref())
        .map_err(|message| ApiError::new(ErrorCode::InvalidRequest, message))?;
    let after = after.as_deref().map(service::token_id).transpose()?;
    // One token more than asked tells whether there is a next page.
    let infos = blocking(&state, move |lib| lib.list_page(after.as_ref(), limit + 1)).await?;
    Ok(axum::Json(wire::TokenPage::new(infos, limit)))
}
