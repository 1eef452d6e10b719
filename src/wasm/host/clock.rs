//! `moonbox:ext/clock`: time that needs no waiting.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::wasm::bindings::moonbox::ext::clock::Host;
use crate::wasm::instance::Ctx;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Host for Ctx {
    fn now(&mut self) -> (u64, u32) {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (d.as_secs(), d.subsec_micros())
    }

    fn monotonic_ms(&mut self) -> u64 {
        ORIGIN.elapsed().as_millis() as u64
    }
}
