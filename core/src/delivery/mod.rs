//! The pure parts of async delivery that a credential's table configures: where its callbacks may
//! go ([`ssrf`]: allow-list, scheme and address rules), how they are signed ([`sign`]) and the two
//! together as the credential's [`policy`]. Sending, retries, the dead-letter log and the spool are
//! the proxy's (`botbridge::delivery`).

pub mod policy;
pub mod sign;
pub mod ssrf;
