//! What an answer's head says: its length, the status, how the body is framed and whether the
//! connection may carry another request. Parsed with `httparse` by the rules of RFC 9112; no I/O.

use super::error::Failure;

/// Largest answer header block accepted (each interim answer's, and the final one's), and the most
/// bytes of trailers after a chunked body.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most answer headers parsed.
const MAX_HEADERS: usize = 64;

/// How the answer body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed answer head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    /// Bytes the head takes in the buffer, up to and including its empty line.
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// Whether the answer allows another request on the connection.
    pub keep_alive: bool,
}

/// Parses an answer head, or `None` if it is incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => {
            return Err(Failure::BadAnswer(
                "the backend did not answer with valid HTTP",
            ))
        }
    };
    let mut fields = Fields {
        version: resp.version,
        keep_alive: resp.version == Some(1),
        length: None,
        chunked: false,
    };
    for h in resp.headers.iter() {
        fields.add(h)?;
    }
    Ok(Some(fields.into_head(len, resp.code.unwrap_or(0))))
}

/// What the headers say about framing and reuse, gathered header by header.
struct Fields {
    version: Option<u8>,
    keep_alive: bool,
    length: Option<usize>,
    chunked: bool,
}

impl Fields {
    fn add(&mut self, h: &httparse::Header<'_>) -> Result<(), Failure> {
        if h.name.eq_ignore_ascii_case("content-length") {
            self.content_length(h.value)
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding(h.value)
        } else if h.name.eq_ignore_ascii_case("connection") {
            self.connection(h.value);
            Ok(())
        } else {
            Ok(())
        }
    }

    /// Digits only; repeated lengths must agree.
    fn content_length(&mut self, value: &[u8]) -> Result<(), Failure> {
        let v = value.trim_ascii();
        let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
            .flatten()
            .ok_or(Failure::BadAnswer(
                "the answer has an invalid Content-Length",
            ))?;
        if self.length.is_some_and(|l| l != n) {
            return Err(Failure::BadAnswer(
                "the answer has conflicting Content-Lengths",
            ));
        }
        self.length = Some(n);
        Ok(())
    }

    /// Exactly `chunked`, once: any other coding (`gzip, chunked`) would have to be decoded, and
    /// the proxy decodes none, so such a body cannot be read as the bot meant it. A repeated header
    /// is a list of codings too.
    fn transfer_encoding(&mut self, value: &[u8]) -> Result<(), Failure> {
        if self.chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Failure::BadAnswer(
                "the answer uses a transfer coding other than chunked",
            ));
        }
        self.chunked = true;
        Ok(())
    }

    /// `close` ends reuse; `keep-alive` allows it for HTTP/1.0.
    fn connection(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            let t = token.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                self.keep_alive = false;
            } else if t.eq_ignore_ascii_case(b"keep-alive") && self.version == Some(0) {
                self.keep_alive = true;
            }
        }
    }

    fn into_head(self, len: usize, status: u16) -> Head {
        let mut keep_alive = self.keep_alive;
        // RFC 9112 6.3: chunked wins over Content-Length, and such a message must not be reused.
        let framing = match (self.chunked, self.length) {
            (true, Some(_)) => {
                keep_alive = false;
                Framing::Chunked
            }
            (true, None) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        };
        // RFC 9110 15.3.5, 15.4.5: a 204 or 304 has no body, whatever its headers say. One that
        // declares a body anyway may still send it, and those bytes would be read as the next
        // answer on the connection: it is not reused.
        let framing = if status == 204 || status == 304 {
            keep_alive &= matches!(framing, Framing::Length(0) | Framing::UntilClose);
            Framing::Length(0)
        } else {
            framing
        };
        Head {
            len,
            status,
            framing,
            keep_alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_framed_by_the_rfc() {
        let head = |s: &str| match parse_head(s.as_bytes()) {
            Ok(Some(head)) => Ok(head),
            Ok(None) => Err("partial"),
            Err(_) => Err("bad"),
        };
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            Ok(Head {
                len: 38,
                status: 200,
                framing: Framing::Length(5),
                keep_alive: true
            })
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .framing,
            Framing::Chunked
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\n\r\n").unwrap().framing,
            Framing::UntilClose
        );
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        // Chunked and a length: chunked wins, and the connection is not reused.
        let both =
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
        assert_eq!((both.framing, both.keep_alive), (Framing::Chunked, false));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"),
            Err("partial")
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err("bad")
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err("bad")
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err("bad")
        );
        // Only `chunked` alone: no other coding is decoded, before it or in a second header.
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            assert_eq!(
                head(&format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n"
                )),
                Err("bad"),
                "{te}"
            );
        }
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\n")
                .unwrap()
                .framing,
            Framing::Chunked
        );
        // A 204 or 304 has no body; one that declares a body is not reused.
        let no_body = |s: &str| head(s).map(|h| (h.framing, h.keep_alive));
        assert_eq!(
            no_body("HTTP/1.1 204 No Content\r\n\r\n"),
            Ok((Framing::Length(0), true))
        );
        assert_eq!(
            no_body("HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n"),
            Ok((Framing::Length(0), true))
        );
        assert_eq!(
            no_body("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            Ok((Framing::Length(0), false))
        );
        assert_eq!(
            no_body("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok((Framing::Length(0), false))
        );
        assert_eq!(head("not http at all\r\n\r\n"), Err("bad"));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"),
            Err("bad"),
            "digits only"
        );
    }
}
