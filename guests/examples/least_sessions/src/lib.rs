//! A fetch naming the backend with the fewest current sessions among those
//! whose name starts with the frontend's (the seed's `least_sessions.lua`).
//! Use: `use_backend %[least_sessions.least_sessions]`.
use moonbox_sdk::prelude::*;
use moonbox_sdk::proxies;

fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    ext.fetch("least_sessions", |txn, _args| {
        let frontend = txn.sf("fe_name", &[]);
        let mut best: Option<(i64, String)> = None;
        for p in proxies::list().into_iter().filter(|p| p.backend) {
            if !p.name.starts_with(&frontend) {
                continue;
            }
            let sessions: i64 = p
                .servers
                .iter()
                .filter_map(|s| proxies::server_stats(&p.name, &s.name))
                .filter_map(|st| st.get("scur").and_then(|v| v.parse::<i64>().ok()))
                .sum();
            if best.as_ref().is_none_or(|(n, _)| sessions < *n) {
                best = Some((sessions, p.name));
            }
        }
        Ok(best.map(|(_, name)| Sample::from(name)))
    });
    Ok(())
}

moonbox_sdk::export!(init);
