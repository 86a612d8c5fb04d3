//! Checks of what callers send against `[limits]`: metadata, filters, queries. Every breach names
//! the limit and the config key that sets it, so a client knows what to change and an operator
//! knows what to raise. Shared by the API, ingestion and retrieval.

use serde_json::{Map, Value};

use crate::config::LimitsSettings;

const MAX_NAME: usize = 128;

/// A collection name: 1-128 letters, digits, '-', '_' or '.'. Shared with grants, which name
/// collections before they exist.
pub fn validate_collection(s: &str) -> Result<(), String> {
    let valid = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "collection must be 1-{MAX_NAME} characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A breached limit. `size` limits (bytes) are 413s; counts and depths are 400s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is over the limit: {actual} > {limit} (limits.{key})")]
pub struct LimitError {
    pub what: String,
    pub key: &'static str,
    pub limit: usize,
    pub actual: usize,
    pub size: bool,
}

impl LimitError {
    fn size(what: &str, key: &'static str, limit: usize, actual: usize) -> Self {
        LimitError {
            what: what.into(),
            key,
            limit,
            actual,
            size: true,
        }
    }
    fn count(what: &str, key: &'static str, limit: usize, actual: usize) -> Self {
        LimitError {
            what: what.into(),
            key,
            limit,
            actual,
            size: false,
        }
    }
}

/// `actual` bytes of `what` against a byte limit.
pub fn check_bytes(
    what: &str,
    key: &'static str,
    limit: usize,
    actual: usize,
) -> Result<(), LimitError> {
    if actual > limit {
        return Err(LimitError::size(what, key, limit, actual));
    }
    Ok(())
}

/// `actual` items of `what` against a count limit.
pub fn check_count(
    what: &str,
    key: &'static str,
    limit: usize,
    actual: usize,
) -> Result<(), LimitError> {
    if actual > limit {
        return Err(LimitError::count(what, key, limit, actual));
    }
    Ok(())
}

/// Keys at every level, and the deepest nesting (a flat object is depth 1).
fn shape(value: &Value) -> (usize, usize) {
    match value {
        Value::Object(map) => map.values().fold((map.len(), 1), |(keys, depth), v| {
            let (k, d) = shape(v);
            (keys + k, depth.max(d + 1))
        }),
        Value::Array(items) => items.iter().fold((0, 1), |(keys, depth), v| {
            let (k, d) = shape(v);
            (keys + k, depth.max(d + 1))
        }),
        _ => (0, 0),
    }
}

pub fn check_metadata(metadata: &Map<String, Value>, l: &LimitsSettings) -> Result<(), LimitError> {
    let bytes = serde_json::to_vec(metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    check_bytes(
        "metadata",
        "metadata_max_bytes",
        l.metadata_max_bytes,
        bytes,
    )?;
    let (keys, depth) = shape(&Value::Object(metadata.clone()));
    check_count(
        "metadata keys",
        "metadata_max_keys",
        l.metadata_max_keys,
        keys,
    )?;
    check_count(
        "metadata nesting",
        "metadata_max_depth",
        l.metadata_max_depth,
        depth,
    )
}

pub fn check_filter(filter: &Map<String, Value>, l: &LimitsSettings) -> Result<(), LimitError> {
    check_count(
        "filter conditions",
        "filter_max_conditions",
        l.filter_max_conditions,
        filter.len(),
    )?;
    for (key, value) in filter {
        let depth = key.split('.').count();
        check_count(
            "filter key nesting",
            "filter_max_depth",
            l.filter_max_depth,
            depth,
        )?;
        if let Value::Array(values) = value {
            check_count(
                "filter values",
                "filter_max_values",
                l.filter_max_values,
                values.len(),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use serde_json::json;

    fn limits() -> LimitsSettings {
        Settings::defaults_with(&[]).unwrap().limits
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn metadata_size_keys_and_depth() {
        let l = LimitsSettings {
            metadata_max_bytes: 64,
            metadata_max_keys: 3,
            metadata_max_depth: 2,
            ..limits()
        };
        assert!(check_metadata(&obj(json!({"a": 1, "b": {"c": 2}})), &l).is_ok());
        let e = check_metadata(&obj(json!({"a": "x".repeat(100)})), &l).unwrap_err();
        assert_eq!((e.key, e.size), ("metadata_max_bytes", true));
        assert!(e.to_string().contains("limits.metadata_max_bytes"), "{e}");
        let e = check_metadata(&obj(json!({"a": 1, "b": 2, "c": 3, "d": 4})), &l).unwrap_err();
        assert_eq!(e.key, "metadata_max_keys");
        let e = check_metadata(&obj(json!({"a": {"b": {"c": 1}}})), &l).unwrap_err();
        assert_eq!((e.key, e.actual), ("metadata_max_depth", 3));
        let e = check_metadata(&obj(json!({"a": [[1]]})), &l).unwrap_err();
        assert_eq!(e.key, "metadata_max_depth", "arrays nest too");
    }

    #[test]
    fn filter_conditions_values_and_depth() {
        let l = LimitsSettings {
            filter_max_conditions: 2,
            filter_max_values: 3,
            filter_max_depth: 2,
            ..limits()
        };
        assert!(check_filter(&obj(json!({"a.b": [1, 2, 3], "c": "x"})), &l).is_ok());
        assert_eq!(
            check_filter(&obj(json!({"a": 1, "b": 2, "c": 3})), &l)
                .unwrap_err()
                .key,
            "filter_max_conditions"
        );
        assert_eq!(
            check_filter(&obj(json!({"a": [1, 2, 3, 4]})), &l)
                .unwrap_err()
                .key,
            "filter_max_values"
        );
        assert_eq!(
            check_filter(&obj(json!({"a.b.c": 1})), &l).unwrap_err().key,
            "filter_max_depth"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                "[a-z]{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn object() -> impl Strategy<Value = Map<String, Value>> {
            prop::collection::btree_map("[a-z.]{1,12}", json(), 0..8)
                .prop_map(|m| m.into_iter().collect())
        }

        fn small_limits() -> LimitsSettings {
            LimitsSettings {
                metadata_max_bytes: 300,
                metadata_max_keys: 12,
                metadata_max_depth: 3,
                filter_max_conditions: 4,
                filter_max_values: 3,
                filter_max_depth: 2,
                ..limits()
            }
        }

        proptest! {
            /// Any metadata gets an answer, never a panic; a refusal names a real breach; and
            /// taking a key away never turns an accepted object into a refused one.
            #[test]
            fn metadata_checks_are_sound_and_monotonic(m in object()) {
                let l = small_limits();
                match check_metadata(&m, &l) {
                    Err(e) => {
                        prop_assert!(e.actual > e.limit, "{e}");
                        prop_assert!(["metadata_max_bytes", "metadata_max_keys", "metadata_max_depth"].contains(&e.key));
                    }
                    Ok(()) => {
                        prop_assert!(serde_json::to_vec(&m).unwrap().len() <= l.metadata_max_bytes);
                        for key in m.keys() {
                            let mut smaller = m.clone();
                            smaller.remove(key);
                            prop_assert!(check_metadata(&smaller, &l).is_ok());
                        }
                    }
                }
            }

            #[test]
            fn filter_checks_are_sound_and_monotonic(f in object()) {
                let l = small_limits();
                match check_filter(&f, &l) {
                    Err(e) => {
                        prop_assert!(e.actual > e.limit, "{e}");
                        prop_assert!(e.key.starts_with("filter_max_"));
                    }
                    Ok(()) => {
                        prop_assert!(f.len() <= l.filter_max_conditions);
                        for key in f.keys() {
                            let mut smaller = f.clone();
                            smaller.remove(key);
                            prop_assert!(check_filter(&smaller, &l).is_ok());
                        }
                    }
                }
            }

            #[test]
            fn collection_names_are_accepted_exactly_when_well_formed(name in "\\PC{0,140}") {
                let well_formed = !name.is_empty()
                    && name.len() <= 128
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                prop_assert_eq!(validate_collection(&name).is_ok(), well_formed);
            }
        }
    }
}
