//! The stable values of an error answer's `error` field, each with the HTTP status it is
//! answered with.
//!
//! One table, so that a code's text, its status and its documentation cannot drift apart:
//! the service layer names a code ([`crate::service::ServiceError`]), the HTTP layer answers
//! with the status the code carries ([`crate::http::ApiError`]), and the test against
//! `openapi.yaml` walks [`ErrorCode::ALL`]. This module depends on nothing else of the
//! crate, so `service` and `wire` both use it without using each other.

use axum::http::StatusCode;

/// Declares [`ErrorCode`] from one row per code: its doc, variant, text and status.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $text:literal, $status:ident;)+) => {
        /// A stable error code: the `error` field of every error body. The text never changes
        /// meaning; the status is the one every answer with this code has.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, for documentation checks.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The code as the `error` field says it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)+
                }
            }

            /// The HTTP status of an answer with this code.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }
        }
    };
}

error_codes! {
    /// No `Authorization: Bearer` header, or an unknown key.
    Unauthorized = "unauthorized", UNAUTHORIZED;
    /// The key's scope does not allow this call.
    Forbidden = "forbidden", FORBIDDEN;
    /// The body is empty where JSON is expected.
    EmptyBody = "empty_body", BAD_REQUEST;
    /// The body is not JSON.
    InvalidJson = "invalid_json", BAD_REQUEST;
    /// The JSON has a missing field, a wrong type or an unknown field.
    InvalidRequest = "invalid_request", BAD_REQUEST;
    /// A code is not 6 to 8 ASCII digits.
    InvalidCode = "invalid_code", BAD_REQUEST;
    /// A serial or user id is empty, too long or has control characters.
    InvalidId = "invalid_id", BAD_REQUEST;
    /// The body exceeds the size cap.
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE;
    /// The body did not arrive within the body deadline, e.g. shorter than its
    /// Content-Length.
    BodyTimeout = "body_timeout", REQUEST_TIMEOUT;
    /// The import body is neither JSON nor XML.
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// No such token.
    UnknownToken = "unknown_token", NOT_FOUND;
    /// No such route.
    NotFound = "not_found", NOT_FOUND;
    /// The route exists but not with this method.
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    /// The store failed, or the key-encryption key or the server is not available; retry
    /// later.
    StoreUnavailable = "store_unavailable", SERVICE_UNAVAILABLE;
    /// The request took longer than the server's per-request timeout.
    Timeout = "timeout", SERVICE_UNAVAILABLE;
    /// The client has spent its failure budget; see Retry-After.
    RateLimited = "rate_limited", TOO_MANY_REQUESTS;
    /// A bug.
    Internal = "internal", INTERNAL_SERVER_ERROR;
    /// An otpauth URI that does not parse.
    InvalidUri = "invalid_uri", BAD_REQUEST;
    /// A secret that is not base32 or too short.
    InvalidSecret = "invalid_secret", BAD_REQUEST;
    /// Token parameters out of range: digits, period, algorithm.
    InvalidParameters = "invalid_parameters", BAD_REQUEST;
    /// A PSKC document that cannot be used at all, or without one usable key.
    InvalidPskc = "invalid_pskc", BAD_REQUEST;
    /// A token with this serial exists.
    DuplicateToken = "duplicate_token", CONFLICT;
    /// The token is already bound to a user.
    AlreadyActive = "already_active", CONFLICT;
    /// The user already has a token.
    UserTaken = "user_taken", CONFLICT;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
