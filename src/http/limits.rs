//! What the HTTP edge accepts from anyone: a deliberate body limit per route, and metric
//! labels from a fixed set (a client cannot create series by sending new method names
//! or paths). Pure functions, plus the middleware that applies the body limit.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Largest JSON body of a `/v1` route.
pub const MAX_JSON: u64 = 1 << 20;

/// Largest body of a booted node's `POST /boot/{node}/done` report (a short message).
pub const MAX_DONE_REPORT: u64 = 4096;

/// The largest body `method` on `route` (the matched route pattern, `None` when nothing
/// matched) takes: artifact uploads up to `max_upload` (streamed to disk), other `/v1`
/// routes JSON up to [`MAX_JSON`], a node's done report up to [`MAX_DONE_REPORT`], boot
/// files, `/metrics` and unmatched paths none.
/// `/cluster` routes set their own limits (`None` here).
pub fn body_limit(method: &Method, route: Option<&str>, max_upload: u64) -> Option<u64> {
    match route {
        Some(r) if r == "/cluster" || r.starts_with("/cluster/") => None,
        Some("/v1/artifacts") if method == Method::POST => Some(max_upload),
        Some("/boot/{node}/done") if method == Method::POST => Some(MAX_DONE_REPORT),
        Some(r) if r.starts_with("/v1/") => Some(MAX_JSON),
        _ => Some(0),
    }
}

/// The method as a metric label: the standard ones by name, any other as `other`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The route as a metric label: the matched pattern (`/v1/nodes/{id}`), or `unmatched`.
pub fn route_label(matched: Option<&MatchedPath>) -> &str {
    matched.map_or("unmatched", |p| p.as_str())
}

/// The body limit of an upload route in force.
#[derive(Debug, Clone, Copy)]
pub struct MaxUpload(pub u64);

/// How far past its limit a declared body is still read up to the limit before the 413:
/// a client that writes its whole body before reading (most do) then gets the answer,
/// not a broken pipe. Further past it, the refusal comes at once.
pub const DRAIN: u64 = 4 << 20;

/// Applies [`body_limit`]: a declared length over the limit is refused at once (413,
/// before any byte of it is read) when the route takes no body or it is more than
/// [`DRAIN`] over; any other body is cut off at the limit as it streams.
pub async fn limit_body(State(max): State<Arc<MaxUpload>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let Some(limit) = body_limit(req.method(), route, max.0) else {
        return next.run(req).await;
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let over = declared.is_some_and(|n| n > limit);
    let far_over = declared.is_some_and(|n| n > limit.saturating_add(DRAIN));
    if (over && (limit == 0 || far_over)) || (limit == 0 && chunked) {
        return ApiError::TooLarge.into_response();
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    next.run(Request::from_parts(parts, Body::new(limited)))
        .await
}

/// The error for a body that could not be read: 413 when it went past its limit.
pub fn body_error(e: axum::Error) -> ApiError {
    let over = std::error::Error::source(&e)
        .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        || e.to_string().contains("length limit exceeded");
    if over {
        ApiError::TooLarge
    } else {
        ApiError::field("body", format!("upload interrupted: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_by_route() {
        let up = 5 << 30;
        assert_eq!(
            body_limit(&Method::POST, Some("/v1/artifacts"), up),
            Some(up)
        );
        assert_eq!(
            body_limit(&Method::GET, Some("/v1/artifacts"), up),
            Some(MAX_JSON)
        );
        assert_eq!(
            body_limit(&Method::PUT, Some("/v1/nodes/{id}/profile"), up),
            Some(MAX_JSON)
        );
        assert_eq!(
            body_limit(&Method::GET, Some("/boot/{node}/{*path}"), up),
            Some(0)
        );
        assert_eq!(body_limit(&Method::GET, Some("/metrics"), up), Some(0));
        assert_eq!(body_limit(&Method::GET, None, up), Some(0));
        assert_eq!(
            body_limit(&Method::POST, Some("/cluster/raft/append"), up),
            None
        );
    }

    #[test]
    fn labels_are_a_fixed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        for m in ["FOO", "get", "X-1234", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
        assert_eq!(route_label(None), "unmatched");
    }
}
