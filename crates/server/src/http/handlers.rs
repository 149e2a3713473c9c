//! The endpoint handlers: each parses its request (through [`super::body`]), calls the
//! [`Library`] (blocking calls on tokio's blocking threads, a verification through its
//! asynchronous call), and turns the answer into a [`wire`] body or an [`ApiError`].
//!
//! [`super::routes`] lists which handler answers which route with which scope.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use codereader_otp::{Code, CodeError};
use codereader_verifier::{Caller, ClientId, Outcome, OwnedSubject};

use crate::error_code::ErrorCode;
use crate::service::{self, EnrollInput, Library, ServiceError, Verdict};
use crate::wire;

use super::body::{body_error, parse_json};
use super::{ApiError, CallerName, Shared};

pub(super) async fn healthz(State(state): State<Shared>) -> Response {
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

pub(super) async fn metrics(State(state): State<Shared>) -> Response {
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

pub(super) async fn verify(
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

pub(super) async fn enroll(
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
            EnrollInput::Uri(uri)
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
            EnrollInput::Params {
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

pub(super) async fn import(
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

pub(super) async fn show(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<wire::Token>, ApiError> {
    let serial = service::token_id(&path_serial(path)?)?;
    let info = blocking(&state, move |lib| lib.show(&serial)).await?;
    Ok(axum::Json(wire::Token::from(&info)))
}

pub(super) async fn disable(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<wire::Token>, ApiError> {
    let serial = service::token_id(&path_serial(path)?)?;
    let caller = service::caller(&caller_of(caller))?;
    let info = blocking(&state, move |lib| lib.disable(&serial, &caller)).await?;
    Ok(axum::Json(wire::Token::from(&info)))
}

pub(super) async fn unlock(
    State(state): State<Shared>,
    caller: Option<axum::Extension<CallerName>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<wire::Token>, ApiError> {
    let serial = service::token_id(&path_serial(path)?)?;
    let caller = service::caller(&caller_of(caller))?;
    let info = blocking(&state, move |lib| lib.unlock(&serial, &caller)).await?;
    Ok(axum::Json(wire::Token::from(&info)))
}

pub(super) async fn activate(
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

pub(super) async fn resync(
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

pub(super) async fn audit(
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
pub(super) async fn events(
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

pub(super) async fn list_tokens(
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
