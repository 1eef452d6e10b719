//! `moonbox:ext/log`: guest log lines go to the proxy's log, tagged with the
//! extension's namespace.

use crate::wasm::bindings::moonbox::ext::log::Host;
use crate::wasm::bindings::types::Level;
use crate::wasm::instance::Ctx;

impl Host for Ctx {
    fn log(&mut self, level: Level, message: String) {
        emit(&self.ns, level, &message);
    }
}

/// Writes one guest log line at its level.
pub fn emit(ns: &str, level: Level, message: &str) {
    let message = message.trim_end_matches(['\n', '\r']);
    match level {
        Level::Emerg | Level::Alert | Level::Crit | Level::Err => {
            tracing::error!(target: "ext", ext = ns, "{message}")
        }
        Level::Warning => tracing::warn!(target: "ext", ext = ns, "{message}"),
        Level::Notice | Level::Info => tracing::info!(target: "ext", ext = ns, "{message}"),
        Level::Debug => tracing::debug!(target: "ext", ext = ns, "{message}"),
    }
}
