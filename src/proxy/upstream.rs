//! The HTTP client towards servers: HTTP/1.1 with keep-alive and a
//! connection pool per server address.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Error type of bodies moved through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy sends and receives.
pub type Body = BoxBody<Bytes, BoxError>;

/// A pooled HTTP/1.1 client for one backend.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub client: Client<HttpConnector, Body>,
}

impl Upstream {
    pub fn new(connect_timeout: Option<Duration>) -> Upstream {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(connect_timeout);
        conn.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(usize::MAX)
            .retry_canceled_requests(true)
            .set_host(true)
            .build(conn);
        Upstream { client }
    }
}
