//! Scenario `bulk`: one statement (or one transaction) that changes many
//! buyers, timed with the reference triggers and without them, at two sizes,
//! so that the ratio between the sizes shows whether the cost is linear.

use std::time::Instant;

use anyhow::{bail, Result};
use futures_util::SinkExt;
use tokio_postgres::Client;

use crate::{connect, median, Bench};

/// One timed step: its name, the SQL (`{n}` stands for the number of buyers;
/// None means a COPY of one postcode per buyer), and how many events it must
/// write per buyer with the triggers on.
struct Step {
    name: &'static str,
    sql: Option<&'static str>,
    events_per_buyer: i64,
}

const STEPS: &[Step] = &[
    Step {
        name: "INSERT ... SELECT, one postcode per buyer",
        sql: Some("INSERT INTO buyer_postcodes SELECT 'b' || g, 'A' || g FROM generate_series(1, {n}) g"),
        events_per_buyer: 1,
    },
    Step {
        name: "COPY, one more postcode per buyer",
        sql: None,
        events_per_buyer: 1,
    },
    Step {
        name: "UPDATE of every postcode (2 per buyer)",
        sql: Some("UPDATE buyer_postcodes SET postcode = 'X' || postcode"),
        events_per_buyer: 1,
    },
    Step {
        name: "DELETE + INSERT in one transaction",
        sql: Some(
            "BEGIN; DELETE FROM buyer_postcodes;
             INSERT INTO buyer_postcodes SELECT 'b' || g, 'N' || g FROM generate_series(1, {n}) g; COMMIT",
        ),
        events_per_buyer: 1,
    },
    Step {
        name: "DELETE of every postcode",
        sql: Some("DELETE FROM buyer_postcodes"),
        events_per_buyer: 1,
    },
    Step {
        name: "UPDATE buyer_credits, every buyer tops up",
        sql: Some("UPDATE buyer_credits SET balance = balance + 5"),
        events_per_buyer: 1,
    },
];

/// The enqueue step: with triggers, webhook.enqueue once per buyer in one
/// statement; its trigger-free counterpart is a plain INSERT of the same rows.
const ENQUEUE: &str = "SELECT webhook.enqueue('add_credits', jsonb_build_object('n', g), 'b' || g)
                         FROM generate_series(1, {n}) g";
const BARE_INSERT: &str = "INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
                           SELECT webhook.new_event_id(), 'add_credits', jsonb_build_object('n', g), 'b' || g, 1
                             FROM generate_series(1, {n}) g";

pub async fn bulk(b: &Bench, sizes: &[i64], runs: usize) -> Result<()> {
    println!(
        "## bulk: one statement or transaction changing many buyers, seconds (median of {runs})"
    );
    println!("# with the reference triggers (events written) and without them (the same statement, triggers disabled)");
    let mut rows: Vec<(String, Vec<(f64, f64)>)> = STEPS
        .iter()
        .map(|s| (s.name.to_string(), Vec::new()))
        .collect();
    rows.push((
        "webhook.enqueue once per buyer, one statement".into(),
        Vec::new(),
    ));
    for &n in sizes {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            with.push(run(b, n, true).await?);
            without.push(run(b, n, false).await?);
        }
        for (i, row) in rows.iter_mut().enumerate() {
            row.1.push((
                median(with.iter().map(|t| t[i]).collect()),
                median(without.iter().map(|t| t[i]).collect()),
            ));
        }
    }
    print!("{:<48}", "step");
    for n in sizes {
        print!(" {:>18}", format!("{n} buyers"));
    }
    if sizes.len() == 2 {
        print!(" {:>14}", format!("x{}", sizes[1] / sizes[0].max(1)));
    }
    println!();
    for (name, times) in &rows {
        print!("{name:<48}");
        for (with, without) in times {
            print!(" {:>18}", format!("{with:.2} ({without:.2})"));
        }
        if let [(a, _), (b, _)] = times[..] {
            print!(" {:>14}", format!("{:.1}x", b / a));
        }
        println!();
    }
    println!(
        "# cells: with triggers (without); last column: time at the larger size over the smaller"
    );
    Ok(())
}

/// A fresh database with `n` buyers with credits and no postcodes, statistics
/// taken on the empty outbox; then every step, timed. Returns the seconds of
/// each step (STEPS, then the enqueue step).
async fn run(b: &Bench, n: i64, triggers: bool) -> Result<Vec<f64>> {
    let url = b.fresh_db("bench_bulk").await?;
    let c = connect(&url).await?;
    c.batch_execute(&format!(
        "INSERT INTO webhook.endpoints (name, url, events, armed)
         VALUES ('bulk', 'http://127.0.0.1:9/', ARRAY['user_credits_zero', 'post_code_change', 'add_credits'], false);
         ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events;
         TRUNCATE buyers CASCADE;
         TRUNCATE webhook.outbox CASCADE;
         INSERT INTO buyers SELECT 'b' || g, 'Bench Buyer ' || g, 1 FROM generate_series(1, {n}) g;
         INSERT INTO buyer_credits SELECT 'b' || g, 100 FROM generate_series(1, {n}) g;
         ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;"
    ))
    .await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    if !triggers {
        c.batch_execute(
            "ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events;
             ALTER TABLE buyer_postcodes DISABLE TRIGGER webhook_events;",
        )
        .await?;
    }
    let mut times = Vec::new();
    for step in STEPS {
        let before = outbox_rows(&c).await?;
        let start = Instant::now();
        match step.sql {
            Some(sql) => c.batch_execute(&sql.replace("{n}", &n.to_string())).await?,
            None => copy_postcodes(&c, n).await?,
        }
        times.push(start.elapsed().as_secs_f64());
        let written = outbox_rows(&c).await? - before;
        let expected = if triggers {
            step.events_per_buyer * n
        } else {
            0
        };
        if written != expected {
            bail!(
                "{}: {written} events written, {expected} expected",
                step.name
            );
        }
    }
    let before = outbox_rows(&c).await?;
    let start = Instant::now();
    let sql = if triggers { ENQUEUE } else { BARE_INSERT };
    c.batch_execute(&sql.replace("{n}", &n.to_string())).await?;
    times.push(start.elapsed().as_secs_f64());
    if outbox_rows(&c).await? - before != n {
        bail!("enqueue: not one row per call");
    }
    Ok(times)
}

async fn outbox_rows(c: &Client) -> Result<i64> {
    Ok(c.query_one("SELECT count(*) FROM webhook.outbox", &[])
        .await?
        .get(0))
}

async fn copy_postcodes(c: &Client, n: i64) -> Result<()> {
    let mut rows = String::with_capacity(n as usize * 16);
    for g in 1..=n {
        rows.push_str(&format!("b{g}\tB{g}\n"));
    }
    let sink = c
        .copy_in::<_, bytes::Bytes>("COPY buyer_postcodes (buyer_id, postcode) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(rows)).await?;
    sink.finish().await?;
    Ok(())
}
