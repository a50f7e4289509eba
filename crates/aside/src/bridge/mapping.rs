//! How a changed row maps to cache work: key and tag templates, or the whole
//! namespace, per table.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::BridgeError;
use crate::Key;

/// A key or tag built from a row's columns, such as `"product:{id}"`.
///
/// Literal text is kept as written; each `{column}` is replaced by the
/// column's value escaped the way [`Key::part`] escapes a part (`:` becomes
/// `%3A`, `%` becomes `%25`). So `"product:{id}"` renders exactly as
/// `Key::new("product").part(id)` does, and as `format!("product:{id}")` for
/// values without `:` or `%` (numbers, most ids). `{{` and `}}` are literal
/// braces.
///
/// A string column renders as the string, a number as its JSON text (`42`,
/// `1.5`), a boolean as `true`/`false`, JSON values as their JSON text. A
/// `NULL` column renders nothing: the template produces no key for that row
/// image (a product without a category has no `category:{category_id}` tag).
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Column(String),
}

/// What rendering a template against one row image gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rendered {
    Value(String),
    /// A column was `NULL`: nothing to invalidate for this image.
    Null,
    /// A column was not in the payload: the bridge cannot tell what changed.
    Missing(String),
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// `Config` for an empty template, an unclosed `{`, a stray `}`, or an
    /// empty or nested column name.
    pub fn parse(source: &str) -> Result<Self, BridgeError> {
        let bad = |why: &str| BridgeError::config(format!("template {source:?}: {why}"));
        if source.is_empty() {
            return Err(bad("is empty"));
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(bad("has a `}` without its `{` (write `}}` for a brace)")),
                '{' => {
                    let mut column = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(bad("has a `{` inside a column name")),
                            Some(c) => column.push(c),
                            None => return Err(bad("has a `{` without its `}`")),
                        }
                    }
                    let column = column.trim();
                    if column.is_empty() {
                        return Err(bad("has an empty column name `{}`"));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Column(column.to_owned()));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The columns it reads, in order (repeats included).
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Column(c) => Some(c.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Renders the template against one row image (column name to value).
    pub(crate) fn render(&self, row: &Map<String, Value>) -> Rendered {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Column(c) => {
                    let text = match row.get(c) {
                        None => return Rendered::Missing(c.clone()),
                        Some(Value::Null) => return Rendered::Null,
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Bool(b)) => b.to_string(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(other) => other.to_string(),
                    };
                    out.push_str(Key::new(text).as_str());
                }
            }
        }
        Rendered::Value(out)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// What a change to one table invalidates.
///
/// ```
/// # #[cfg(feature = "postgres")] {
/// use aside::bridge::TableMap;
///
/// let products = TableMap::new("products")
///     .key("product:{id}")
///     .tag("category:{category_id}");
/// let same: TableMap = "products:key=product:{id},tag=category:{category_id}".parse().unwrap();
/// assert_eq!(format!("{products:?}"), format!("{same:?}"));
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TableMap {
    pub(crate) table: String,
    pub(crate) keys: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) namespace: bool,
}

impl TableMap {
    /// A mapping for `table`: a bare name (`"products"`, any schema) or a
    /// schema-qualified one (`"shop.products"`, split at the first `.`).
    pub fn new(table: impl Into<String>) -> Self {
        TableMap {
            table: table.into(),
            keys: Vec::new(),
            tags: Vec::new(),
            namespace: false,
        }
    }

    /// Invalidates the key rendered from this template for the old and the
    /// new row. It must render the same string the application passes to
    /// `get_or_load` (see [`Template`]).
    pub fn key(mut self, template: impl Into<String>) -> Self {
        self.keys.push(template.into());
        self
    }

    /// Invalidates the tag rendered from this template for the old and the
    /// new row (an UPDATE that moves a row between categories invalidates
    /// both categories' tags).
    pub fn tag(mut self, template: impl Into<String>) -> Self {
        self.tags.push(template.into());
        self
    }

    /// Any change to the table invalidates the cache's whole namespace.
    pub fn namespace(mut self) -> Self {
        self.namespace = true;
        self
    }

    /// The table name as given.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// Parses the command-line form `TABLE:ITEM[,ITEM...]`, where an item is
/// `key=TEMPLATE`, `tag=TEMPLATE` or `namespace`. Templates cannot contain
/// `,` in this form. The templates are checked too.
impl FromStr for TableMap {
    type Err = BridgeError;

    fn from_str(spec: &str) -> Result<Self, BridgeError> {
        let bad = |why: String| {
            BridgeError::config(format!(
                "mapping {spec:?}: {why} (expected TABLE:key=TEMPLATE,tag=TEMPLATE or \
                 TABLE:namespace, e.g. products:key=product:{{id}},tag=category:{{category_id}})"
            ))
        };
        let Some((table, items)) = spec.split_once(':') else {
            return Err(bad("no `:` after the table name".into()));
        };
        let table = table.trim();
        if table.is_empty() {
            return Err(bad("the table name is empty".into()));
        }
        let mut map = TableMap::new(table);
        for item in items.split(',').map(str::trim) {
            match item.split_once('=') {
                Some(("key", t)) => map = map.key(t),
                Some(("tag", t)) => map = map.tag(t),
                None if item == "namespace" => map = map.namespace(),
                _ if item.is_empty() => return Err(bad("an empty item".into())),
                _ => return Err(bad(format!("unknown item {item:?}"))),
            }
        }
        // Bad templates are refused here, with the rest of the syntax.
        Compiled::new(&map)?;
        Ok(map)
    }
}

/// A validated [`TableMap`].
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub schema: Option<String>,
    pub table: String,
    pub keys: Vec<Template>,
    pub tags: Vec<Template>,
    pub namespace: bool,
}

impl Compiled {
    pub fn new(map: &TableMap) -> Result<Self, BridgeError> {
        let (schema, table) = match map.table.split_once('.') {
            Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
            None => (None, map.table.clone()),
        };
        if table.is_empty() || schema.as_deref().is_some_and(str::is_empty) {
            return Err(BridgeError::config(format!(
                "table name {:?} is empty or has an empty part",
                map.table
            )));
        }
        if !map.namespace && map.keys.is_empty() && map.tags.is_empty() {
            return Err(BridgeError::config(format!(
                "table {:?} is mapped to nothing: give it a key, a tag or the namespace",
                map.table
            )));
        }
        let parse = |ts: &[String]| -> Result<Vec<Template>, BridgeError> {
            ts.iter().map(|t| Template::parse(t)).collect()
        };
        Ok(Compiled {
            schema,
            table,
            keys: parse(&map.keys)?,
            tags: parse(&map.tags)?,
            namespace: map.namespace,
        })
    }

    /// Whether a notification from `schema.table` is this table's.
    pub fn matches(&self, schema: Option<&str>, table: &str) -> bool {
        self.table == table
            && match (&self.schema, schema) {
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    /// The columns the trigger must send (none for a namespace mapping).
    pub fn columns(&self) -> Vec<String> {
        if self.namespace {
            return Vec::new();
        }
        let mut columns: Vec<String> = Vec::new();
        for c in self
            .keys
            .iter()
            .chain(&self.tags)
            .flat_map(Template::columns)
        {
            if !columns.iter().any(|k| k == c) {
                columns.push(c.to_owned());
            }
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn renders_like_key_parts() {
        let t = Template::parse("product:{id}:{name}").unwrap_or_else(|e| panic!("{e}"));
        let r = row(r#"{"id": 42, "name": "a:b%"}"#);
        let key = Key::new("product").part(42).part("a:b%");
        assert_eq!(t.render(&r), Rendered::Value(key.as_str().to_owned()));
        assert_eq!(t.render(&row(r#"{"id": 1, "name": null}"#)), Rendered::Null);
        assert_eq!(
            t.render(&row(r#"{"id": 1}"#)),
            Rendered::Missing("name".into())
        );
        let braces = Template::parse("{{x}}:{ id }").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            braces.render(&row(r#"{"id": "7"}"#)),
            Rendered::Value("{x}:7".into())
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["", "a{", "a}", "{}", "{a{b}}", "x{ }"] {
            assert!(Template::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_the_cli_form() {
        let m: TableMap = "shop.products:key=product:{id},tag=category:{category_id}"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let c = Compiled::new(&m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.schema.as_deref(), Some("shop"));
        assert_eq!(c.columns(), vec!["id".to_owned(), "category_id".to_owned()]);
        assert!(c.matches(Some("shop"), "products"));
        assert!(!c.matches(Some("other"), "products"));
        for bad in [
            "products",
            ":key=a",
            "products:",
            "products:kez=a",
            "products:key=a,",
            "t:key={id",
        ] {
            assert!(bad.parse::<TableMap>().is_err(), "{bad:?} was accepted");
        }
        assert!(Compiled::new(&TableMap::new("t")).is_err());
    }
}
