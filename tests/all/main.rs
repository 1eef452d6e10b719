//! Integration tests: the real proxy (in-process or the `proxy` binary) on
//! 127.0.0.1:0, real upstream servers, real HTTP clients.

mod balance;
mod cli;
mod common;
mod configs;
mod differential;
mod examples;
mod ext;
mod http;
mod lifecycle;
mod lua;
mod lua_api;
mod rules;
mod tcp;
mod wasm;
