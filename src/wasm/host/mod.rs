//! What the host gives guests: one file per WIT interface, each implementing
//! its generated `Host` trait on the store's [`Ctx`](super::instance::Ctx).

pub mod applet;
pub mod clock;
pub mod files;
pub mod log;
pub mod maps;
pub mod proxies;
pub mod regex;
pub mod stdio;
pub mod txn;
pub mod types;
