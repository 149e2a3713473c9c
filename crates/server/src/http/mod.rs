//! The HTTP API: routes, bearer-key auth with scopes, body and time limits, JSON errors
//! with stable codes, metrics, and a graceful shutdown that finishes in-flight requests.
//!
//! Every error is a JSON body `{"error": CODE, "message": TEXT}` whose `error` is an
//! [`ErrorCode`] and never changes meaning; `message` is for people and may change. Malformed
//! input is a 4xx, never a 500: the only 5xx are a failing store (503), a request that ran
//! out of time (503), and bugs (500).
//!
//! Three files, so that each answers one question: this one what every request goes through
//! (the route list, [`AppState`], the key check, the time limits, [`ApiError`]); `handlers`
//! what each endpoint does; `body` how a request body is bounded in time and read as JSON.

mod body;
mod handlers;

pub(crate) use body::AwaitingBody;

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tokio::sync::Semaphore;

use crate::apikeys::{ApiKeys, ClientCertificate, Refusal, Scope};
use crate::error_code::ErrorCode;
use crate::metrics::Metrics;
use crate::sealwatch::SealWatch;
use crate::service::{Library, ServiceError};
use crate::webhooks::Webhooks;
use crate::wire;

use body::{BodyDeadline, body_timeout};
use handlers::{
    activate, audit, disable, enroll, events, healthz, import, list_tokens, metrics, resync, show,
    unlock, verify,
};

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

/// The application: the route list (`routes`), each group of one scope behind its key check, and the
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
