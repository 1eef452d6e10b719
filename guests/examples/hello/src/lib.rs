//! Says hello when the proxy starts (the seed's `hello.lua`).
use moonbox_sdk::prelude::*;

fn init(_ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    log::info("Hello HAProxy!");
    Ok(())
}

moonbox_sdk::export!(init);
