//! The statements that bring events into the relay: the log read between two
//! ticks (a page, or a big tick by ids then pages), due held heads, parked
//! events, redeliveries; and those that write what the reader decided
//! (parks, the cursor).

use anyhow::{Context, Result};

use super::cursor::Token;
use super::keys::Queued;
use super::ticks::Tick;
use crate::db::Conn;

/// Where an event in the relay came from: it decides what its outcome's
/// write-back must also do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the log.
    Log,
    /// From `webhook.parked`, behind a key that was held.
    Parked,
    /// A held head, sent again because its retry is due.
    Held,
    /// From `webhook.redeliveries`: replayed, or the retry of an unordered event.
    Redelivery,
}

impl Source {
    /// As the write-back names it.
    pub fn name(self) -> &'static str {
        match self {
            Source::Log => "log",
            Source::Parked => "parked",
            Source::Held => "held",
            Source::Redelivery => "redelivery",
        }
    }
}

/// An event waiting in the relay or in flight.
#[derive(Debug)]
pub struct Event {
    pub id: i64,
    pub event_id: String,
    /// The ordering key, when this endpoint orders by key and the row has one.
    pub key: Option<String>,
    pub partition: i32,
    /// Attempts made before this one.
    pub attempts: i32,
    pub payload: String,
    /// The row version read (its ctid): the write-back's fence.
    pub version: String,
    pub source: Source,
    /// Its share of the read it came from (cursor accounting).
    pub token: Token,
}

impl Queued for Event {
    fn id(&self) -> i64 {
        self.id
    }
    fn key(&self) -> Option<&str> {
        if self.source == Source::Redelivery {
            return None;
        }
        self.key.as_deref()
    }
    fn partition(&self) -> i32 {
        self.partition
    }
}

/// One endpoint's part of the log this relay reads.
pub struct Scope<'a> {
    pub endpoint: i32,
    /// partitions - 1.
    pub mask: i32,
    pub parts: &'a [i32],
    /// Whether events are ordered by their key (`ordering = "key"`).
    pub ordered: bool,
}

/// A row read from the log, before it has a token.
pub struct Row {
    pub id: i64,
    pub event_id: String,
    pub ordering_key: Option<String>,
    pub payload: String,
    pub version: String,
    pub partition: i32,
}

impl Row {
    pub fn into_event(
        self,
        scope: &Scope<'_>,
        source: Source,
        attempts: i32,
        token: Token,
    ) -> Event {
        Event {
            id: self.id,
            event_id: self.event_id,
            key: self.ordering_key.filter(|_| scope.ordered),
            partition: self.partition,
            attempts,
            payload: self.payload,
            version: self.version,
            source,
            token,
        }
    }
}

/// What a read returns.
pub struct Page {
    /// The tick read to.
    pub tick: Tick,
    pub rows: Vec<Row>,
    /// Whether the endpoint is paused.
    pub paused: bool,
}

/// A page of the rows committed after `prev` and by `cur` (this statement's
/// own snapshot when `None`), with ids after `after`; and the tick it read to.
pub async fn read(
    conn: &Conn,
    scope: &Scope<'_>,
    prev: &Tick,
    cur: Option<&Tick>,
    after: i64,
    limit: i64,
) -> Result<Page> {
    let cur_text = cur.map(|t| t.text().to_string());
    let rows = conn
        .query(
            &conn.st.read,
            &[
                &scope.endpoint,
                &prev.xmax_param(),
                &prev.xip_param(),
                &cur_text,
                &scope.parts,
                &limit,
                &after,
                &scope.mask,
            ],
        )
        .await
        .context("reading the log")?;
    let mut tick = None;
    let mut paused = false;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if tick.is_none() {
            tick = Some(Tick::parse(r.get::<_, &str>(0)).map_err(anyhow::Error::msg)?);
            paused = r.get::<_, Option<bool>>(7).unwrap_or(false);
        }
        let Some(id) = r.get::<_, Option<i64>>(1) else {
            continue;
        };
        out.push(Row {
            id,
            event_id: r.get(2),
            ordering_key: r.get(3),
            payload: r.get(4),
            version: r.get(5),
            partition: r.get(6),
        });
    }
    let tick = tick.context("the read returned no tick")?;
    Ok(Page {
        tick,
        rows: out,
        paused,
    })
}

/// The ids of a big tick's rows after `after`, at most `limit`, in id order,
/// and whether more follow them. First in no order, at most `limit + 1`,
/// which the relay sorts itself; only a tick with more than `limit` rows
/// left is listed again, sorted by the database, to page through it.
pub async fn read_ids(
    conn: &Conn,
    scope: &Scope<'_>,
    prev: &Tick,
    cur: &Tick,
    after: i64,
    limit: i64,
) -> Result<(Vec<i64>, bool)> {
    let mut ids = list_ids(
        conn,
        &conn.st.read_ids_any,
        scope,
        prev,
        cur,
        after,
        limit + 1,
    )
    .await?;
    if ids.len() as i64 > limit {
        ids = list_ids(conn, &conn.st.read_ids, scope, prev, cur, after, limit).await?;
        let more = ids.len() as i64 == limit;
        return Ok((ids, more));
    }
    Ok((ids, false))
}

#[allow(clippy::too_many_arguments)]
async fn list_ids(
    conn: &Conn,
    stmt: &crate::db::Stmt,
    scope: &Scope<'_>,
    prev: &Tick,
    cur: &Tick,
    after: i64,
    limit: i64,
) -> Result<Vec<i64>> {
    let row = conn
        .query_one(
            stmt,
            &[
                &scope.endpoint,
                &prev.xmax_param(),
                &prev.xip_param(),
                &cur.text(),
                &scope.parts,
                &limit,
                &after,
                &scope.mask,
            ],
        )
        .await
        .context("reading a big tick's ids")?;
    let mut ids: Vec<i64> = row.get::<_, Option<Vec<i64>>>(0).unwrap_or_default();
    // An aggregate's input order is not promised even from the sorted
    // statement; a sorted run is checked in one pass.
    ids.sort_unstable();
    Ok(ids)
}

/// A page of a big tick's rows, by id.
pub async fn read_rows(conn: &Conn, scope: &Scope<'_>, ids: &[i64]) -> Result<Vec<Row>> {
    let rows = conn
        .query(&conn.st.read_rows, &[&ids, &scope.mask])
        .await
        .context("reading a page of a big tick")?;
    Ok(rows
        .into_iter()
        .map(|r| Row {
            id: r.get(0),
            event_id: r.get(1),
            ordering_key: r.get(2),
            payload: r.get(3),
            version: r.get(4),
            partition: r.get(5),
        })
        .collect())
}

/// Held heads whose retry is due (all of them when `all`, for a probe).
pub async fn holds_due(
    conn: &Conn,
    scope: &Scope<'_>,
    in_flight: &[String],
    limit: i64,
    all: bool,
) -> Result<Vec<Event>> {
    let rows = conn
        .query(
            &conn.st.holds_due,
            &[
                &scope.endpoint,
                &scope.parts,
                &scope.mask,
                &in_flight,
                &limit,
                &all,
            ],
        )
        .await
        .context("reading the held keys that are due")?;
    Ok(rows
        .into_iter()
        .map(|r| Event {
            key: Some(r.get(0)),
            id: r.get(1),
            event_id: r.get(2),
            attempts: r.get(3),
            payload: r.get(4),
            version: r.get(5),
            partition: r.get(6),
            source: Source::Held,
            token: Token::none(),
        })
        .collect())
}

/// At a take-over: the held keys (with their holding event) and the keys
/// that only have parked events.
pub async fn holds_load(conn: &Conn, scope: &Scope<'_>) -> Result<Vec<(String, Option<i64>, i32)>> {
    let rows = conn
        .query(
            &conn.st.holds_load,
            &[&scope.endpoint, &scope.parts, &scope.mask],
        )
        .await
        .context("loading the held and parked keys")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The next parked events of `keys`, each after its id, at most `limit` per key.
pub async fn parked_fetch(
    conn: &Conn,
    scope: &Scope<'_>,
    keys: &[(String, i64)],
    limit: i64,
) -> Result<Vec<Event>> {
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let after: Vec<i64> = keys.iter().map(|(_, a)| *a).collect();
    let rows = conn
        .query(
            &conn.st.parked_fetch,
            &[&scope.endpoint, &names, &after, &limit, &scope.mask],
        )
        .await
        .context("reading parked events")?;
    Ok(rows
        .into_iter()
        .map(|r| Event {
            key: Some(r.get(0)),
            partition: r.get(6),
            id: r.get(1),
            event_id: r.get(2),
            attempts: r.get(3),
            payload: r.get(4),
            version: r.get(5),
            source: Source::Parked,
            token: Token::none(),
        })
        .collect())
}

/// Parks events behind their held keys.
pub async fn park(conn: &Conn, endpoint: i32, events: &[Event]) -> Result<()> {
    let keys: Vec<&str> = events.iter().filter_map(|e| e.key.as_deref()).collect();
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    conn.execute(&conn.st.park, &[&endpoint, &keys, &ids])
        .await
        .context("parking events behind their held keys")?;
    Ok(())
}

/// Redeliveries that are due.
pub async fn redeliveries_due(
    conn: &Conn,
    scope: &Scope<'_>,
    in_flight: &[i64],
    limit: i64,
) -> Result<Vec<Event>> {
    let rows = conn
        .query(
            &conn.st.redeliveries_due,
            &[
                &scope.endpoint,
                &scope.parts,
                &scope.mask,
                &in_flight,
                &limit,
            ],
        )
        .await
        .context("reading the redeliveries that are due")?;
    Ok(rows
        .into_iter()
        .map(|r| Event {
            id: r.get(0),
            event_id: r.get(1),
            key: r.get(2),
            attempts: r.get(3),
            payload: r.get(4),
            version: r.get(5),
            partition: r.get(6),
            source: Source::Redelivery,
            token: Token::none(),
        })
        .collect())
}

/// Moves the cursor of the partitions this relay owns, with their counts in flight.
pub async fn write_cursor(
    conn: &Conn,
    endpoint: i32,
    tick: &Tick,
    parts: &[i32],
    in_flight: &[i32],
    relay: &str,
) -> Result<()> {
    conn.execute(
        &conn.st.cursor,
        &[&endpoint, &tick.text(), &parts, &in_flight, &relay],
    )
    .await
    .context("moving the partitions' cursor")?;
    Ok(())
}
