//! The small SQL surface both backends provide, so every store operation is
//! written once. Statements use `$1, $2, ...` placeholders (rewritten for
//! SQLite) and only BIGINT, BYTEA/BLOB and TEXT columns.

use crate::StoreError;

/// A column value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
}

impl From<i64> for Value {
    fn from(x: i64) -> Self {
        Value::Int(x)
    }
}
impl From<&str> for Value {
    fn from(x: &str) -> Self {
        Value::Text(x.to_string())
    }
}
impl From<String> for Value {
    fn from(x: String) -> Self {
        Value::Text(x)
    }
}
impl From<&[u8]> for Value {
    fn from(x: &[u8]) -> Self {
        Value::Bytes(x.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(x: Vec<u8>) -> Self {
        Value::Bytes(x)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(x: Option<T>) -> Self {
        x.map_or(Value::Null, Into::into)
    }
}

/// Stored values are `i64`; sizes, versions and indices are `u64` below 2^63.
pub(crate) fn int(x: u64) -> Result<Value, StoreError> {
    i64::try_from(x)
        .map(Value::Int)
        .map_err(|_| StoreError::Invalid(format!("{x} is beyond the largest storable integer")))
}

/// One result row.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("row has no column {i}")))
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.get(i)? {
            Value::Int(x) => Ok(*x),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: expected an integer, found {other:?}"
            ))),
        }
    }

    pub(crate) fn uint(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?)
            .map_err(|_| StoreError::Corrupt(format!("column {i}: negative value")))
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.get(i)? {
            Value::Bytes(x) => Ok(x.clone()),
            Value::Null => Err(StoreError::Corrupt(format!("column {i}: unexpected NULL"))),
            _ => Err(StoreError::Corrupt(format!("column {i}: expected bytes"))),
        }
    }

    pub(crate) fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.bytes(i).map(Some),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.get(i)? {
            Value::Text(x) => Ok(x.clone()),
            _ => Err(StoreError::Corrupt(format!("column {i}: expected text"))),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// A transaction on either backend.
pub(crate) trait Tx {
    /// Runs a statement; returns the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Inserts many rows into `table` (fails on a duplicate key).
    fn insert_many(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError>;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// `count` placeholders from `$first` on, comma-separated (`$2, $3, $4`):
/// the list inside an `IN (...)`.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A single multi-row `INSERT` statement for `rows` rows.
pub(crate) fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns.len() {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
    }
    sql
}
