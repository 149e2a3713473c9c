//! The request body's machinery: its deadline ([`BodyDeadline`], and the 408 when it passes)
//! and reading it as JSON with a stable error code for each way it can be wrong, messages
//! that never repeat a value the client sent.
//!
//! Apart from the handlers because none of it depends on which endpoint is called: a
//! handler takes its body as bytes and hands them to [`parse_json`]; the deadline wraps
//! every request's body in [`super::router`]'s middleware.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error_code::ErrorCode;

use super::ApiError;

/// Reads a JSON body into `T`, with stable error codes for each way it can be wrong.
pub(super) fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
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
pub(super) fn without_value(message: &str) -> String {
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
pub(super) fn without_field_name(message: &str) -> String {
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

pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            "the request body is larger than the server accepts",
        )
    } else {
        ApiError::new(ErrorCode::InvalidRequest, rejection.body_text())
    }
}

/// How far a request's body has come: set by its [`BodyDeadline`], read by [`super::time_limit`]
/// to tell a client that stalled (408) from a server that did (503).
#[derive(Debug, Default)]
pub(super) struct BodyProgress {
    /// The handler is waiting for bytes the client has not sent.
    waiting: AtomicBool,
    /// The body deadline passed before the body was complete.
    expired: AtomicBool,
}

impl BodyProgress {
    pub(super) fn waiting(&self) -> bool {
        self.waiting.load(Relaxed)
    }

    pub(super) fn expired(&self) -> bool {
        self.expired.load(Relaxed)
    }
}

/// The flag of the connection a request came on, which the request's body sets while its
/// handler waits for bytes the client has not sent: [`crate::connections`] puts it in the
/// request's extensions and reads it to tell an unfinished request (that it may shed at its
/// connection cap) from one being answered.
///
/// The wait is recorded by the one body wrapper, [`BodyDeadline`], for both readers: the
/// connection and [`super::time_limit`] ([`BodyProgress`]).
#[derive(Debug, Clone)]
pub(crate) struct AwaitingBody(pub(crate) Arc<AtomicBool>);

/// A request body that fails once its deadline passes (a body shorter than its
/// Content-Length, or one sent a byte now and then), so that a stalled client costs the
/// server one timer, not a request slot until the request timeout, and gets a 4xx. It also
/// records whether its handler is waiting for bytes, for the request ([`BodyProgress`]) and
/// for the connection ([`AwaitingBody`]).
///
/// The timer is made only when the body first has to be waited for: a body that arrived with
/// its head (nearly every request) costs no timer registration and no allocation.
pub(super) struct BodyDeadline {
    inner: axum::body::Body,
    /// When the body must be complete.
    due: tokio::time::Instant,
    /// Armed at the first wait for bytes.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    progress: Arc<BodyProgress>,
    /// The connection's flag, when the request came through [`crate::connections`].
    connection: Option<AwaitingBody>,
}

impl BodyDeadline {
    /// `request` with its body under a deadline `limit` from now, and the body's progress.
    pub(super) fn wrap(mut request: Request, limit: Duration) -> (Request, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress::default());
        let shared = progress.clone();
        let connection = request.extensions_mut().remove::<AwaitingBody>();
        let request = request.map(|inner| {
            axum::body::Body::new(BodyDeadline {
                inner,
                due: tokio::time::Instant::now() + limit,
                deadline: None,
                progress: shared,
                connection,
            })
        });
        (request, progress)
    }

    /// Records whether the handler waits for bytes the client has not sent.
    fn waiting(&self, waiting: bool) {
        self.progress.waiting.store(waiting, Relaxed);
        if let Some(AwaitingBody(connection)) = &self.connection {
            connection.store(waiting, Relaxed);
        }
    }
}

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting(false);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let due = this.due;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.waiting(false);
                    this.progress.expired.store(true, Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new(
                        "the request body did not arrive in time",
                    ))));
                }
                this.waiting(true);
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
pub(super) fn body_timeout(limit: Duration) -> Response {
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
