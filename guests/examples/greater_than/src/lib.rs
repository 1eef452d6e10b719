//! A fetch comparing two variables, named by its arguments: true when the
//! first holds a number greater than the second's (the seed's
//! `greater_than.lua`). Use: `greater_than.greater_than(txn.a,txn.b)`.
use moonbox_sdk::prelude::*;

fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    ext.fetch("greater_than", |txn, args| {
        let var = |i: usize| {
            let name = args.get(i).map(Sample::to_str).unwrap_or_default();
            txn.get_var(&name).and_then(|v| v.to_int()).unwrap_or(0)
        };
        Ok(Some(Sample::from(var(0) > var(1))))
    });
    Ok(())
}

moonbox_sdk::export!(init);
