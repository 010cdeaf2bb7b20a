//! State shared between instances: [`redis`], the connection, its health and the cache clear channel.

pub mod redis;
