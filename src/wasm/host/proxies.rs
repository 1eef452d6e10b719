//! `moonbox:ext/proxies`: frontends, backends, servers and their stats.

use std::sync::Arc;

use crate::proxy::state::{ServerRt, ServerState};
use crate::wasm::bindings::moonbox::ext::proxies::{Host, ProxyInfo, ServerInfo};
use crate::wasm::instance::Ctx;

fn pairs(v: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Ctx {
    /// A server of the running proxy, for administrative changes.
    fn server(&self, proxy: &str, server: &str) -> Result<Arc<ServerRt>, String> {
        let world = self.world.as_ref().ok_or("no proxies during init")?;
        let p = world
            .proxy(proxy)
            .ok_or_else(|| format!("no proxy '{proxy}'"))?;
        p.server(server)
            .cloned()
            .ok_or_else(|| format!("proxy '{proxy}' has no server '{server}'"))
    }
}

impl Host for Ctx {
    fn list_proxies(&mut self) -> Vec<ProxyInfo> {
        let Some(world) = &self.world else {
            return Vec::new();
        };
        world
            .proxies
            .iter()
            .map(|p| ProxyInfo {
                name: p.name.clone(),
                uuid: p.uuid,
                frontend: p.is_frontend(),
                backend: p.is_backend(),
                mode: match p.mode() {
                    crate::config::model::Mode::Http => "http",
                    crate::config::model::Mode::Tcp => "tcp",
                }
                .to_string(),
                servers: p
                    .servers
                    .iter()
                    .map(|s| ServerInfo {
                        name: s.name.clone(),
                        addr: s.addr.to_string(),
                        status: s.state().as_str().to_string(),
                        weight: s.weight.load(std::sync::atomic::Ordering::Relaxed),
                        backup: s.config.backup,
                        puid: s.puid,
                    })
                    .collect(),
            })
            .collect()
    }

    fn proxy_stats(&mut self, proxy: String) -> Option<Vec<(String, String)>> {
        let world = self.world.as_ref()?;
        world.proxy(&proxy).map(|p| pairs(p.stats()))
    }

    fn server_stats(&mut self, proxy: String, server: String) -> Option<Vec<(String, String)>> {
        let world = self.world.as_ref()?;
        let p = world.proxy(&proxy)?;
        p.server(&server).map(|s| pairs(s.stats(p)))
    }

    fn server_set_admin(
        &mut self,
        proxy: String,
        server: String,
        state: String,
    ) -> Result<(), String> {
        let s = self.server(&proxy, &server)?;
        match state.as_str() {
            "maint" => {
                s.set_state(ServerState::Maint);
            }
            "ready" => {
                s.set_state(if s.config.check {
                    ServerState::Up
                } else {
                    ServerState::NoCheck
                });
            }
            "drain" => s.weight.store(0, std::sync::atomic::Ordering::Relaxed),
            "up" => {
                s.set_state(ServerState::Up);
            }
            "down" => {
                s.set_state(ServerState::Down);
            }
            other => {
                return Err(format!(
                    "unknown state '{other}', expected maint, ready, drain, up or down"
                ));
            }
        }
        Ok(())
    }

    fn server_set_weight(
        &mut self,
        proxy: String,
        server: String,
        weight: u32,
    ) -> Result<(), String> {
        let s = self.server(&proxy, &server)?;
        if weight > 256 {
            return Err(format!("weight {weight} is out of range 0-256"));
        }
        s.weight.store(weight, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn server_set_maxconn(
        &mut self,
        proxy: String,
        server: String,
        maxconn: u32,
    ) -> Result<(), String> {
        let s = self.server(&proxy, &server)?;
        s.maxconn
            .store(maxconn, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
