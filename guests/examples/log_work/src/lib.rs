//! A task that logs "Doing some task work!" every 10 seconds, or every N
//! milliseconds given as the first `ext-load` argument (the seed's
//! `log_work.lua`).
use moonbox_sdk::prelude::*;

fn init(ext: &mut Registrar, args: &[String]) -> Result<(), String> {
    let every_ms = match args.first() {
        Some(a) => a
            .parse()
            .map_err(|_| format!("'{a}' is not a number of milliseconds"))?,
        None => 10_000,
    };
    ext.task("log_work", move || async move {
        loop {
            log::info("Doing some task work!");
            sleep_ms(every_ms).await;
        }
    });
    Ok(())
}

moonbox_sdk::export!(init);
