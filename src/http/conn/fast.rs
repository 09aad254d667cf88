//! The fast path of a plain-HTTP connection: boot file downloads without hyper, their
//! bodies sent with sendfile(2) from the verified blob file.
//!
//! The connection reads each request head itself ([`head::parse`]). A plain `GET` of a
//! boot route ([`boot::fast_route`]) is answered here: [`boot::resolve`] decides the
//! answer, the one place every HTTP boot rule lives, and this module only writes it (the
//! head, then the body: sendfile for a blob file, the in-memory copy otherwise; an error
//! is the router's own [`ApiError`] response, written whole). Keep-alive: the next head
//! is read the same way. Anything else (another method or route, a body, a malformed
//! head) is handed to hyper with the bytes read so far ([`Rewind`]), and the connection
//! stays with hyper from then on, answered exactly as before.
//!
//! The connection's activity (bytes read and written, the request in flight) is noted
//! in its [`ConnState`] as hyper's requests note it, so the limits and timeouts of
//! [`super`] hold unchanged; requests and refusals are counted as the router counts them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{ConnState, InFlight, Watched};
use crate::app::App;
use crate::http::boot::{self, BootRequest, Plan, PlanBody};
use crate::http::head::{self, Head};
use crate::http::limits::method_label;
use crate::namespace::cache::{Delivery, Served};
use crate::namespace::StoreSource;

/// What the fast path needs to answer boot files: the handles the router's boot
/// handlers get.
#[derive(Clone)]
pub struct BootFiles {
    /// The host's handles.
    pub app: Arc<App>,
    /// The TFTP namespace (the fallback route's source).
    pub source: Arc<StoreSource>,
}

/// How the fast path left a connection.
pub(super) enum Outcome {
    /// Closed (by the client, after `Connection: close`, on shutdown or an error).
    Closed,
    /// A request for hyper: these bytes were read and are its start.
    Handoff(Bytes),
}

/// Largest error body written (the router's JSON errors are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Serves boot downloads on `io` until the connection closes or a request needs hyper.
/// On `shutdown`, an idle connection closes and a busy one after its answer.
pub(super) async fn serve(
    io: &mut Watched,
    peer: SocketAddr,
    state: &Arc<ConnState>,
    files: &BootFiles,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let get = loop {
            match head::parse(&buf) {
                Head::Partial => {}
                Head::Get(g) if boot::fast_route(g.uri.path()).is_some() => break g,
                Head::Get(_) | Head::Other | Head::Malformed => {
                    return Outcome::Handoff(buf.freeze())
                }
            }
            buf.reserve(4096);
            let n = if buf.is_empty() {
                tokio::select! {
                    r = io.read_buf(&mut buf) => r,
                    _ = shutdown.cancelled() => return Outcome::Closed,
                }
            } else {
                io.read_buf(&mut buf).await
            };
            match n {
                Ok(0) => return Outcome::Closed,
                Ok(_) => {}
                Err(e) => {
                    debug!(client = %peer, error = %e, "http connection ended with an error");
                    return Outcome::Closed;
                }
            }
        };
        buf.advance(get.len);
        let guard = InFlight::start(state);
        let r = answer(io, peer, files, &get).await;
        drop(guard);
        if let Err(e) = r {
            debug!(client = %peer, error = %e, "http connection ended with an error");
            return Outcome::Closed;
        }
        if get.close || shutdown.is_cancelled() {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
    }
}

/// Resolves and writes the answer to one `GET` of a boot route.
async fn answer(
    io: &mut Watched,
    peer: SocketAddr,
    files: &BootFiles,
    get: &head::Get,
) -> io::Result<()> {
    let path = get.uri.path();
    let Some(route) = boot::fast_route(path) else {
        return Err(io::Error::other("not a boot route"));
    };
    let req = BootRequest {
        peer,
        method: &Method::GET,
        path,
        headers: &get.headers,
    };
    let label = format!("{} {}", method_label(&Method::GET), route.label());
    let plan = boot::resolve(&files.app, &files.source, &req, route, Delivery::File).await;
    let status = match &plan {
        Ok(p) => p.status,
        Err(e) => e.status(),
    };
    crate::http::count_request(&files.app.metrics.http, &label, status);
    match plan {
        Ok(p) => write_plan(io, p, get.close).await,
        Err(e) => {
            let resp = e.into_response();
            let (parts, body) = resp.into_parts();
            let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
                .await
                .map_err(io::Error::other)?;
            let head = head_bytes(parts.status, &parts.headers, Some(&body), get.close);
            write_all(io, &head, false).await?;
            write_all(io, &body, false).await
        }
    }
}

/// Writes a planned answer: head, then the body from memory or with sendfile.
async fn write_plan(io: &mut Watched, plan: Plan, close: bool) -> io::Result<()> {
    let Plan {
        status,
        headers,
        body,
    } = plan;
    let head = head_bytes(status, &headers, None, close);
    let PlanBody::Send {
        body,
        start,
        len,
        mut transfer,
    } = body
    else {
        return write_all(io, &head, false).await;
    };
    // Full segments only while the body goes out, as nginx's `tcp_nopush` does: the
    // head rides with the body's first bytes, and no sendfile call ends in a short
    // segment. The last bytes are pushed when the cork is removed.
    let sock = socket2::SockRef::from(&io.inner);
    let corked = len > 0 && sock.set_cork(true).is_ok();
    write_all(io, &head, len > 0).await?;
    match body {
        Served::Memory(data) => {
            let bytes = data.octets().slice(start as usize..(start + len) as usize);
            for chunk in bytes.chunks(256 * 1024) {
                io.write_all(chunk).await?;
                transfer.advance(chunk.len() as u64);
            }
            transfer.advance(0);
        }
        Served::File(file) => {
            let state = io.state.clone();
            boot::send_file(&io.inner, &file, start, len, |n| {
                state.on_write();
                transfer.advance(n);
            })
            .await?;
            transfer.advance(0);
        }
    }
    if corked {
        socket2::SockRef::from(&io.inner).set_cork(false)?;
    }
    Ok(())
}

/// `bytes` to the socket; with `more`, the kernel holds them for what follows.
async fn write_all(io: &mut Watched, mut bytes: &[u8], more: bool) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let fd = io.inner.as_raw_fd();
    while !bytes.is_empty() {
        io.inner.writable().await?;
        let r = io.inner.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: `bytes` is valid for its length for the call; `fd` is the open
            // socket borrowed from `io`.
            let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                io.state.on_write();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A response head as hyper writes it: status line, the fields (lowercase names), the
/// body's length when `body` is given (none for 304, 204 and 1xx), `date`, and
/// `connection: close` when the connection ends after it.
fn head_bytes(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&Bytes>,
    close: bool,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(b"HTTP/1.1 ");
    h.extend_from_slice(status.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    h.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == axum::http::header::CONTENT_LENGTH && body.is_some() {
            continue;
        }
        h.extend_from_slice(name.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if let Some(b) = body.filter(|_| !bodiless) {
        h.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
    }
    h.extend_from_slice(b"date: ");
    h.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    h.extend_from_slice(b"\r\n");
    if close {
        h.extend_from_slice(b"connection: close\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// A stream that first yields bytes already read from it: how hyper gets a connection
/// whose request head the fast path read.
pub(super) struct Rewind<S> {
    pub(super) prefix: Bytes,
    pub(super) inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let inner: &[u8] = b" world";
        let mut r = Rewind {
            prefix: Bytes::from_static(b"hello"),
            inner,
        };
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }

    #[test]
    fn heads_are_written_as_hyper_writes_them() {
        let mut h = HeaderMap::new();
        h.insert("etag", "\"x\"".parse().unwrap());
        h.insert("content-length", "99".parse().unwrap());
        let t = String::from_utf8(head_bytes(
            StatusCode::NOT_FOUND,
            &h,
            Some(&Bytes::from_static(b"{}")),
            true,
        ))
        .unwrap();
        assert!(
            t.starts_with("HTTP/1.1 404 Not Found\r\netag: \"x\"\r\ncontent-length: 2\r\ndate: "),
            "{t}"
        );
        assert!(t.ends_with("\r\nconnection: close\r\n\r\n"), "{t}");
        let t = String::from_utf8(head_bytes(
            StatusCode::NOT_MODIFIED,
            &h,
            Some(&Bytes::new()),
            false,
        ))
        .unwrap();
        assert!(!t.contains("content-length: 0"), "{t}");
        // A planned head keeps its own length.
        let t = String::from_utf8(head_bytes(StatusCode::OK, &h, None, false)).unwrap();
        assert!(t.contains("content-length: 99\r\n"), "{t}");
    }
}
