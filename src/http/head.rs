//! The request head the HTTP boot fast path reads itself (see [`super::conn`]): sans-IO,
//! bytes in, a decision out. Only a plain `GET` of HTTP/1.1 with no body and nothing to
//! negotiate is taken; anything else — another method, HTTP/1.0, a body, `Expect`,
//! `Upgrade`, an oversized or malformed head — is left to hyper with the bytes read so
//! far, so it gets exactly today's answer (hyper's 400 for a malformed head).

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// Largest head the fast path reads; a longer one is left to hyper (and its limits).
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header fields the fast path parses; more are left to hyper.
const MAX_FIELDS: usize = 32;

/// What the bytes read so far are.
#[derive(Debug)]
pub enum Head {
    /// An incomplete head: read more (the buffer is still below [`MAX_HEAD`]).
    Partial,
    /// A head hyper must answer: not a plain `GET`, or too large to parse here.
    Other,
    /// Not HTTP: hyper answers it (400) as it would have.
    Malformed,
    /// A plain `GET` the fast path may answer.
    Get(Get),
}

/// A plain HTTP/1.1 `GET` with no body.
#[derive(Debug)]
pub struct Get {
    /// Bytes of the head (the request line to the empty line, inclusive).
    pub len: usize,
    /// The request target (origin form).
    pub uri: Uri,
    /// The header fields, as hyper would give them to a handler.
    pub headers: HeaderMap,
    /// The client asked to close the connection after the answer.
    pub close: bool,
}

/// Reads the head at the start of `buf`. Never panics; allocates at most the parsed
/// fields of a head of at most [`MAX_HEAD`] bytes.
pub fn parse(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => return Head::Other,
        Err(_) => return Head::Malformed,
    };
    if len > MAX_HEAD || req.method != Some("GET") || req.version != Some(1) {
        return Head::Other;
    }
    let Some(target) = req.path.filter(|p| p.starts_with('/')) else {
        return Head::Other;
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return Head::Other;
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    for f in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return Head::Other;
        };
        match name.as_str() {
            // A body, or something to negotiate: hyper's business.
            "transfer-encoding" | "expect" | "upgrade" => return Head::Other,
            "content-length" if f.value.trim_ascii() != b"0" => return Head::Other,
            "connection" => {
                for token in f.value.split(|b| *b == b',') {
                    match token.trim_ascii().to_ascii_lowercase().as_slice() {
                        b"close" => close = true,
                        b"keep-alive" | b"" => {}
                        _ => return Head::Other,
                    }
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    Head::Get(Get {
        len,
        uri,
        headers,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(text: &str) -> Get {
        match parse(text.as_bytes()) {
            Head::Get(g) => g,
            h => panic!("{text:?}: {h:?}"),
        }
    }

    #[test]
    fn a_plain_get_is_taken_with_its_fields() {
        let t = "GET /boot/n1/nodes/n1/kernel?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=0-9\r\n\
                 If-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\nGET /next";
        let g = get(t);
        assert_eq!(g.len, t.find("GET /next").unwrap());
        assert_eq!(g.uri.path(), "/boot/n1/nodes/n1/kernel");
        assert_eq!(g.headers.get("range").unwrap(), "bytes=0-9");
        assert_eq!(g.headers.get_all("if-none-match").iter().count(), 2);
        assert!(!g.close);
        assert!(get("GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").close);
        assert!(!get("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").close);
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        for t in [
            "HEAD / HTTP/1.1\r\n\r\n",
            "POST /boot/n1/done HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET http://host/x HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(t.as_bytes()), Head::Other), "{t:?}");
        }
        let many: String = (0..MAX_FIELDS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let t = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(t.as_bytes()), Head::Other));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(long.as_bytes()), Head::Other));
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        for t in [
            "",
            "G",
            "GET /x HTTP/1.1\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert!(matches!(parse(t.as_bytes()), Head::Partial), "{t:?}");
        }
    }

    #[test]
    fn bad_input_never_panics_and_is_malformed() {
        for t in [
            &b"\x00\x01\x02\r\n\r\n"[..],
            b"GET /x HTTP/9.9\r\n\r\n",
            b"GET /x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET /x HTTP/1.1\r\nX: \x01\r\n\r\n",
            b" GET /x HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(matches!(parse(t), Head::Malformed), "{t:?}");
        }
        // Every prefix and every single-byte change of a valid head: no panic.
        let ok = b"GET /boot/n1/k HTTP/1.1\r\nHost: h\r\nRange: bytes=-5\r\n\r\n";
        for n in 0..=ok.len() {
            let _ = parse(&ok[..n]);
        }
        for i in 0..ok.len() {
            for b in [0u8, b' ', b':', b'\r', b'\n', 0x7f, 0xff] {
                let mut t = ok.to_vec();
                t[i] = b;
                let _ = parse(&t);
            }
        }
    }
}
