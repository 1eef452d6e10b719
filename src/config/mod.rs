//! HAProxy-style configuration: lexer, parser and model. Every error carries
//! `file:line:` and says what was expected.

pub mod model;

pub use model::Config;
