//! `moonbox:ext/applet`: the request an HTTP service answers, and the
//! response it queues without waiting (`start`, `write`). Its waiting I/O
//! (receive, and sends beyond the queue) are `io` waits, performed in
//! `crate::wasm::io`.

use crate::wasm::bindings::moonbox::ext::applet::{Host, HttpRequest};
use crate::wasm::bindings::types::AppletHead;
use crate::wasm::instance::{Ctx, Point};

impl Host for Ctx {
    fn request(&mut self) -> Option<HttpRequest> {
        self.applet.clone()
    }

    fn start(&mut self, head: AppletHead) -> Result<(), String> {
        if self.point != Point::Service {
            return Err("no applet: not a service".to_string());
        }
        self.applet_out.head(head);
        Ok(())
    }

    fn write(&mut self, data: Vec<u8>) -> Result<bool, String> {
        if self.point != Point::Service {
            return Err("no applet: not a service".to_string());
        }
        Ok(self.applet_out.write(data))
    }
}
