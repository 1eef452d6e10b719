//! `moonbox:ext/maps`: the maps loaded by the configuration, and those an
//! extension loads while it initialises.

use std::path::Path;
use std::sync::Arc;

use crate::sample::map::{MapMatch, MapStore};
use crate::wasm::bindings::moonbox::ext::maps::Host;
use crate::wasm::instance::{Ctx, Point};

impl Ctx {
    /// The running proxy's maps, or the configuration's while it loads.
    fn map_store(&self) -> Result<&Arc<MapStore>, String> {
        self.world
            .as_ref()
            .map(|w| &w.maps)
            .or(self.maps.as_ref())
            .ok_or_else(|| "no maps here".to_string())
    }
}

impl Host for Ctx {
    fn lookup(
        &mut self,
        file: String,
        method: String,
        key: String,
    ) -> Result<Option<String>, String> {
        let map = self
            .map_store()?
            .get(&file)
            .ok_or_else(|| format!("no map '{file}' is loaded"))?;
        let kind = MapMatch::parse(&method)
            .ok_or_else(|| format!("unknown match method '{method}', expected str, beg, end, sub, reg, dom, dir, int or ip"))?;
        Ok(match kind {
            MapMatch::Int => key.trim().parse().ok().and_then(|v| map.lookup_int(v)),
            MapMatch::Ip => key.trim().parse().ok().and_then(|ip| map.lookup_ip(ip)),
            k => map.lookup_str(k, &key),
        })
    }

    fn set(&mut self, file: String, key: String, value: String) -> Result<(), String> {
        self.map_store()?.set(&file, &key, &value)
    }

    fn del(&mut self, file: String, key: String) -> Result<(), String> {
        self.map_store()?.del(&file, &key).map(|_| ())
    }

    fn load(&mut self, file: String) -> Result<(), String> {
        let store = self.map_store()?;
        if store.get(&file).is_some() {
            return Ok(());
        }
        if self.point != Point::Init {
            return Err(format!(
                "{file}: maps can only be loaded while the extension initialises"
            ));
        }
        store.load(Path::new(&file)).map(|_| ())
    }
}
