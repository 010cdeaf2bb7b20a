//! Reading a backend's answer off a connection: the head (a few interim 1xx answers skipped), then the
//! body, framed by `Content-Length`, chunked encoding, or (without either) the end of the connection,
//! and bounded by a size limit. Also whether the connection can carry another request: only when the
//! answer was complete, exactly framed and keep-alive.
//!
//! Strict where a lenient reader would wait or keep going: a malformed chunk line or chunk end fails
//! at the first wrong byte rather than at the read timeout, and the head and line limits bound the
//! bytes read, not only those parsed. Each failure has its own fixed message.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

use super::error::Failure;
use super::head::{parse_head, Framing, Head, MAX_HEAD_BYTES};
use super::Exchange;

/// Most interim (1xx) answers accepted before the final one. A bot has reason to send one or two
/// (100 Continue, 103 Early Hints); a stream of them would keep the proxy parsing until the read
/// timeout.
const MAX_INTERIM_ANSWERS: usize = 3;
/// Longest chunk size line: at most 8 hex digits, with room for extensions.
const MAX_CHUNK_LINE: usize = 4096;

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
    let exchange = Exchange {
        status: head.status,
        body,
        answered_at: Instant::now(),
    };
    Ok((exchange, reusable))
}

/// Reads up to the final answer's head and takes it out of `buf`.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> Result<Head, Failure> {
    // Whether any answer byte arrived: until then a failure may be a connection closed while idle.
    let mut answered = false;
    let mut interim = 0;
    loop {
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        while let Some(head) = parse_head(buf)? {
            buf.advance(head.len);
            if head.status == 101 {
                // A protocol switch was never asked for; the connection cannot be used as HTTP.
                return Err(Failure::BadAnswer("the backend switched protocols"));
            }
            if !(100..200).contains(&head.status) {
                return Ok(head);
            }
            interim += 1;
            if interim > MAX_INTERIM_ANSWERS {
                return Err(Failure::BadAnswer(
                    "the backend sent too many interim (1xx) answers",
                ));
            }
        }
        // The limit bounds what is read, not only what is parsed: never more than its room.
        let room = MAX_HEAD_BYTES - buf.len().min(MAX_HEAD_BYTES);
        if room == 0 {
            return Err(Failure::BadAnswer("the answer header is too large"));
        }
        read_head_more(stream, buf, room, answered).await?;
        answered = true;
    }
}

/// [`read_more`] within the head: before the first answer byte, a failure is no answer at all.
async fn read_head_more(
    stream: &mut Stream,
    buf: &mut BytesMut,
    room: usize,
    answered: bool,
) -> Result<(), Failure> {
    match read_more(stream, buf, room).await {
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
        let size = chunk_size(&read_chunk_line(stream, buf).await?)?;
        if size == 0 {
            read_trailers(stream, buf).await?;
            return Ok(body.freeze());
        }
        if size > max.saturating_sub(body.len()) {
            return Err(Failure::TooLarge);
        }
        while !chunk_ends(buf, size)? {
            if read_body_more(stream, buf).await? == 0 {
                return Err(Failure::BadAnswer(
                    "the backend closed the connection within a chunk",
                ));
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

/// Whether `buf` holds a chunk's `size` bytes of data and the CRLF after them. A wrong byte where
/// the CRLF goes fails at once, without waiting for the rest.
fn chunk_ends(buf: &[u8], size: usize) -> Result<bool, Failure> {
    let end = buf.get(size..).unwrap_or_default();
    let n = end.len().min(2);
    if end[..n] != b"\r\n"[..n] {
        return Err(Failure::BadAnswer("a chunk does not end with CRLF"));
    }
    Ok(n == 2)
}

/// A chunk's size line. A byte that cannot belong to one fails at once, before the line is whole.
async fn read_chunk_line(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, Failure> {
    loop {
        if let Some(line) = take_line(buf)? {
            return Ok(line);
        }
        size_digits(buf)?;
        read_line_more(stream, buf, MAX_CHUNK_LINE, "a chunk line is too long").await?;
    }
}

/// The trailer section after the last chunk, up to its empty line (its fields are ignored), of at
/// most [`MAX_HEAD_BYTES`].
async fn read_trailers(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Failure> {
    // What is left of the limit, counted from the start of `buf`.
    let mut left = MAX_HEAD_BYTES;
    loop {
        match take_line(buf)? {
            Some(line) if line.is_empty() => return Ok(()),
            Some(line) => left = left.saturating_sub(line.len() + 2),
            None => {
                read_line_more(stream, buf, left, "the answer's trailers are too large").await?
            }
        }
    }
}

/// Reads more of a line into `buf`, which then holds at most `limit` bytes.
async fn read_line_more(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: usize,
    too_long: &'static str,
) -> Result<(), Failure> {
    let room = limit.saturating_sub(buf.len());
    if room == 0 {
        return Err(Failure::BadAnswer(too_long));
    }
    match read_more(stream, buf, room).await {
        Ok(0) => Err(Failure::BadAnswer(
            "the backend closed the connection within the chunked body",
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(Failure::BadAnswer(
            "the connection failed within the answer",
        )),
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off `buf`, or `None` while `buf` holds no
/// line end yet. A bare LF, or a CR followed by anything but LF, fails at once.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, Failure> {
    let Some(i) = buf.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Ok(None);
    };
    match (buf[i], buf.get(i + 1)) {
        (b'\r', None) => Ok(None),
        (b'\r', Some(b'\n')) => {
            let line = buf.split_to(i);
            buf.advance(2);
            Ok(Some(line))
        }
        _ => Err(Failure::BadAnswer(
            "a line of the chunked body does not end with CRLF",
        )),
    }
}

/// The size on a chunk line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<usize, Failure> {
    let digits = size_digits(line)?;
    // At most 8 hex digits ([`size_digits`]): no arithmetic on the size can overflow.
    std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or(Failure::BadAnswer("the answer has an invalid chunk size"))
}

/// The hex digits a chunk line, whole or not yet, starts with. It fails as soon as the line cannot
/// be a chunk line: more than 8 digits, or after them anything but blanks and then `;` (RFC 9112
/// 7.1: `chunk-size [ BWS ";" extensions ]`).
fn size_digits(line: &[u8]) -> Result<&[u8], Failure> {
    // A line not yet whole may end in its CR.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[n..];
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let ok = n <= 8 && (rest.is_empty() || n > 0 && rest.get(blanks).is_none_or(|&b| b == b';'));
    if !ok {
        return Err(Failure::BadAnswer("the answer has an invalid chunk size"));
    }
    Ok(&line[..n])
}

/// Reads what is available into `buf`, at most `room` bytes (more than 0); 0 means end of stream.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut, room: usize) -> std::io::Result<usize> {
    debug_assert!(room > 0);
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(&mut (&mut *buf).limit(room)).await
}

/// [`read_more`] within an answer body, where any failure means a broken answer.
async fn read_body_more(stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, Failure> {
    read_more(stream, buf, usize::MAX)
        .await
        .map_err(|_| Failure::BadAnswer("the connection failed within the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// What reading an answer made of `parts` gave (each part one write; the backend keeps the
    /// connection open after them): the body and whether the connection is reusable, or the
    /// failure's message. Within a second: nothing here may wait for a timeout.
    async fn read(parts: &[&[u8]]) -> Result<(String, bool), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in parts {
                // A failed write is the reader having given up: what it said is the result.
                if server.write_all(&p).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            // Hold the connection open until the reader is done with it.
            let _ = server.read(&mut [0u8; 1]).await;
        });
        let read = tokio::time::timeout(Duration::from_secs(1), read_answer(&mut stream, 1 << 20))
            .await
            .expect("answered (or refused) at once, not at a timeout");
        drop(stream);
        writer.await.unwrap();
        match read {
            Ok((x, reusable)) => Ok((String::from_utf8(x.body.to_vec()).unwrap(), reusable)),
            Err(Failure::BadAnswer(why)) => Err(why.to_owned()),
            Err(Failure::TooLarge) => Err("too large".to_owned()),
            Err(_) => Err("no answer".to_owned()),
        }
    }

    const OK_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_few_interim_answers_are_skipped_a_flood_is_refused() {
        let three = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(3);
        let final_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            read(&[&three, final_answer]).await,
            Ok(("ok".to_owned(), true))
        );
        let flood = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".repeat(1000);
        assert_eq!(
            read(&[&flood]).await,
            Err("the backend sent too many interim (1xx) answers".to_owned())
        );
    }

    #[tokio::test]
    async fn the_head_limit_bounds_what_is_read() {
        let head = |pad: usize| {
            let mut h = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: ".to_vec();
            h.resize(h.len() + pad, b'a');
            h.extend_from_slice(b"\r\n\r\nok");
            h
        };
        // A whole head over the limit, arriving at once, is refused all the same.
        assert_eq!(
            read(&[&head(MAX_HEAD_BYTES)]).await,
            Err("the answer header is too large".to_owned())
        );
        let fits = head(MAX_HEAD_BYTES - 100);
        assert_eq!(read(&[&fits]).await, Ok(("ok".to_owned(), true)));
        // Sent in pieces, it is the same.
        let (a, b) = fits.split_at(40_000);
        assert_eq!(read(&[a, b]).await, Ok(("ok".to_owned(), true)));
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_trailers_and_extensions_ignored() {
        let body = b"5;name=value\r\nhello\r\n6 \r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        assert_eq!(
            read(&[OK_CHUNKED, body]).await,
            Ok(("hello world".to_owned(), true))
        );
        // Every byte on its own: the same.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            read(&[&[OK_CHUNKED], &bytes[..]].concat()).await,
            Ok(("hello world".to_owned(), true))
        );
    }

    #[tokio::test]
    async fn malformed_chunks_fail_at_the_first_wrong_byte() {
        let cases: [(&[u8], &str); 8] = [
            (
                b"5\nhello",
                "a line of the chunked body does not end with CRLF",
            ),
            (b"5\rX", "a line of the chunked body does not end with CRLF"),
            (b"zz", "the answer has an invalid chunk size"),
            (b" 5\r\n", "the answer has an invalid chunk size"),
            (b"5 x", "the answer has an invalid chunk size"),
            (b"123456789", "the answer has an invalid chunk size"),
            (b"5\r\nhelloX", "a chunk does not end with CRLF"),
            (b"5\r\nhello\rX", "a chunk does not end with CRLF"),
        ];
        for (body, want) in cases {
            // The backend holds the connection open after the bad byte.
            assert_eq!(
                read(&[OK_CHUNKED, body]).await,
                Err(want.to_owned()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let endless_extension = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert_eq!(
            read(&[OK_CHUNKED, &endless_extension]).await,
            Err("a chunk line is too long".to_owned())
        );
        let endless_trailer = [b"0\r\nX: ".as_slice(), &[b'x'; MAX_HEAD_BYTES]].concat();
        assert_eq!(
            read(&[OK_CHUNKED, &endless_trailer]).await,
            Err("the answer's trailers are too large".to_owned())
        );
    }

    #[tokio::test]
    async fn only_chunked_alone_is_a_transfer_coding() {
        let gzip =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(
            read(&[gzip]).await,
            Err("the answer uses a transfer coding other than chunked".to_owned())
        );
    }

    #[tokio::test]
    async fn connections_that_carried_stray_bytes_are_not_reusable() {
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(read(&[no_content]).await, Ok((String::new(), true)));
        // A 204 that declares a body: whether its bytes came yet or not, never reused.
        let declared = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(read(&[declared]).await, Ok((String::new(), false)));
        assert_eq!(
            read(&[declared, b"hello"]).await,
            Ok((String::new(), false))
        );
        // A 304 with bytes after its head it did not declare.
        let stray = b"HTTP/1.1 304 Not Modified\r\n\r\nhello";
        assert_eq!(read(&[stray]).await, Ok((String::new(), false)));
        let longer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
        assert_eq!(read(&[longer]).await, Ok(("ok".to_owned(), false)));
    }
}
