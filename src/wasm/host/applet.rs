//! `moonbox:ext/applet`: the request an HTTP service answers. Its I/O
//! (receive, start, send) are `io` waits, performed in `crate::wasm::io`.

use crate::wasm::bindings::moonbox::ext::applet::{Host, HttpRequest};
use crate::wasm::instance::Ctx;

impl Host for Ctx {
    fn request(&mut self) -> Option<HttpRequest> {
        self.applet.clone()
    }
}
