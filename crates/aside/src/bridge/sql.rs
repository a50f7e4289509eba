//! The SQL that makes a table send its changes: one trigger function
//! (shared by every table of a schema) and two triggers per table.

use super::mapping::Compiled;

/// The trigger function's name.
pub(crate) const FUNCTION: &str = "aside_notify_change";

/// Quotes an SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`standard_conforming_strings` is on by
/// default since PostgreSQL 9.1).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The trigger function. Its arguments are the channel, then the columns to
/// send. It sends `{"v":1,"schema","table","op","old","new"}` with only those
/// columns; when that would not fit in a NOTIFY payload (under 8000 bytes),
/// it sends `"overflow":true` and no rows, and the bridge invalidates the
/// whole namespace. A mapped column the table no longer has is left out of
/// the rows (the bridge then invalidates the namespace): a schema change
/// never makes the application's writes fail.
fn function_sql(name: &str) -> String {
    format!(
        r#"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql AS $aside$
DECLARE
    columns text[] := TG_ARGV[1:TG_NARGS - 1];
    whole jsonb;
    old_row jsonb;
    new_row jsonb;
    payload text;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            whole := CASE WHEN cardinality(columns) > 0 THEN to_jsonb(OLD) END;
            SELECT coalesce(jsonb_object_agg(c, whole -> c) FILTER (WHERE whole ? c), '{{}}')
              INTO old_row FROM unnest(columns) AS c;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            whole := CASE WHEN cardinality(columns) > 0 THEN to_jsonb(NEW) END;
            SELECT coalesce(jsonb_object_agg(c, whole -> c) FILTER (WHERE whole ? c), '{{}}')
              INTO new_row FROM unnest(columns) AS c;
        END IF;
    END IF;
    payload := jsonb_build_object('v', 1, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
        'op', TG_OP, 'old', old_row, 'new', new_row)::text;
    IF octet_length(payload) >= 8000 THEN
        payload := jsonb_build_object('v', 1, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
            'op', TG_OP, 'overflow', true)::text;
    END IF;
    PERFORM pg_notify(TG_ARGV[0], payload);
    RETURN NULL;
END
$aside$;"#
    )
}

/// The whole installation for one table, in one transaction: safe to run
/// again (it replaces the function and the triggers), and to run from
/// several processes at once (an advisory lock orders them).
pub(crate) fn install_sql(table: &Compiled, channel: &str) -> String {
    let qualified = match &table.schema {
        Some(s) => format!("{}.{}", ident(s), ident(&table.table)),
        None => ident(&table.table),
    };
    let function = match &table.schema {
        Some(s) => format!("{}.{}", ident(s), ident(FUNCTION)),
        None => ident(FUNCTION),
    };
    let columns = table.columns();
    let mut args = vec![literal(channel)];
    args.extend(columns.iter().map(|c| literal(c)));
    let args = args.join(", ");
    // Fails the installation (not later writes) when a column is misspelled.
    let check = if columns.is_empty() {
        format!("SELECT FROM {qualified} WHERE false;")
    } else {
        let list: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        format!("SELECT {} FROM {qualified} WHERE false;", list.join(", "))
    };
    let row_trigger = ident(&format!("aside_notify_{channel}"));
    let truncate_trigger = ident(&format!("aside_notify_{channel}_truncate"));
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock(hashtext('aside.install'));
{check}
{function_sql}
DROP TRIGGER IF EXISTS {row_trigger} ON {qualified};
CREATE TRIGGER {row_trigger} AFTER INSERT OR UPDATE OR DELETE ON {qualified}
    FOR EACH ROW EXECUTE FUNCTION {function}({args});
DROP TRIGGER IF EXISTS {truncate_trigger} ON {qualified};
CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {qualified}
    FOR EACH STATEMENT EXECUTE FUNCTION {function}({args});
COMMIT;
",
        function_sql = function_sql(&function)
    )
}

/// Removes a table's triggers (the shared function stays).
pub(crate) fn uninstall_sql(table: &Compiled, channel: &str) -> String {
    let qualified = match &table.schema {
        Some(s) => format!("{}.{}", ident(s), ident(&table.table)),
        None => ident(&table.table),
    };
    format!(
        "DROP TRIGGER IF EXISTS {} ON {qualified};\nDROP TRIGGER IF EXISTS {} ON {qualified};\n",
        ident(&format!("aside_notify_{channel}")),
        ident(&format!("aside_notify_{channel}_truncate")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::TableMap;

    #[test]
    fn quotes_what_it_embeds() {
        assert_eq!(ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(literal("o'k"), "'o''k'");
        let map = TableMap::new("s.t").key("k:{it's}");
        let compiled = Compiled::new(&map).unwrap_or_else(|e| panic!("{e}"));
        let sql = install_sql(&compiled, "aside_changes");
        assert!(sql.contains(r#""s"."t""#), "{sql}");
        assert!(sql.contains("'it''s'"), "{sql}");
        assert!(sql.contains(r#"SELECT "it's" FROM"#), "{sql}");
    }
}
