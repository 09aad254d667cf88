//! API errors: every refusal is a 4xx/5xx with a JSON body naming what was wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::{ErrorBody, ErrorInfo};
use crate::ownership::gate::NotServed;

/// Seconds a client is told to wait (`Retry-After`) before retrying a request refused
/// because the cluster is not ready: about one election, after which a leader usually
/// exists again or the majority is really gone.
pub const RETRY_AFTER_SECS: u32 = 2;

/// An API request that cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No or wrong bearer token.
    #[error("missing or invalid bearer token (send `Authorization: Bearer <token>`)")]
    Unauthorized,
    /// A field of the request is wrong.
    #[error("{message}")]
    BadRequest {
        /// The offending field, if one.
        field: Option<String>,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with current state.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// Machine-readable details (e.g. the current fencing token).
        details: serde_json::Value,
    },
    /// The body is larger than allowed.
    #[error("request body too large")]
    TooLarge,
    /// A Range that names no byte of the body.
    #[error("range not satisfiable (size {0})")]
    RangeNotSatisfiable(u64),
    /// The request was valid but the server failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The route exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The service or the cluster is not ready (no leader, shutting down...): 503 with
    /// `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// The serve gate refused: this host may not answer for the node now.
    #[error("{message}")]
    NotServed {
        /// The gate's reason (decides status and code).
        reason: NotServed,
        /// What was refused and why.
        message: String,
        /// Machine-readable details.
        details: serde_json::Value,
    },
}

impl ApiError {
    /// A bad field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotServed { reason, .. } => StatusCode::from_u16(reason.http_status())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// Short machine-readable code, also the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::TooLarge => "too_large",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::Internal(_) => "internal",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotServed { reason, .. } => reason.label(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (field, details) = match &self {
            ApiError::BadRequest { field, .. } => (field.clone(), None),
            ApiError::Conflict { details, .. } | ApiError::NotServed { details, .. } => {
                (None, Some(details.clone()))
            }
            _ => (None, None),
        };
        let message = match &self {
            // The detail may name files, peers or the store: the log has it, not the client.
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed with an internal error");
                "internal error (the server log has the details)".to_string()
            }
            e => e.to_string(),
        };
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code().to_string(),
                message,
                field,
                details,
            },
        };
        let mut resp = (self.status(), axum::Json(body)).into_response();
        match &self {
            ApiError::Unauthorized => {
                resp.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"baton\""),
                );
            }
            ApiError::RangeNotSatisfiable(len) => {
                if let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut()
                        .insert(axum::http::header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unavailable(_) => {
                resp.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::raft::propose::ProposeError;

    #[test]
    fn no_leader_is_503_with_retry_after() {
        let r = ApiError::from(ProposeError::NoLeader(Duration::from_secs(15))).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers().get(axum::http::header::RETRY_AFTER),
            Some(&axum::http::HeaderValue::from(RETRY_AFTER_SECS))
        );
        // Other write failures stay server errors, without a retry hint.
        let r = ApiError::from(ProposeError::Task("panicked".into())).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }
}
