//! The pure parts of async delivery that a credential's table configures: where its callbacks may
//! go ([`ssrf`]: allow-list, scheme and address rules), how they are signed ([`sign`]) and the two
//! together as the credential's [`policy`], and what the delivery journal writes down ([`journal`]).
//! Sending, retries, the dead-letter log, the journal's files and streams and the spool are the
//! proxy's (`botbridge::delivery`).

pub mod journal;
pub mod policy;
pub mod sign;
pub mod ssrf;
