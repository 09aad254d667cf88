//! Bearer-token authentication of the admin API.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The token every API request must present.
#[derive(Clone)]
pub struct Token(pub Arc<String>);

/// Compares in time independent of where the first difference is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is matched
/// case-insensitively (RFC 9110 §11.1, formerly RFC 7235) and may be followed by several
/// spaces; any other scheme, or no token, gives `None`.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    let token = rest.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Refuses requests without `Authorization: Bearer <token>` with 401.
pub async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.0.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ct_eq() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        use super::bearer_token;
        for ok in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "bEaReR  t0k ",
            " Bearer t0k",
        ] {
            assert_eq!(bearer_token(ok), Some("t0k"), "{ok:?}");
        }
        for bad in [
            "Basic t0k",
            "Bearer",
            "Bearer ",
            "Bearert0k",
            "t0k",
            "Bearer\tt0k",
            "",
        ] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }
}
