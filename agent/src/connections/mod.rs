//! Connections: [`pairing`] pairs each request with its response on its connection (by socket
//! cookie), with the latency between them.

pub(crate) mod pairing;
