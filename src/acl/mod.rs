//! ACLs: criteria, matching methods and conditions.

use crate::proxy::txn::Txn;
use crate::sample::ParseCtx;

/// The named ACLs of a proxy.
#[derive(Debug, Clone, Default)]
pub struct AclTable {}

impl AclTable {
    /// Adds the words following `acl` (`NAME CRITERION [FLAGS] [PATTERNS]`).
    pub fn add(&mut self, _words: &[String], _ctx: &ParseCtx<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// A condition: `if|unless TERMS`.
#[derive(Debug, Clone)]
pub struct Cond {}

impl Cond {
    /// Parses words starting with `if` or `unless`.
    pub fn parse(_words: &[String], _acls: &AclTable, _ctx: &ParseCtx<'_>) -> Result<Cond, String> {
        Ok(Cond {})
    }

    pub fn eval(&self, _txn: &mut Txn) -> bool {
        true
    }
}
