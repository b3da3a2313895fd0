//! The relay's statements on one connection: prepared once (named), or,
//! behind a pooler in transaction mode, sent unnamed with the parameter types
//! learned when the connection was made; and the calls that run either kind.

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// One of the relay's statements on one connection: prepared (a named
/// statement, planned once), or, behind a pooler in transaction mode, its text
/// and parameter types, sent unnamed with every call (Parse, Bind, Execute in
/// one round trip, so no statement outlives the transaction the pooler lends).
pub enum Stmt {
    Prepared(tokio_postgres::Statement),
    Unnamed {
        sql: &'static str,
        types: Vec<tokio_postgres::types::Type>,
    },
}

/// The statements the relay runs, made once per connection.
pub struct Statements {
    pub read: Stmt,
    pub read_ids: Stmt,
    pub read_ids_any: Stmt,
    pub read_rows: Stmt,
    pub holds_due: Stmt,
    pub holds_load: Stmt,
    pub parked_fetch: Stmt,
    pub park: Stmt,
    pub redeliveries_due: Stmt,
    pub cursor: Stmt,
    pub heartbeat: Stmt,
    pub relay_gone: Stmt,
    pub partitions_make: Stmt,
    pub renew: Stmt,
    pub take: Stmt,
    pub give_back: Stmt,
    pub write_back: Stmt,
    pub write_back_delivered: Stmt,
    pub probe_failed: Stmt,
    pub probe_turn: Stmt,
    pub arm: Stmt,
    pub disarm: Stmt,
    pub snapshot: Stmt,
    pub settled: Stmt,
    pub breaker_report: Stmt,
    pub resume_after_probe: Stmt,
    pub count_minutes: Stmt,
}

/// The SQL of [`Statements`], in the order of its fields.
const NAMED_SQL: [&str; 26] = [
    include_str!("../../sql/queue/read.sql"),
    include_str!("../../sql/queue/read_ids.sql"),
    include_str!("../../sql/queue/read_rows.sql"),
    include_str!("../../sql/queue/holds_due.sql"),
    include_str!("../../sql/queue/holds_load.sql"),
    include_str!("../../sql/queue/parked_fetch.sql"),
    include_str!("../../sql/queue/park.sql"),
    include_str!("../../sql/queue/redeliveries_due.sql"),
    include_str!("../../sql/queue/cursor.sql"),
    include_str!("../../sql/queue/heartbeat.sql"),
    include_str!("../../sql/queue/relay_gone.sql"),
    include_str!("../../sql/queue/partitions_make.sql"),
    include_str!("../../sql/queue/renew.sql"),
    include_str!("../../sql/queue/take.sql"),
    include_str!("../../sql/queue/give_back.sql"),
    include_str!("../../sql/queue/write_back.sql"),
    include_str!("../../sql/queue/write_back_delivered.sql"),
    include_str!("../../sql/queue/probe_failed.sql"),
    include_str!("../../sql/queue/probe_turn.sql"),
    include_str!("../../sql/arm.sql"),
    include_str!("../../sql/disarm.sql"),
    include_str!("../../sql/snapshot.sql"),
    include_str!("../../sql/settled.sql"),
    include_str!("../../sql/breaker_report.sql"),
    include_str!("../../sql/resume_after_probe.sql"),
    include_str!("../../sql/count_minutes.sql"),
];

/// sql/queue/read_ids.sql without its ORDER BY: the ids in no particular
/// order, which spares the database a sort of the whole tick (an external
/// merge of a million ids at the default work_mem, a quarter of the
/// statement); the relay sorts them itself. Only a list that fits in one
/// page is complete this way (docs/queue.md §9).
static READ_IDS_ANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ordered = NAMED_SQL[1];
    let any = ordered.replacen("\n ORDER BY o.id\n", "\n", 1);
    assert_ne!(
        any, ordered,
        "sql/queue/read_ids.sql orders by \"ORDER BY o.id\" on a line of its own"
    );
    any
});

/// The other statements the relay's connections run, looked up by text
/// ([`Conn::sql`]).
pub const OTHER_SQL: [&str; 8] = [
    include_str!("../../sql/row_counts.sql"),
    include_str!("../../sql/retention_delivered.sql"),
    include_str!("../../sql/retention_attempts.sql"),
    include_str!("../../sql/api_event.sql"),
    include_str!("../../sql/api_endpoint.sql"),
    include_str!("../../sql/api_endpoint_events.sql"),
    include_str!("../../sql/page_endpoints.sql"),
    include_str!("../../sql/page_failures.sql"),
];

/// A live connection and its statements.
pub struct Conn {
    pub client: Client,
    pub st: Statements,
    other: std::collections::HashMap<&'static str, Stmt>,
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

impl Conn {
    /// Makes the statements on a fresh connection (before it is shared).
    pub async fn make(mut client: Client, pooled: bool) -> Result<Conn> {
        let (st, other) = statements(&mut client, pooled).await?;
        Ok(Conn { client, st, other })
    }

    /// One of [`OTHER_SQL`], by its text.
    pub fn sql(&self, sql: &'static str) -> &Stmt {
        self.other
            .get(sql)
            .expect("every statement passed to Conn::sql is listed in OTHER_SQL")
    }

    pub async fn query(
        &self,
        s: &Stmt,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        match s {
            Stmt::Prepared(st) => self.client.query(st, params).await,
            Stmt::Unnamed { sql, types } => {
                self.client
                    .query_typed(sql, &with_types(params, types))
                    .await
            }
        }
    }

    pub async fn query_one(
        &self,
        s: &Stmt,
        params: Params<'_>,
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        match s {
            Stmt::Prepared(st) => self.client.query_one(st, params).await,
            Stmt::Unnamed { sql, types } => {
                self.client
                    .query_typed_one(sql, &with_types(params, types))
                    .await
            }
        }
    }

    pub async fn query_opt(
        &self,
        s: &Stmt,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        match s {
            Stmt::Prepared(st) => self.client.query_opt(st, params).await,
            // The relay's single-row statements return zero or one row.
            Stmt::Unnamed { .. } => Ok(self.query(s, params).await?.into_iter().next()),
        }
    }

    pub async fn execute(
        &self,
        s: &Stmt,
        params: Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        match s {
            Stmt::Prepared(st) => self.client.execute(st, params).await,
            Stmt::Unnamed { sql, types } => {
                use futures_util::StreamExt as _;
                let stream = self
                    .client
                    .query_typed_raw(sql, with_types(params, types))
                    .await?;
                let mut stream = std::pin::pin!(stream);
                while let Some(row) = stream.next().await {
                    row?;
                }
                Ok(stream.rows_affected().unwrap_or(0))
            }
        }
    }
}

fn with_types<'a>(
    params: Params<'a>,
    types: &[tokio_postgres::types::Type],
) -> Vec<(
    &'a (dyn tokio_postgres::types::ToSql + Sync),
    tokio_postgres::types::Type,
)> {
    params.iter().copied().zip(types.iter().cloned()).collect()
}

fn first_line(sql: &str) -> &str {
    sql.lines().find(|l| !l.starts_with("--")).unwrap_or(sql)
}

/// Prepares every statement; or, when `pooled`, learns their parameter types
/// inside one transaction (the pooler keeps one server connection for it) and
/// closes them before it ends, leaving nothing behind on the server.
async fn statements(
    client: &mut Client,
    pooled: bool,
) -> Result<(Statements, std::collections::HashMap<&'static str, Stmt>)> {
    // The named statements, then the derived one, then the others: the
    // order in which `next` hands them out below.
    let all: Vec<&'static str> = NAMED_SQL
        .iter()
        .copied()
        .chain([READ_IDS_ANY.as_str()])
        .chain(OTHER_SQL.iter().copied())
        .collect();
    let mut made = std::collections::VecDeque::new();
    if pooled {
        let tx = client
            .transaction()
            .await
            .context("starting the statement set-up")?;
        for sql in &all {
            let st = tx
                .prepare(sql)
                .await
                .with_context(|| format!("describing {}", first_line(sql)))?;
            made.push_back(Stmt::Unnamed {
                sql,
                types: st.params().to_vec(),
            });
            // Dropped here: the Close goes in this transaction.
        }
        tx.commit().await.context("ending the statement set-up")?;
    } else {
        for sql in &all {
            let st = client
                .prepare(sql)
                .await
                .with_context(|| format!("preparing {}", first_line(sql)))?;
            made.push_back(Stmt::Prepared(st));
        }
    }
    let mut next = || {
        made.pop_front()
            .expect("one statement was made per text of NAMED_SQL and OTHER_SQL")
    };
    let st = Statements {
        read: next(),
        read_ids: next(),
        read_rows: next(),
        holds_due: next(),
        holds_load: next(),
        parked_fetch: next(),
        park: next(),
        redeliveries_due: next(),
        cursor: next(),
        heartbeat: next(),
        relay_gone: next(),
        partitions_make: next(),
        renew: next(),
        take: next(),
        give_back: next(),
        write_back: next(),
        write_back_delivered: next(),
        probe_failed: next(),
        probe_turn: next(),
        arm: next(),
        disarm: next(),
        snapshot: next(),
        settled: next(),
        breaker_report: next(),
        resume_after_probe: next(),
        count_minutes: next(),
        read_ids_any: next(),
    };
    let other = OTHER_SQL.iter().map(|sql| (*sql, next())).collect();
    Ok((st, other))
}
