//! The request writer: a complete HTTP/1.1 request built directly as bytes.
//!
//! pingora's own HTTP client writes a request's header and body in two writes and builds a header map
//! first; a proxy whose requests are small and complete before it sends them does better writing the
//! whole request in one write from bytes it built directly ([`RequestBytes`]).

/// A complete HTTP/1.1 request, built as bytes: request line, headers, `Content-Length`, body.
///
/// Header names and values must already be safe (values are checked when the configuration is
/// loaded, request ids when they arrive); nothing here re-validates them.
pub struct RequestBytes(Vec<u8>);

impl RequestBytes {
    /// `POST <path> HTTP/1.1`, with room for a body of `body` bytes and the usual headers.
    pub fn post(path: &str, body: usize) -> Self {
        Self::new("POST", path, body)
    }

    /// `<method> <path> HTTP/1.1`, with room for a body of `body` bytes and the usual headers.
    pub fn new(method: &str, path: &str, body: usize) -> Self {
        // A signed request's head is about 400 bytes: room for it, so the buffer never grows.
        let mut v = Vec::with_capacity(path.len() + body + 640);
        v.extend_from_slice(method.as_bytes());
        v.push(b' ');
        v.extend_from_slice(path.as_bytes());
        v.extend_from_slice(b" HTTP/1.1\r\n");
        RequestBytes(v)
    }

    /// Adds a header.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the header block with the body's exact `Content-Length`, then appends the body.
    pub fn body(mut self, body: &[u8]) -> Vec<u8> {
        self.0.extend_from_slice(b"content-length: ");
        (self.0).extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.0.extend_from_slice(b"\r\n\r\n");
        self.0.extend_from_slice(body);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_are_one_complete_request() {
        let mut r = RequestBytes::post("/api/chat", 10);
        r.header("host", "bot:8080").header("x-api-key", "k");
        let bytes = r.body(b"{\"a\":1}");
        assert_eq!(
            bytes,
            b"POST /api/chat HTTP/1.1\r\nhost: bot:8080\r\nx-api-key: k\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }
}
