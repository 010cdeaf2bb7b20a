//! Reading a backend's answer off a connection: the head (interim 1xx answers skipped), then the body,
//! framed by `Content-Length`, chunked encoding, or (without either) the end of the connection, and
//! bounded by a size limit. Also whether the connection can carry another request: only when the
//! answer was complete, exactly framed and keep-alive.

use bytes::{Buf, Bytes, BytesMut};
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

use super::error::Failure;
use super::head::{parse_head, Framing, Head, MAX_HEAD_BYTES};
use super::Exchange;

/// Reads a whole answer of at most `max` body bytes, and whether the connection can be reused.
pub(super) async fn read_answer(
    stream: &mut Stream,
    max: usize,
) -> Result<(Exchange, bool), Failure> {
    let mut buf = BytesMut::with_capacity(4096);
    let head = read_head(stream, &mut buf).await?;
    let (body, framed_to_its_end) = read_body(stream, &mut buf, head.framing, max).await?;
    // Bytes beyond the answer would corrupt the next exchange on this connection.
    let reusable = head.keep_alive && framed_to_its_end && buf.is_empty();
    let status = head.status;
    Ok((Exchange { status, body }, reusable))
}

/// Reads up to the final answer's head and takes it out of `buf`.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> Result<Head, Failure> {
    // Whether any answer byte arrived: until then a failure may be a connection closed while idle.
    let mut answered = false;
    loop {
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        while let Some(mut head) = parse_head(buf)? {
            buf.advance(head.len);
            if head.status == 101 {
                // A protocol switch was never asked for; the connection cannot be used as HTTP.
                return Err(Failure::BadAnswer("the backend switched protocols"));
            }
            if (100..200).contains(&head.status) {
                continue;
            }
            if head.status == 204 || head.status == 304 {
                head.framing = Framing::Length(0);
            }
            return Ok(head);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Failure::BadAnswer("the answer header is too large"));
        }
        read_head_more(stream, buf, answered).await?;
        answered = true;
    }
}

/// [`read_more`] within the head: before the first answer byte, a failure is no answer at all.
async fn read_head_more(
    stream: &mut Stream,
    buf: &mut BytesMut,
    answered: bool,
) -> Result<(), Failure> {
    match read_more(stream, buf).await {
        Ok(0) if !answered => Err(Failure::NoAnswer(std::io::ErrorKind::UnexpectedEof.into())),
        Ok(0) => Err(Failure::BadAnswer(
            "the backend closed the connection within the answer header",
        )),
        Ok(_) => Ok(()),
        Err(e) if !answered => Err(Failure::NoAnswer(e)),
        Err(_) => Err(Failure::BadAnswer(
            "the connection failed within the answer",
        )),
    }
}

/// Reads the body after the head, and whether its framing found its end without closing the
/// connection.
async fn read_body(
    stream: &mut Stream,
    buf: &mut BytesMut,
    framing: Framing,
    max: usize,
) -> Result<(Bytes, bool), Failure> {
    match framing {
        Framing::Length(n) => Ok((read_length(stream, buf, n, max).await?, true)),
        Framing::Chunked => Ok((read_chunked(stream, buf, max).await?, true)),
        Framing::UntilClose => Ok((read_until_close(stream, buf, max).await?, false)),
    }
}

/// A body of exactly `n` bytes (`Content-Length`).
async fn read_length(
    stream: &mut Stream,
    buf: &mut BytesMut,
    n: usize,
    max: usize,
) -> Result<Bytes, Failure> {
    if n > max {
        return Err(Failure::TooLarge);
    }
    while buf.len() < n {
        if read_body_more(stream, buf).await? == 0 {
            return Err(Failure::BadAnswer(
                "the backend closed the connection within the answer body",
            ));
        }
    }
    Ok(buf.split_to(n).freeze())
}

/// A body that ends with the connection.
async fn read_until_close(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, Failure> {
    while read_body_more(stream, buf).await? > 0 {
        if buf.len() > max {
            return Err(Failure::TooLarge);
        }
    }
    Ok(buf.split().freeze())
}

/// Decodes a chunked body from `buf` and the stream, up to `max` bytes of data.
async fn read_chunked(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        let size = chunk_size(&read_line(stream, buf).await?)?;
        if size == 0 {
            // Trailers, if any, up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if size > max.saturating_sub(body.len()) {
            return Err(Failure::TooLarge);
        }
        while buf.len() < size + 2 {
            if read_body_more(stream, buf).await? == 0 {
                return Err(Failure::BadAnswer(
                    "the backend closed the connection within a chunk",
                ));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(Failure::BadAnswer("a chunk does not end with CRLF"));
        }
        buf.advance(size + 2);
    }
}

/// The size on a chunk line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<usize, Failure> {
    let size_hex = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    // Hex digits only (no sign), and few enough that no arithmetic on it can overflow.
    std::str::from_utf8(size_hex)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or(Failure::BadAnswer("the answer has an invalid chunk size"))
}

/// Takes one CRLF-terminated line (without the CRLF) from `buf`, reading more as needed.
async fn read_line(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, Failure> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(pos);
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Failure::BadAnswer("a chunk line is too long"));
        }
        if read_body_more(stream, buf).await? == 0 {
            return Err(Failure::BadAnswer(
                "the backend closed the connection within the chunked body",
            ));
        }
    }
}

/// Reads what is available into `buf`; 0 means end of stream.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await
}

/// [`read_more`] within an answer body, where any failure means a broken answer.
async fn read_body_more(stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, Failure> {
    read_more(stream, buf)
        .await
        .map_err(|_| Failure::BadAnswer("the connection failed within the answer"))
}
