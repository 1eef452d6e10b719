//! Sample expressions: a fetch followed by converters
//! (`req.hdr(host),lower,map(hosts.map)`).

use super::{ParseCtx, Sample};
use crate::proxy::txn::Txn;

/// A parsed sample expression.
#[derive(Debug, Clone)]
pub struct Expr {
    text: String,
}

impl Expr {
    /// Parses a bare expression (no `%[` `]`).
    pub fn parse(text: &str, _ctx: &ParseCtx<'_>) -> Result<Expr, String> {
        Ok(Expr {
            text: text.to_string(),
        })
    }

    /// Evaluates the expression; `None` is "no sample".
    pub fn eval(&self, _txn: &mut Txn) -> Option<Sample> {
        let _ = &self.text;
        None
    }
}
