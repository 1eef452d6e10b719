//! Map files (`map(file)` converters, `core.set_map`): loaded at parse
//! time, shared by all requests, changeable at run time.

#[derive(Debug, Default)]
pub struct MapStore {}

impl MapStore {
    pub fn new() -> MapStore {
        MapStore {}
    }
}
