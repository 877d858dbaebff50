//! PostgreSQL backend: a bounded pool of connections, each with its own cache
//! of prepared statements; every write is one transaction committed with the
//! server's `synchronous_commit` (on by default: durable at return).
//!
//! The `postgres` client drives its own small runtime: call the store from
//! ordinary threads (in async services, from `spawn_blocking`).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};

use crate::db::{insert_sql, Row, Tx, Value};
use crate::StoreError;

/// PostgreSQL accepts at most 65535 parameters per statement.
const INSERT_CHUNK_PARAMS: usize = 60_000;
/// Distinct statements cached per connection before the cache is reset.
const STATEMENT_CACHE: usize = 512;

struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

pub(crate) struct Postgres {
    url: String,
    schema: Option<String>,
    idle: Mutex<(Vec<Conn>, usize)>,
    returned: Condvar,
    max_connections: usize,
}

/// The URL without its password, for messages and output: the password in
/// the user part (`postgres://u:pw@h`), in a `password=` query parameter,
/// or in a libpq keyword string (`host=h password=pw`) becomes `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i) {
            if let Some(colon) = out[start..at].find(':').map(|i| start + i) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    let mut from = 0;
    while let Some(p) = out[from..]
        .find("password=")
        .map(|i| from + i + "password=".len())
    {
        let end = out[p..].find(['&', ' ', '\t']).map_or(out.len(), |i| p + i);
        out.replace_range(p..end, "***");
        from = p + 3;
    }
    out
}

impl Postgres {
    pub(crate) fn open(
        url: &str,
        schema: Option<&str>,
        max_connections: usize,
    ) -> Result<Self, StoreError> {
        if let Some(s) = schema {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StoreError::Invalid(format!(
                    "schema name `{s}`: use letters, digits and underscores"
                )));
            }
        }
        let pg = Postgres {
            url: url.to_string(),
            schema: schema.map(str::to_string),
            idle: Mutex::new((Vec::new(), 0)),
            returned: Condvar::new(),
            max_connections: max_connections.max(1),
        };
        // Connect once now, so a wrong URL fails at start, not at first use.
        let conn = pg.connect()?;
        pg.give_back(conn);
        Ok(pg)
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let mut client = Client::connect(&self.url, NoTls).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot reach PostgreSQL at {}: {e}. Is the server running? (e.g. `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
                redact(&self.url)
            ))
        })?;
        if let Some(schema) = &self.schema {
            // Created only when missing: a service's own role may use the
            // schema made for it without the right to create schemas.
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])?
                .is_some();
            if !exists {
                client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
            }
            client.batch_execute(&format!("SET search_path TO {schema}"))?;
        }
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn take(&self) -> Result<Conn, StoreError> {
        let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = guard.0.pop() {
                if !conn.client.is_closed() {
                    return Ok(conn);
                }
                guard.1 -= 1;
                continue;
            }
            if guard.1 < self.max_connections {
                guard.1 += 1;
                drop(guard);
                return self.connect().inspect_err(|_| {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
                });
            }
            guard = self.returned.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if conn.client.is_closed() {
            guard.1 -= 1;
        } else {
            guard.0.push(conn);
        }
        drop(guard);
        self.returned.notify_one();
    }

    pub(crate) fn transaction<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.take()?;
        let result = (|| {
            let Conn { client, statements } = &mut conn;
            let mut tx = client.transaction()?;
            let out = f(&mut PgTx {
                client: &mut tx,
                statements,
            })?;
            tx.commit()?;
            Ok(out)
        })();
        // The transaction rolled back on drop if it failed; the connection is
        // reusable unless the server closed it.
        self.give_back(conn);
        result
    }

    /// Removes the dead tuples of `tables` (`VACUUM`, outside any
    /// transaction): after it, deleted rows are in no tuple of the tables,
    /// live or dead.
    pub(crate) fn vacuum(&self, tables: &[&str]) -> Result<(), StoreError> {
        let mut conn = self.take()?;
        let result = conn
            .client
            .batch_execute(&format!("VACUUM {}", tables.join(", ")))
            .map_err(StoreError::from);
        self.give_back(conn);
        result
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.take()?;
        let Conn { client, statements } = &mut conn;
        let result = f(&mut PgTx { client, statements });
        self.give_back(conn);
        result
    }
}

/// Statements on a client or inside a transaction.
impl Drop for Postgres {
    /// The `postgres` client closes its connection by driving its own small
    /// runtime, which panics on an async runtime's thread (services drop the
    /// store there when they stop): close the connections on a plain thread.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()).0);
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

struct PgTx<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> PgTx<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(x) => match *ty {
                Type::INT2 => i16::try_from(*x)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*x)?.to_sql(ty, out),
                _ => x.to_sql(ty, out),
            },
            Value::Bytes(b) => b.as_slice().to_sql(ty, out),
            Value::Text(t) => t.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT2 | Type::INT4 | Type::INT8 | Type::BYTEA | Type::TEXT | Type::VARCHAR
        )
    }

    postgres::types::to_sql_checked!();
}

fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn convert(row: &postgres::Row) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|x| Value::Int(x.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|x| Value::Int(x.into())),
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes),
            Type::TEXT | Type::VARCHAR => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
            ref other => {
                return Err(StoreError::Corrupt(format!(
                    "column {} has unexpected type {other}",
                    col.name()
                )))
            }
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

impl<C: GenericClient> Tx for PgTx<'_, C> {
    fn exec(&mut self, sql: &str, values: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        Ok(self.client.execute(&stmt, &params(values))?)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        self.client
            .query(&stmt, &params(values))?
            .iter()
            .map(convert)
            .collect()
    }

    fn insert_many(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        // Multi-row inserts: one round trip per chunk instead of per row.
        let per_chunk = (INSERT_CHUNK_PARAMS / columns.len().max(1)).max(1);
        for chunk in rows.chunks(per_chunk) {
            let stmt = self.statement(&insert_sql(table, columns, chunk.len()))?;
            let flat: Vec<&(dyn ToSql + Sync)> = chunk
                .iter()
                .flat_map(|r| r.iter().map(|v| v as &(dyn ToSql + Sync)))
                .collect();
            self.client.execute(&stmt, &flat)?;
        }
        Ok(())
    }
}

/// Makes `role` (logging in with `password`) and the schema `schema` it
/// owns, connected as the administrator at `admin_url`: a service's own
/// store, which no other service's role can read (a new schema grants
/// nothing to others). Names must be letters, digits and underscores.
pub fn create_service_role(
    admin_url: &str,
    schema: &str,
    role: &str,
    password: &str,
) -> Result<(), StoreError> {
    let plain =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain(schema) || !plain(role) || !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StoreError::Invalid(
            "role, schema and password: letters, digits and underscores".into(),
        ));
    }
    let mut admin = Client::connect(admin_url, NoTls).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot reach PostgreSQL at {}: {e}",
            redact(admin_url)
        ))
    })?;
    admin.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
         CREATE SCHEMA {schema} AUTHORIZATION {role};"
    ))?;
    Ok(())
}
