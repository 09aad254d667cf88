//! A blocking client of the admin API, used by the CLI (`baton node ...` and friends).
//! It sends and reads the [`crate::api`] types the server handlers use, and keeps each
//! answer's JSON as sent for `--json`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::v1::{
    ImportCounts, ImportFormat, ImportMessage, ImportQuery, ImportReport, UploadQuery, Uploaded,
    IMPORT_PATH, NDJSON, NEXT_CURSOR_HEADER,
};
use crate::api::{ErrorBody, BUSY_HEADER, TOKEN_FILE};

/// What went wrong talking to the API, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection.
    #[error("cannot reach the Baton API at {url}: {reason}. Is `baton serve` running there? (set --api or BATON_API)")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// The TLS handshake failed (e.g. a server certificate from a private CA).
    #[error("TLS with the Baton API at {url} failed: {reason}. Trust the servers' CA with --ca FILE (or BATON_API_CA)")]
    Tls {
        /// Base URL.
        url: String,
        /// rustls' reason.
        reason: String,
    },
    /// 401.
    #[error("the API refused the token: pass --token or set BATON_API_TOKEN (the server's token is in <data-dir>/{TOKEN_FILE})")]
    Unauthorized,
    /// Any other 4xx/5xx, with the server's message.
    #[error("{message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine code (`conflict`, `not_found`...).
        code: String,
        /// Server's message.
        message: String,
        /// Offending field, if named.
        field: Option<String>,
        /// Details (e.g. the current fencing token).
        details: Option<Value>,
    },
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The `--ca` bundle is unusable.
    #[error("--ca: {0}")]
    Ca(#[from] crate::tls::TlsError),
    /// The server answered something that is not the expected JSON.
    #[error("unexpected answer from the API: {0}")]
    Protocol(String),
}

/// rustls' reason when a transport error is a TLS failure (io::Error hides its inner
/// error from `source()`, so it is opened).
fn tls_failure(t: &ureq::Transport) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    for _ in 0..16 {
        let err = cur?;
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// An answer of the API: its body as the type the server sent, and as the JSON it sent
/// (what `--json` prints).
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The typed body.
    pub body: T,
    /// The JSON as sent (`null` for an empty body).
    pub raw: Value,
}

/// How many times a request refused at connection admission is sent again.
const BUSY_RETRIES: u32 = 3;

/// An API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

// Requests pass ureq's own (large) error type straight through to `finish`.
#[allow(clippy::result_large_err)]
impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8069`).
    pub fn new(base: &str, token: &str) -> Self {
        Self::build(base, token, None)
    }

    /// A client of the API at `base` that trusts only the CA bundle at `ca` for
    /// `https://` (else the public roots).
    pub fn with_ca(base: &str, token: &str, ca: Option<&Path>) -> Result<Self, ClientError> {
        let tls = ca.map(|p| crate::tls::client_config(p, None)).transpose()?;
        Ok(Self::build(base, token, tls))
    }

    fn build(base: &str, token: &str, tls: Option<rustls::ClientConfig>) -> Self {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120));
        if let Some(c) = tls {
            b = b.tls_config(std::sync::Arc::new(c));
        }
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent: b.build(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// The JSON of a successful answer (`null` when empty), or the refusal.
    fn finish(&self, r: Result<ureq::Response, ureq::Error>) -> Result<Value, ClientError> {
        match r {
            Ok(resp) => {
                if resp.status() == 204 {
                    return Ok(Value::Null);
                }
                let text = resp
                    .into_string()
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if text.is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {text:.200}")))
            }
            Err(ureq::Error::Status(401, _)) => Err(ClientError::Unauthorized),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                Err(match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(ErrorBody { error: e }) => ClientError::Api {
                        status,
                        code: e.code,
                        message: e.message,
                        field: e.field,
                        details: e.details,
                    },
                    Err(_) => ClientError::Api {
                        status,
                        code: "error".into(),
                        message: format!("HTTP {status}: {text:.200}"),
                        field: None,
                        details: None,
                    },
                })
            }
            Err(ureq::Error::Transport(t)) => Err(match tls_failure(&t) {
                Some(reason) => ClientError::Tls {
                    url: self.base.clone(),
                    reason,
                },
                None => ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: t.to_string(),
                },
            }),
        }
    }

    /// Runs `make` (one request) again while the server refuses the connection itself
    /// (503 with [`BUSY_HEADER`]: the request was never read, so any method may be
    /// resent), at most [`BUSY_RETRIES`] times, waiting its `Retry-After` (at most 5 s).
    fn retrying(
        &self,
        make: impl Fn() -> Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, ureq::Error> {
        let mut left = BUSY_RETRIES;
        loop {
            match make() {
                Err(ureq::Error::Status(503, resp))
                    if left > 0 && resp.header(BUSY_HEADER).is_some() =>
                {
                    left -= 1;
                    let secs = resp
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1)
                        .clamp(1, 5);
                    std::thread::sleep(Duration::from_secs(secs));
                }
                r => return r,
            }
        }
    }

    /// [`Client::finish`], read as a `T`.
    fn typed<T: DeserializeOwned>(
        &self,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<Reply<T>, ClientError> {
        let raw = self.finish(r)?;
        let body = T::deserialize(&raw)
            .map_err(|e| ClientError::Protocol(format!("{e}: {:.200}", raw.to_string())))?;
        Ok(Reply { body, raw })
    }

    /// GET a JSON resource.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, ClientError> {
        self.typed(self.retrying(|| self.req("GET", path).call()))
    }

    /// GETs a list page by page until the last one (or `max` items), calling
    /// `progress(items so far)` after each page. `url_for(cursor)` gives a page's path
    /// and query (with its `limit`); the answer holds all the items, as the server sent
    /// them.
    pub fn list_all<T: DeserializeOwned>(
        &self,
        url_for: impl Fn(Option<&str>) -> Result<String, ClientError>,
        max: Option<usize>,
        mut progress: impl FnMut(usize),
    ) -> Result<Reply<Vec<T>>, ClientError> {
        let mut raw: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = url_for(cursor.as_deref())?;
            let r = self.retrying(|| self.req("GET", &url).call());
            let next = r
                .as_ref()
                .ok()
                .and_then(|resp| resp.header(NEXT_CURSOR_HEADER))
                .map(str::to_string);
            match self.finish(r)? {
                Value::Array(items) => raw.extend(items),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "a list page is not an array: {:.200}",
                        other.to_string()
                    )))
                }
            }
            progress(raw.len());
            if max.is_some_and(|m| raw.len() >= m) {
                raw.truncate(max.unwrap_or(usize::MAX));
                break;
            }
            // A server that repeats a cursor would loop forever: stop instead.
            match next {
                Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
                _ => break,
            }
        }
        let raw = Value::Array(raw);
        let body = Vec::<T>::deserialize(&raw)
            .map_err(|e| ClientError::Protocol(format!("{e}: {:.200}", raw.to_string())))?;
        Ok(Reply { body, raw })
    }

    /// DELETE a resource; the answer is read as a `T` (`()` for none).
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, ClientError> {
        self.typed(self.retrying(|| self.req("DELETE", path).call()))
    }

    /// Sends a JSON body with `method`.
    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<Reply<T>, ClientError> {
        let json = serde_json::to_value(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.typed(self.retrying(|| self.req(method, path).send_json(json.clone())))
    }

    /// Uploads a file as an artifact, reporting `(sent, total)` as it goes.
    pub fn upload(
        &self,
        file: &Path,
        name: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Reply<Uploaded>, ClientError> {
        let f = std::fs::File::open(file).map_err(|source| ClientError::File {
            path: file.to_path_buf(),
            source,
        })?;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let reader = Progress {
            inner: f,
            done: 0,
            total,
            cb: &mut progress,
        };
        let query = UploadQuery {
            name: Some(name.to_string()),
            sha256: None,
        };
        let path = with_query("/v1/artifacts", &query)?;
        self.typed(
            self.req("POST", &path)
                .set("Content-Type", "application/octet-stream")
                .set("Content-Length", &total.to_string())
                .send(reader),
        )
    }
}

impl Client {
    /// Sends an import file to `POST /v1/nodes:import` (one request, the file streamed
    /// as the body) and reads the streamed answer, calling `progress` with each line
    /// until the report, which is returned with its JSON as sent.
    pub fn import(
        &self,
        file: &Path,
        format: ImportFormat,
        mut progress: impl FnMut(&ImportCounts),
    ) -> Result<Reply<ImportReport>, ClientError> {
        let f = std::fs::File::open(file).map_err(|source| ClientError::File {
            path: file.to_path_buf(),
            source,
        })?;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let query = ImportQuery {
            format: Some(format),
        };
        let content_type = match format {
            ImportFormat::Csv => "text/csv",
            ImportFormat::Jsonl => NDJSON,
        };
        let r = self
            .req("POST", &with_query(IMPORT_PATH, &query)?)
            .set("Content-Type", content_type)
            .set("Accept", NDJSON)
            .set("Content-Length", &total.to_string())
            .send(f);
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => {
                // A refusal (4xx/5xx) or no connection: always an error.
                self.finish(Err(e))?;
                return Err(ClientError::Protocol("refused without a status".into()));
            }
        };
        let reader = std::io::BufReader::new(resp.into_reader());
        for line in std::io::BufRead::lines(reader) {
            let line = line.map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: format!("the import answer broke off: {e}"),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let raw: Value = serde_json::from_str(&line)
                .map_err(|e| ClientError::Protocol(format!("{e}: {line:.200}")))?;
            let msg = ImportMessage::deserialize(&raw)
                .map_err(|e| ClientError::Protocol(format!("{e}: {line:.200}")))?;
            match msg {
                ImportMessage::Progress(c) => progress(&c),
                ImportMessage::Report(body) => {
                    let mut raw = raw;
                    if let Some(o) = raw.as_object_mut() {
                        o.remove("type");
                    }
                    return Ok(Reply { body, raw });
                }
            }
        }
        Err(ClientError::Protocol(
            "the import answer ended without a report: the server may have stopped; re-run the import (it is idempotent)".into(),
        ))
    }
}

struct Progress<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    cb: &'a mut dyn FnMut(u64, u64),
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.cb)(self.done, self.total);
        Ok(n)
    }
}

/// `path?query`, the query string from its [`crate::api`] type.
pub fn with_query<Q: Serialize>(path: &str, query: &Q) -> Result<String, ClientError> {
    let q = serde_urlencoded::to_string(query).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    })
}

/// Percent-encodes a path segment or query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Renders rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        assert_eq!(urlencode("a b/ä"), "a%20b%2F%C3%A4");
    }
}
