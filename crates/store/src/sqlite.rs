//! SQLite backend: one file, write-ahead log, `synchronous = FULL` (a commit
//! reaches the disk before it returns, so it survives `kill -9` and power
//! loss).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use crate::db::{insert_sql, Row, Tx, Value};
use crate::StoreError;

pub(crate) struct Sqlite {
    conn: Mutex<Connection>,
}

impl Sqlite {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        private_file(path)?;
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open the SQLite database {}: {e}; check the data directory exists and is writable",
                path.display()
            ))
        })?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "SQLite refused write-ahead logging (journal mode {mode}) for {}",
                path.display()
            )));
        }
        // secure_delete: a shredded key wrapper is overwritten in the file, not
        // just unlinked from the B-tree.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;",
        )?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Sqlite {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn transaction<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // IMMEDIATE: take the write lock up front, so two writers never both
        // read a state and then race to change it.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&mut SqliteTx { conn: &tx })?;
        tx.commit()?;
        Ok(out)
    }

    /// Moves every committed page from the write-ahead log into the main
    /// file and truncates the log to nothing, so that pages `secure_delete`
    /// zeroed replace their old contents everywhere. Waits for readers (the
    /// busy timeout), retrying a few times.
    pub(crate) fn checkpoint(&self) -> Result<(), StoreError> {
        for _ in 0..20 {
            // The connection is held for one attempt only, not while waiting.
            let busy: i64 = {
                let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?
            };
            if busy == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(StoreError::Unavailable(
            "the write-ahead log could not be checkpointed (a reader held it): the erasure is \
             committed but not yet purged from the files; erase again to retry the purge"
                .into(),
        ))
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut SqliteTx { conn: &conn })
    }
}

struct SqliteTx<'a> {
    conn: &'a Connection,
}

/// `$1` placeholders become SQLite's `?1`.
fn dialect(sql: &str) -> String {
    sql.replace('$', "?")
}

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Int(x) => SqlValue::Integer(*x),
        Value::Bytes(b) => SqlValue::Blob(b.clone()),
        Value::Text(t) => SqlValue::Text(t.clone()),
    }
}

fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(x) => Value::Int(x),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        // No REAL columns exist; a float means the file was edited by hand.
        ValueRef::Real(x) => Value::Text(x.to_string()),
    }
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(&dialect(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(to_sql)))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&dialect(sql))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(to_sql)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(from_sql(r.get_ref(i)?));
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn insert_many(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        // One cached single-row statement: with no network in between, this is
        // as fast as multi-row inserts and keeps the statement cache small.
        let sql = dialect(&insert_sql(table, columns, 1));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        for row in rows {
            stmt.execute(rusqlite::params_from_iter(row.iter().map(to_sql)))?;
        }
        Ok(())
    }
}

/// Makes the database file the owner's alone before SQLite opens it: a new
/// file is created 0600 (never through a symbolic link); an existing one
/// must not be a link and is narrowed to 0600 by path. SQLite gives its
/// `-wal` and `-shm` files the database file's permissions, so they follow.
///
/// An existing database is never opened here: closing any descriptor of a
/// file drops every POSIX lock this process holds on it, SQLite's included,
/// and another process would then take itself for the last connection and
/// delete the live write-ahead log.
fn private_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if path.as_os_str() == ":memory:" {
            return Ok(());
        }
        let refuse = |e: std::io::Error| {
            StoreError::Unavailable(format!(
                "cannot open the SQLite database {}: {e}; it must be a regular file, not a symbolic link",
                path.display()
            ))
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() || !meta.is_file() => {
                return Err(refuse(std::io::Error::other("not a regular file")));
            }
            Ok(meta) => {
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(refuse)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A new file: nothing of this process can hold a lock on it.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map(drop)
                    .or_else(|e| match e.kind() {
                        // Another process made it first: SQLite opens it.
                        std::io::ErrorKind::AlreadyExists => Ok(()),
                        _ => Err(refuse(e)),
                    })?;
            }
            Err(e) => return Err(refuse(e)),
        }
    }
    Ok(())
}
