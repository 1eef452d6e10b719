//! The host side of `wit/ext.wit`, generated once, here.
//!
//! Guest exports are called asynchronously (on a fiber) because WASI p2 is
//! linked asynchronously; every host import of ours is synchronous. The host
//! drives each call to completion at once (see `instance::drive`): a guest
//! call never waits inside the host.

wasmtime::component::bindgen!({
    path: "wit",
    world: "extension",
    exports: { default: async },
});

pub use self::exports::moonbox::ext::guest::Guest;
pub use self::moonbox::ext::types;
