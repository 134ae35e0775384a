//! Request bodies checked against their own OpenAPI schema: the constraints a request type
//! declares (`#[schema(minimum = 1, maximum = 1000)]`, lengths, patterns, enums, unknown fields
//! refused) are the ones its handler enforces, because the check reads them from the schema
//! the document publishes. One source of truth: the document and the check cannot drift.
//!
//! The check covers what this project's request types use of JSON Schema: `type` (a type or a
//! list, `null` for optional fields), `properties`, `required`, `additionalProperties: false`,
//! `minimum`, `maximum`, `minLength`, `maxLength`, `pattern`, `enum`, `items`, `minItems`,
//! `maxItems` and `$ref` to the type's own components. Anything else in a schema is ignored.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A type's schema as JSON, with the components it refers to.
struct Compiled {
    root: Value,
    components: Map<String, Value>,
}

static SCHEMAS: LazyLock<Mutex<HashMap<TypeId, Arc<Compiled>>>> = LazyLock::new(Default::default);
static PATTERNS: LazyLock<Mutex<HashMap<String, Arc<regex_lite::Regex>>>> = LazyLock::new(Default::default);

fn compiled<T: ToSchema + 'static>() -> Arc<Compiled> {
    let mut cache = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(TypeId::of::<T>())
        .or_insert_with(|| {
            let mut deps = Vec::new();
            T::schemas(&mut deps);
            let components = deps
                .into_iter()
                .filter_map(|(name, schema)| Some((name, serde_json::to_value(schema).ok()?)))
                .collect();
            Arc::new(Compiled {
                root: serde_json::to_value(T::schema()).unwrap_or(Value::Null),
                components,
            })
        })
        .clone()
}

/// Checks `value` against `T`'s schema: `Err` says what is wrong and where (`quantity: must
/// be at most 1000`), for a 400 a client can act on.
///
/// One stricter reading than JSON Schema 2020-12's: an integer must be written as one. `100.0`
/// is the integer 100 there, but for an amount of money it says the client may think in
/// fractions (dollars, not cents), and Stripe refuses it too; so it is refused, as serde does,
/// and the documents say so. (OpenAPI 3.0's JSON Schema, Draft 4, read it this way as well.)
pub fn check<T: ToSchema + 'static>(value: &Value) -> Result<(), String> {
    let compiled = compiled::<T>();
    Checker {
        components: &compiled.components,
    }
    .check(&compiled.root, value, "body")
}

/// What `T`'s schema declares for `field` under `keyword` (`maximum`, `pattern`, …): for the
/// tests that hold a schema's literal bounds equal to the constants the code computes with.
pub fn declared<T: ToSchema + 'static>(field: &str, keyword: &str) -> Option<Value> {
    compiled::<T>()
        .root
        .get("properties")?
        .get(field)?
        .get(keyword)
        .cloned()
}

struct Checker<'a> {
    components: &'a Map<String, Value>,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(value: &Value, wanted: &str) -> bool {
    let actual = type_name(value);
    actual == wanted || (wanted == "number" && actual == "integer")
}

impl Checker<'_> {
    fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let Some(schema) = schema.as_object() else {
            return Ok(());
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or_default();
            return match self.components.get(name) {
                Some(target) => self.check(target, value, at),
                None => Ok(()),
            };
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                self.check(part, value, at)?;
            }
        }
        // An optional field of a named type is `oneOf: [null, $ref]`: it passes when one of
        // them does; else the reason is the last alternative's (the type, after `null`).
        for key in ["oneOf", "anyOf"] {
            if let Some(alternatives) = schema.get(key).and_then(Value::as_array) {
                let mut reason = Ok(());
                for alternative in alternatives {
                    reason = self.check(alternative, value, at);
                    if reason.is_ok() {
                        break;
                    }
                }
                reason?;
            }
        }
        if let Some(wanted) = schema.get("type") {
            let types: Vec<&str> = match wanted {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !types.is_empty() && !types.iter().any(|t| is_type(value, t)) {
                let article = if types[0].starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                return Err(format!("{at}: must be {article} {}", types.join(" or ")));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !value.is_null()
            && !allowed.contains(value)
        {
            let names: Vec<String> = allowed
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect();
            return Err(format!("{at}: must be one of {}", names.join(", ")));
        }
        match value {
            Value::Number(_) => self.check_number(schema, value, at),
            Value::String(s) => self.check_string(schema, s, at),
            Value::Array(items) => self.check_array(schema, items, at),
            Value::Object(fields) => self.check_object(schema, fields, at),
            _ => Ok(()),
        }
    }

    fn check_number(&self, schema: &Map<String, Value>, value: &Value, at: &str) -> Result<(), String> {
        // OpenAPI's integer formats are ranges: a u64 is documented as `int64`, so a value
        // past i64::MAX is outside what the document promises to take.
        let range = match schema.get("format").and_then(Value::as_str) {
            Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
            Some("int64") => Some((i64::MIN, i64::MAX)),
            _ => None,
        };
        if let Some((min, max)) = range {
            if value.as_u64().is_some_and(|v| v > max as u64) {
                return Err(format!("{at}: must be at most {max}"));
            }
            if value.as_i64().is_some_and(|v| v < min) {
                return Err(format!("{at}: must be at least {min}"));
            }
        }
        let n = value.as_f64().unwrap_or(0.0);
        if let Some(min) = schema.get("minimum")
            && min.as_f64().is_some_and(|min| n < min)
        {
            return Err(format!("{at}: must be at least {min}"));
        }
        if let Some(max) = schema.get("maximum")
            && max.as_f64().is_some_and(|max| n > max)
        {
            return Err(format!("{at}: must be at most {max}"));
        }
        // Integers beyond f64's exact range: compare as integers where both sides are.
        if let (Some(v), Some(max)) = (value.as_u64(), schema.get("maximum").and_then(Value::as_u64))
            && v > max
        {
            return Err(format!("{at}: must be at most {max}"));
        }
        Ok(())
    }

    fn check_string(&self, schema: &Map<String, Value>, s: &str, at: &str) -> Result<(), String> {
        let length = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            return Err(format!("{at}: must be at least {min} characters long"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            return Err(format!("{at}: must be at most {max} characters long"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !matches_pattern(pattern, s)
        {
            return Err(format!("{at}: must match {pattern}"));
        }
        Ok(())
    }

    fn check_array(&self, schema: &Map<String, Value>, items: &[Value], at: &str) -> Result<(), String> {
        let count = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && count < min
        {
            return Err(format!("{at}: must have at least {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && count > max
        {
            return Err(format!("{at}: must have at most {max} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    fn check_object(&self, schema: &Map<String, Value>, fields: &Map<String, Value>, at: &str) -> Result<(), String> {
        let empty = Map::new();
        let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let path = |name: &str| {
            if at == "body" {
                name.to_string()
            } else {
                format!("{at}.{name}")
            }
        };
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    return Err(format!("{}: is required", path(name)));
                }
            }
        }
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (name, value) in fields {
            match properties.get(name) {
                Some(property) => self.check(property, value, &path(name))?,
                None if closed => return Err(format!("{}: is not a known field", path(name))),
                None => {}
            }
        }
        Ok(())
    }
}

/// Patterns are ECMA-262 regular expressions in the document; the ones used here are in the
/// common subset `regex_lite` reads. One that does not compile accepts nothing, so a broken
/// pattern shows at once in the tests instead of letting everything through.
fn matches_pattern(pattern: &str, s: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap_or_else(|e| e.into_inner());
    let compiled = match cache.get(pattern) {
        Some(re) => re.clone(),
        None => match regex_lite::Regex::new(pattern) {
            Ok(re) => {
                let re = Arc::new(re);
                cache.insert(pattern.to_string(), re.clone());
                re
            }
            Err(_) => return false,
        },
    };
    drop(cache);
    compiled.is_match(s)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        #[schema(minimum = 1, maximum = 1000)]
        quantity: u32,
        #[schema(min_length = 1, max_length = 8, pattern = "^[a-z]+$")]
        name: Option<String>,
        #[schema(minimum = 0, maximum = 9000000000000u64)]
        amount: Option<u64>,
        kind: Option<Kind>,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        Card,
        Wallet,
    }

    fn check_sample(v: Value) -> Result<(), String> {
        check::<Sample>(&v)
    }

    #[test]
    fn a_body_within_every_declared_bound_passes() {
        assert_eq!(check_sample(json!({"quantity": 1})), Ok(()));
        assert_eq!(
            check_sample(json!({"quantity": 1000, "name": "abc", "amount": 9000000000000u64, "kind": "wallet"})),
            Ok(())
        );
        assert_eq!(check_sample(json!({"quantity": 5, "name": null})), Ok(()));
    }

    #[test]
    fn an_integer_must_be_written_as_one() {
        let refused = Err("quantity: must be an integer".to_string());
        assert_eq!(check_sample(json!({"quantity": 7.0})), refused);
        assert_eq!(check_sample(json!({"quantity": 7.5})), refused);
    }

    #[test]
    fn each_declared_bound_is_enforced_and_named() {
        let cases = [
            (json!([1, 2]), "body: must be an object"),
            (json!("x"), "body: must be an object"),
            (json!({}), "quantity: is required"),
            (json!({"quantity": 0}), "quantity: must be at least 1"),
            (json!({"quantity": 1001}), "quantity: must be at most 1000"),
            (json!({"quantity": "2"}), "quantity: must be an integer"),
            (json!({"quantity": 1.5}), "quantity: must be an integer"),
            (
                json!({"quantity": 1, "name": ""}),
                "name: must be at least 1 characters long",
            ),
            (
                json!({"quantity": 1, "name": "abcdefghi"}),
                "name: must be at most 8 characters long",
            ),
            (json!({"quantity": 1, "name": "ABC"}), "name: must match ^[a-z]+$"),
            (
                json!({"quantity": 1, "amount": 9000000000001u64}),
                "amount: must be at most 9000000000000",
            ),
            (
                json!({"quantity": 1, "kind": "cash"}),
                "kind: must be one of card, wallet",
            ),
            (
                json!({"quantity": 1, "amount": 9223372036854775808u64}),
                "amount: must be at most 9223372036854775807",
            ),
            (json!({"quantity": 1, "tip": 1}), "tip: is not a known field"),
        ];
        for (body, expected) in cases {
            assert_eq!(check_sample(body.clone()), Err(expected.to_string()), "{body}");
        }
    }
}
