//! Log-format strings: literal text with `%[expr]` and `%X` log variables,
//! as used in header values, redirect targets and `lf-string` bodies.

use super::ParseCtx;
use crate::proxy::txn::Txn;

#[derive(Debug, Clone)]
pub struct LogFormat {
    text: String,
}

impl LogFormat {
    pub fn parse(text: &str, _ctx: &ParseCtx<'_>) -> Result<LogFormat, String> {
        Ok(LogFormat {
            text: text.to_string(),
        })
    }

    /// A format that is only `text`.
    pub fn literal(text: &str) -> LogFormat {
        LogFormat {
            text: text.to_string(),
        }
    }

    pub fn eval(&self, _txn: &mut Txn) -> String {
        self.text.clone()
    }
}
