//! HAProxy-style configuration: lexer, parser and model. Every error carries
//! `file:line:` and says what was expected.

pub mod lexer;
pub mod model;
pub mod parser;

pub use model::Config;
pub use parser::{ConfigError, ConfigErrors, Loaded, load, load_sources};
