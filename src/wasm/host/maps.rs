//! `moonbox:ext/maps`: the maps loaded by the configuration.

use crate::sample::map::MapMatch;
use crate::wasm::bindings::moonbox::ext::maps::Host;
use crate::wasm::instance::Ctx;

impl Host for Ctx {
    fn lookup(
        &mut self,
        file: String,
        method: String,
        key: String,
    ) -> Result<Option<String>, String> {
        let world = self.world.as_ref().ok_or("no maps during init")?;
        let map = world
            .maps
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
        let world = self.world.as_ref().ok_or("no maps during init")?;
        world.maps.set(&file, &key, &value)
    }

    fn del(&mut self, file: String, key: String) -> Result<(), String> {
        let world = self.world.as_ref().ok_or("no maps during init")?;
        world.maps.del(&file, &key).map(|_| ())
    }
}
