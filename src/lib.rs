//! moonbox: a reverse proxy that HAProxy users recognise, whose extensions
//! run sandboxed in WebAssembly.
//!
//! Data flows one way: configuration (`config`) -> model -> running proxy
//! (`proxy`). A request flows listener -> rules (`sample`, `acl`) ->
//! extension calls through `ext` -> backend or service.

#![deny(unsafe_code)]

pub mod acl;
pub mod cli;
pub mod config;
pub mod ext;
pub mod proxy;
pub mod sample;
pub mod wasm;
