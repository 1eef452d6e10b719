//! Applets: what services read from and write to.

/// The HTTP side of a service: the request, and the response it builds.
pub struct HttpApplet {}

/// The TCP side of a service: the client byte stream.
pub struct TcpApplet {}
