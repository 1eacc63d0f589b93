//! Decoding a method's `params` object as SPDK does
//! (`spdk_json_decode_object`): every key must be known, types are strict,
//! required keys must be there.

use serde_json::{Map, Value};

use super::RpcError;

/// A method's parameters, checked against the keys it knows.
pub struct Params<'a> {
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Params<'a> {
    /// Check `params` (absent, `null` or an object) against `known`.
    pub fn new(params: Option<&'a Value>, known: &[&str]) -> Result<Self, RpcError> {
        let map = match params {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(RpcError::invalid_params("params must be an object")),
        };
        if let Some(m) = map {
            if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(RpcError::invalid_params(format!("unknown parameter {k:?}")));
            }
        }
        Ok(Params { map })
    }

    /// For methods that take none: SPDK refuses any.
    pub fn none(params: Option<&Value>, method: &str) -> Result<(), RpcError> {
        match params {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(RpcError::invalid_params(format!(
                "{method} requires no parameters"
            ))),
        }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(k)).filter(|v| !v.is_null())
    }

    /// A value that must be there.
    pub fn req(&self, k: &str) -> Result<&'a Value, RpcError> {
        self.get(k)
            .ok_or_else(|| RpcError::invalid_params(format!("missing parameter {k:?}")))
    }

    /// A string.
    pub fn str(&self, k: &str) -> Result<&'a str, RpcError> {
        as_str(self.req(k)?, k)
    }

    /// An optional string.
    pub fn opt_str(&self, k: &str) -> Result<Option<&'a str>, RpcError> {
        self.get(k).map(|v| as_str(v, k)).transpose()
    }

    /// An integer in `lo..=hi`.
    pub fn int(&self, k: &str, lo: i64, hi: i64) -> Result<i64, RpcError> {
        as_int(self.req(k)?, k, lo, hi)
    }

    /// An optional integer in `lo..=hi`.
    pub fn opt_int(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, RpcError> {
        self.get(k).map(|v| as_int(v, k, lo, hi)).transpose()
    }

    /// An optional boolean (`false` when absent).
    pub fn flag(&self, k: &str) -> Result<bool, RpcError> {
        Ok(self.opt_bool(k)?.unwrap_or(false))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, k: &str) -> Result<Option<bool>, RpcError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(RpcError::invalid_params(format!("{k} must be a boolean"))),
        }
    }

    /// An array of at most `max` items.
    pub fn arr(&self, k: &str, max: usize) -> Result<&'a [Value], RpcError> {
        as_arr(self.req(k)?, k, max)
    }

    /// An optional array of at most `max` items (empty when absent).
    pub fn opt_arr(&self, k: &str, max: usize) -> Result<&'a [Value], RpcError> {
        match self.get(k) {
            None => Ok(&[]),
            Some(v) => as_arr(v, k, max),
        }
    }

    /// An array of strings.
    pub fn strings(&self, k: &str, max: usize, required: bool) -> Result<Vec<String>, RpcError> {
        let a = if required {
            self.arr(k, max)?
        } else {
            self.opt_arr(k, max)?
        };
        a.iter().map(|v| as_str(v, k).map(str::to_string)).collect()
    }
}

/// A string value.
pub fn as_str<'v>(v: &'v Value, k: &str) -> Result<&'v str, RpcError> {
    v.as_str()
        .ok_or_else(|| RpcError::invalid_params(format!("{k} must be a string")))
}

/// An integer value in `lo..=hi`.
pub fn as_int(v: &Value, k: &str, lo: i64, hi: i64) -> Result<i64, RpcError> {
    match v.as_i64() {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(RpcError::invalid_params(format!(
            "{k} must be an integer from {lo} to {hi}"
        ))),
    }
}

fn as_arr<'v>(v: &'v Value, k: &str, max: usize) -> Result<&'v [Value], RpcError> {
    match v.as_array() {
        Some(a) if a.len() <= max => Ok(a),
        Some(_) => Err(RpcError::invalid_params(format!(
            "{k} holds at most {max} items"
        ))),
        None => Err(RpcError::invalid_params(format!("{k} must be an array"))),
    }
}

/// An object inside an array, checked against its known keys.
pub fn item<'v>(v: &'v Value, what: &str, known: &[&str]) -> Result<Params<'v>, RpcError> {
    if !v.is_object() {
        return Err(RpcError::invalid_params(format!(
            "{what} items are objects"
        )));
    }
    Params::new(Some(v), known)
}
