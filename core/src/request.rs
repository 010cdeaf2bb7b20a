//! A caller's request as the pure core sees it: its head ([`RequestHead`]), and the head with its
//! body for a credential that covers the whole request ([`WholeRequest`], e.g. AWS SigV4).

/// A request's head: its method, its path as sent, its query and its header values by (lowercase)
/// name.
pub trait RequestHead: Sync {
    /// The method (`POST`).
    fn method(&self) -> &str;
    /// The path as it arrived, still percent-encoded, without the query.
    fn path(&self) -> &str;
    /// A header's value.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The query string (after `?`), if any.
    fn query(&self) -> Option<&str>;
}

/// A whole request: its head and its complete body.
#[derive(Clone, Copy)]
pub struct WholeRequest<'a> {
    pub head: &'a dyn RequestHead,
    pub body: &'a [u8],
}

impl WholeRequest<'_> {
    /// A header's value as text (`None` if absent or not UTF-8).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.head
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}
