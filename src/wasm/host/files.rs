//! `moonbox:ext/files`: reading files while an extension loads, only under
//! the folders its configuration grants (a Lua script's folder, its
//! `lua-prepend-path` folders).

use crate::wasm::bindings::moonbox::ext::files::Host;
use crate::wasm::instance::{Ctx, Point};

impl Host for Ctx {
    fn read(&mut self, path: String) -> Result<Vec<u8>, String> {
        if self.point != Point::Init {
            return Err(format!(
                "{path}: files can only be read while the extension loads"
            ));
        }
        let real = std::fs::canonicalize(&path).map_err(|e| format!("{path}: {e}"))?;
        if !self.readable.iter().any(|dir| real.starts_with(dir)) {
            return Err(format!(
                "{path}: not allowed, only files under the script's folders can be read"
            ));
        }
        std::fs::read(&real).map_err(|e| format!("{path}: {e}"))
    }
}
