//! The two engines' schemas, migrated from nothing, end with the same
//! tables and columns.

use std::collections::BTreeMap;

use super::*;

/// Table → its columns, sorted.
type Schema = BTreeMap<String, Vec<String>>;

/// What only one engine has, by design: SQLite's `sqlite_sequence` (its
/// `AUTOINCREMENT` bookkeeping) and PostgreSQL's `cc_schema` (its
/// migration count; SQLite keeps it in `PRAGMA user_version`). PostgreSQL
/// also names a column `rowid` where SQLite has the implicit one.
const ENGINE_ONLY_TABLES: [&str; 2] = ["sqlite_sequence", "cc_schema"];

fn schema_of(s: &Store) -> Schema {
    let rows = s
        .read(|c| {
            let sql = match c.dialect() {
                Dialect::Sqlite => {
                    "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                     WHERE m.type = 'table'"
                }
                Dialect::Postgres => {
                    "SELECT table_name::text, column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema()"
                }
            };
            c.query(sql, &[])
        })
        .unwrap();
    let mut schema = Schema::new();
    for r in rows {
        let (table, column): (String, String) = (r.get(0).unwrap(), r.get(1).unwrap());
        if ENGINE_ONLY_TABLES.contains(&table.as_str()) {
            continue;
        }
        if column == "rowid" && s.dialect() == Dialect::Postgres {
            continue;
        }
        schema.entry(table).or_default().push(column);
    }
    for columns in schema.values_mut() {
        columns.sort();
    }
    schema
}

#[test]
fn both_engines_have_the_same_tables_and_columns() {
    let mut schemas = stores()
        .into_iter()
        .map(|(_guard, s)| (s.dialect(), schema_of(&s)));
    let (_, sqlite) = schemas.next().unwrap();
    assert_eq!(
        sqlite.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "agents",
            "api_keys",
            "audit",
            "audit_head",
            "cron_resend",
            "cron_sets",
            "events",
            "fleet_cron",
            "fleet_signed",
            "host_conditions",
            "jobs",
            "listeners",
            "notify_cursor",
            "notify_queue",
            "notify_state",
            "operators",
            "report_usage",
            "reports",
            "runs",
            "schedule_misses"
        ]
    );
    assert!(
        sqlite["jobs"].contains(&"submitter".to_owned()),
        "the last migration ran"
    );
    for (dialect, other) in schemas {
        assert_eq!(other, sqlite, "{dialect:?}");
    }
}

/// The migrations are the numbered files, in order, and a database's
/// version is how many ran: numbering is what existing databases
/// continue from.
#[test]
fn migrations_are_numbered_files_and_the_version_counts_them() {
    use crate::store::schema::{MIGRATIONS, PG_MIGRATIONS};
    assert_eq!((MIGRATIONS.len(), PG_MIGRATIONS.len()), (16, 11));
    for (_guard, s) in stores() {
        let version: i64 = s
            .read(|c| match c.dialect() {
                Dialect::Sqlite => scalar(c, "SELECT user_version FROM pragma_user_version", &[]),
                Dialect::Postgres => scalar(c, "SELECT version FROM cc_schema", &[]),
            })
            .unwrap();
        let want = match s.dialect() {
            Dialect::Sqlite => MIGRATIONS.len(),
            Dialect::Postgres => PG_MIGRATIONS.len(),
        };
        assert_eq!(version, want as i64, "{:?}", s.dialect());
    }
}
