//! Variables with HAProxy's scopes: `proc`, `sess`, `txn`, `req`, `res`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::Sample;

/// The scope of a variable: how long it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole process (all sessions).
    Proc,
    /// The client connection (all its transactions).
    Sess,
    /// One transaction (request and response).
    Txn,
    /// The request processing only.
    Req,
    /// The response processing only.
    Res,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Proc => "proc",
            Scope::Sess => "sess",
            Scope::Txn => "txn",
            Scope::Req => "req",
            Scope::Res => "res",
        }
    }
}

/// A variable's full name: `txn.tenant` is scope `Txn`, name `tenant`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VarName {
    pub scope: Scope,
    pub name: String,
}

impl FromStr for VarName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scope, name) = s
            .split_once('.')
            .ok_or_else(|| format!("variable '{s}' has no scope, expected proc.NAME, sess.NAME, txn.NAME, req.NAME or res.NAME"))?;
        let scope = match scope {
            "proc" => Scope::Proc,
            "sess" => Scope::Sess,
            "txn" => Scope::Txn,
            "req" => Scope::Req,
            "res" => Scope::Res,
            other => {
                return Err(format!(
                    "unknown variable scope '{other}' in '{s}', expected proc, sess, txn, req or res"
                ));
            }
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
        {
            return Err(format!(
                "invalid variable name '{s}', expected letters, digits, '_', '.' or '-' after the scope"
            ));
        }
        Ok(VarName {
            scope,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for VarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.scope.name(), self.name)
    }
}

/// A set of variables of one scope.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    map: HashMap<String, Sample>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&Sample> {
        self.map.get(name)
    }
    pub fn set(&mut self, name: &str, value: Sample) {
        self.map.insert(name.to_string(), value);
    }
    pub fn unset(&mut self, name: &str) -> Option<Sample> {
        self.map.remove(name)
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
