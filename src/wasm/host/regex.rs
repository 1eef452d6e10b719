//! `moonbox:ext/regex`: regular expressions compiled by the host, cached
//! per instance.

use crate::wasm::bindings::moonbox::ext::regex::Host;
use crate::wasm::instance::Ctx;

/// Patterns kept compiled per instance; the cache is emptied when full.
const CACHE: usize = 256;

impl Host for Ctx {
    fn captures(
        &mut self,
        pattern: String,
        case_insensitive: bool,
        subject: String,
    ) -> Result<Option<Vec<String>>, String> {
        let key = (pattern, case_insensitive);
        if !self.regexes.contains_key(&key) {
            let re = regex::RegexBuilder::new(&key.0)
                .case_insensitive(case_insensitive)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("invalid regex '{}': {e}", key.0))?;
            if self.regexes.len() >= CACHE {
                self.regexes.clear();
            }
            self.regexes.insert(key.clone(), re);
        }
        let Some(re) = self.regexes.get(&key) else {
            return Ok(None);
        };
        Ok(re.captures(&subject).map(|c| {
            c.iter()
                .map(|m| m.map(|m| m.as_str().to_string()).unwrap_or_default())
                .collect()
        }))
    }
}
