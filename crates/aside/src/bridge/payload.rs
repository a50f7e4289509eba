//! The notification payload the trigger sends, and what the bridge makes of
//! it.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::mapping::{Compiled, Rendered};

/// The payload format version the trigger writes and the bridge reads.
pub(crate) const VERSION: u64 = 1;

/// `{"v":1,"schema":..,"table":..,"op":"INSERT|UPDATE|DELETE|TRUNCATE",
/// "old":{..},"new":{..}}`, or with `"overflow":true` and no rows when the
/// mapped columns would not fit in a NOTIFY payload.
#[derive(Debug, Deserialize)]
pub(crate) struct Change {
    pub v: u64,
    #[serde(default)]
    pub schema: Option<String>,
    pub table: String,
    pub op: String,
    #[serde(default)]
    pub old: Option<Map<String, Value>>,
    #[serde(default)]
    pub new: Option<Map<String, Value>>,
    #[serde(default)]
    pub overflow: bool,
}

/// Just enough of a payload to tell which table it speaks of, when the whole
/// does not parse.
#[derive(Debug, Deserialize)]
struct Header {
    #[serde(default)]
    schema: Option<String>,
    table: String,
}

/// What one notification asks of the cache.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// Invalidate these keys and tags (either may be empty), for a row
    /// change by `op`.
    Entries {
        op: String,
        keys: Vec<String>,
        tags: Vec<String>,
    },
    /// Invalidate the namespace, for this reason; `malformed` when the
    /// payload could not be read.
    Namespace {
        reason: &'static str,
        malformed: bool,
    },
    /// The payload names no mapped table.
    Ignore,
    /// Not a payload the bridge can read, and it names no mapped table.
    Malformed(String),
}

/// Decides what a payload means under `tables`.
///
/// A payload that cannot be read but names a mapped table (a newer trigger,
/// a missing column) invalidates the namespace: dropping it could leave a
/// changed row cached.
pub(crate) fn interpret(payload: &str, tables: &[Compiled]) -> (Work, Option<String>) {
    let find = |schema: Option<&str>, table: &str| tables.iter().find(|t| t.matches(schema, table));
    let change: Change = match serde_json::from_str(payload) {
        Ok(c) => c,
        Err(e) => {
            let header: Option<Header> = serde_json::from_str(payload).ok();
            return match header {
                Some(h) if find(h.schema.as_deref(), &h.table).is_some() => (
                    Work::Namespace {
                        reason: "unreadable payload",
                        malformed: true,
                    },
                    Some(h.table),
                ),
                _ => (Work::Malformed(e.to_string()), None),
            };
        }
    };
    let table = Some(change.table.clone());
    let Some(map) = find(change.schema.as_deref(), &change.table) else {
        return (Work::Ignore, table);
    };
    if change.v != VERSION {
        return (
            Work::Namespace {
                reason: "unknown payload version",
                malformed: true,
            },
            table,
        );
    }
    if change.overflow {
        return (
            Work::Namespace {
                reason: "payload too large for NOTIFY",
                malformed: false,
            },
            table,
        );
    }
    if map.namespace {
        return (
            Work::Namespace {
                reason: "table mapped to the namespace",
                malformed: false,
            },
            table,
        );
    }
    match change.op.as_str() {
        "INSERT" | "UPDATE" | "DELETE" => {}
        "TRUNCATE" => {
            return (
                Work::Namespace {
                    reason: "TRUNCATE",
                    malformed: false,
                },
                table,
            );
        }
        _ => {
            return (
                Work::Namespace {
                    reason: "unknown operation",
                    malformed: false,
                },
                table,
            );
        }
    }
    let images: Vec<&Map<String, Value>> = change.old.iter().chain(change.new.iter()).collect();
    if images.is_empty() {
        return (
            Work::Namespace {
                reason: "no row in the payload",
                malformed: false,
            },
            table,
        );
    }
    let mut keys = Vec::new();
    let mut tags = Vec::new();
    for (templates, out) in [(&map.keys, &mut keys), (&map.tags, &mut tags)] {
        for template in templates {
            for row in &images {
                match template.render(row) {
                    Rendered::Value(v) => {
                        if !out.contains(&v) {
                            out.push(v);
                        }
                    }
                    Rendered::Null => {}
                    Rendered::Missing(_) => {
                        return (
                            Work::Namespace {
                                reason: "a mapped column is not in the payload",
                                malformed: false,
                            },
                            table,
                        );
                    }
                }
            }
        }
    }
    (
        Work::Entries {
            op: change.op,
            keys,
            tags,
        },
        table,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::TableMap;

    fn tables() -> Vec<Compiled> {
        let maps = [
            TableMap::new("products")
                .key("product:{id}")
                .tag("category:{category_id}"),
            TableMap::new("shop.categories").namespace(),
        ];
        maps.iter()
            .map(|m| Compiled::new(m).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn an_update_invalidates_old_and_new() {
        let p = r#"{"v":1,"schema":"public","table":"products","op":"UPDATE",
                    "old":{"id":1,"category_id":3},"new":{"id":1,"category_id":4}}"#;
        let (work, _) = interpret(p, &tables());
        assert_eq!(
            work,
            Work::Entries {
                op: "UPDATE".into(),
                keys: vec!["product:1".into()],
                tags: vec!["category:3".into(), "category:4".into()],
            }
        );
    }

    #[test]
    fn what_cannot_be_read_is_safe() {
        let t = tables();
        let ns = |p: &str| matches!(interpret(p, &t).0, Work::Namespace { .. });
        assert!(matches!(interpret("garbage", &t).0, Work::Malformed(_)));
        assert!(matches!(interpret("{}", &t).0, Work::Malformed(_)));
        assert!(matches!(
            interpret(r#"{"v":1,"table":"other","op":"INSERT","new":{}}"#, &t).0,
            Work::Ignore
        ));
        assert!(ns(r#"{"table":"products","op":7}"#));
        assert!(ns(
            r#"{"v":2,"table":"products","op":"INSERT","new":{"id":1}}"#
        ));
        assert!(ns(
            r#"{"v":1,"table":"products","op":"INSERT","new":{"id":1}}"#
        ));
        assert!(ns(
            r#"{"v":1,"table":"products","op":"UPDATE","overflow":true}"#
        ));
        assert!(ns(r#"{"v":1,"table":"products","op":"TRUNCATE"}"#));
        assert!(ns(
            r#"{"v":1,"schema":"shop","table":"categories","op":"DELETE","old":{}}"#
        ));
        assert!(matches!(
            interpret(
                r#"{"v":1,"schema":"x","table":"categories","op":"DELETE"}"#,
                &t
            )
            .0,
            Work::Ignore
        ));
        let null_tag =
            r#"{"v":1,"table":"products","op":"DELETE","old":{"id":5,"category_id":null}}"#;
        assert_eq!(
            interpret(null_tag, &t).0,
            Work::Entries {
                op: "DELETE".into(),
                keys: vec!["product:5".into()],
                tags: vec![]
            }
        );
    }
}
