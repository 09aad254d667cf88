//! A JSON body extractor whose errors name the offending field (`macs[1]`, `ttl_secs`),
//! so a client learns exactly what to fix.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body accepted.
const MAX_JSON: usize = 1 << 20;

/// `Json<T>` with field-naming errors.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // The Content-Type is not checked: `curl -d` labels JSON as a form, and the
        // body either parses as the expected JSON or gets a precise error.
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge)?;
        if body.len() > MAX_JSON {
            return Err(ApiError::TooLarge);
        }
        parse(&body).map(ApiJson)
    }
}

/// `Query<T>` whose errors are JSON 400s naming the parameter.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_de(q);
        match de {
            Ok(v) => Ok(ApiQuery(v)),
            Err(msg) => Err(ApiError::BadRequest {
                field: Some(
                    path_prefix(&msg)
                        .or_else(|| extract_backticked(&msg))
                        .unwrap_or_else(|| "query".into()),
                ),
                message: format!("bad query string: {msg}"),
            }),
        }
    }
}

fn serde_urlencoded_de<T: DeserializeOwned>(q: &str) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| e.to_string())?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| {
        use std::error::Error;
        e.source()
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

/// Parses JSON, reporting the path of the first bad field.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // Missing or unknown fields are reported by serde at the parent: name them.
        let field = if path == "." {
            extract_backticked(&msg).unwrap_or_else(|| "body".into())
        } else {
            path
        };
        ApiError::BadRequest {
            field: Some(field),
            message: msg,
        }
    })
}

/// The parameter a query error starts with (`limit: invalid digit...`): a bad value
/// is reported under its parameter's name, not the value's.
fn path_prefix(msg: &str) -> Option<String> {
    let (p, _) = msg.split_once(": ")?;
    let ok = !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| p.to_string())
}

fn extract_backticked(msg: &str) -> Option<String> {
    let a = msg.find('`')?;
    let b = msg[a + 1..].find('`')?;
    Some(msg[a + 1..a + 1 + b].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
        b: Vec<u8>,
    }

    fn field(r: Result<T, ApiError>) -> String {
        match r.unwrap_err() {
            ApiError::BadRequest { field, .. } => field.unwrap(),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn names_fields() {
        assert_eq!(field(parse(br#"{"a": "x", "b": []}"#)), "a");
        assert_eq!(field(parse(br#"{"a": 1, "b": [1, 300]}"#)), "b[1]");
        assert_eq!(field(parse(br#"{"a": 1}"#)), "b");
        assert_eq!(field(parse(br#"{"a": 1, "b": [], "c": 0}"#)), "c");
        assert_eq!(field(parse(b"nope")), "body");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<usize>,
        state: Option<crate::store::ProvisionState>,
    }

    #[test]
    fn names_query_parameters_not_their_values() {
        for (q, want) in [
            ("limit=x", "limit"),
            ("state=lost", "state"),
            ("colour=red", "colour"),
        ] {
            match serde_urlencoded_de::<Q>(q) {
                Err(msg) => assert_eq!(
                    path_prefix(&msg)
                        .or_else(|| extract_backticked(&msg))
                        .as_deref(),
                    Some(want),
                    "{q}: {msg}"
                ),
                Ok(v) => panic!("{q}: {v:?}"),
            }
        }
    }
}
