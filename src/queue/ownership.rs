//! Which partitions of each endpoint's keys this relay owns: a heartbeat in
//! `webhook.relays`, leases renewed every quarter lease, free or expired
//! partitions taken up to a fair share (as a Kafka consumer takes partitions
//! of its group). Each endpoint's loop follows its [`Owned`] and gives back
//! what exceeds the share itself, after writing the cursor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ticks::Tick;
use crate::db::Db;
use crate::metrics::Metrics;

/// A partition as this relay holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its cursor when this relay took it: the first read starts there.
    pub tick: Tick,
    /// Which taking of it this is (a partition lost and taken again is new).
    pub taken: u64,
}

/// An endpoint's partitions owned by this relay, as of the last renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub parts: BTreeMap<i32, Held>,
    /// How many partitions this relay should own (the rest go back).
    pub share: usize,
    /// The endpoint's partition count (a power of two).
    pub partitions: i32,
    /// The leases run out at this instant unless renewed: nothing is sent
    /// that could still be in flight then.
    pub lease_until: Option<Instant>,
}

impl Default for Owned {
    fn default() -> Self {
        Owned {
            parts: BTreeMap::new(),
            share: 0,
            partitions: 16,
            lease_until: None,
        }
    }
}

/// Fair share of `partitions` among `relays`.
pub fn share(partitions: i32, relays: i64) -> usize {
    let relays = relays.max(1) as usize;
    (partitions.max(0) as usize).div_ceil(relays)
}

/// How often leases are renewed (and shares looked at again): a quarter
/// lease, and at least every two seconds, so that a relay that starts gets
/// its share within seconds.
pub fn renew_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Runs until `stop`: renews, takes, and publishes each endpoint's [`Owned`].
/// Once `no_more` is cancelled (shutdown has begun) it takes nothing new,
/// only renews what the loops still hold until they give it back.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    relay: String,
    lease: Duration,
    endpoints: Vec<(i32, watch::Sender<Owned>)>,
    no_more: CancellationToken,
    stop: CancellationToken,
) {
    let mut taken = 0u64;
    let mut late: Vec<Vec<i32>> = endpoints.iter().map(|_| Vec::new()).collect();
    let mut state: Vec<Owned> = endpoints.iter().map(|_| Owned::default()).collect();
    let mut made = vec![false; endpoints.len()];
    let mut timer = tokio::time::interval(renew_every(lease));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = stop.cancelled() => {
                // Taken by a round that began before shutdown and ended
                // after it: the loops may have stopped before seeing them.
                for (i, (id, _)) in endpoints.iter().enumerate() {
                    if late[i].is_empty() {
                        continue;
                    }
                    if let Err(e) = give_back(&db, *id, &relay, &late[i], None).await {
                        tracing::warn!(endpoint_id = id, error = %format!("{e:#}"), "giving partitions back at shutdown failed; their leases expire");
                    }
                }
                gone(&db, &relay).await;
                return;
            }
        }
        let started = Instant::now();
        let relays = match heartbeat(&db, &relay, lease).await {
            Ok(n) => {
                tracing::trace!(relays = n, "heartbeat");
                n
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "relay heartbeat failed; will retry");
                continue;
            }
        };
        let mut all = true;
        for (i, (id, tx)) in endpoints.iter().enumerate() {
            let owned = &mut state[i];
            match cycle(
                &db,
                *id,
                &relay,
                lease,
                relays,
                !made[i],
                &no_more,
                owned,
                &mut late[i],
                &mut taken,
                &metrics,
            )
            .await
            {
                Ok(()) => {
                    made[i] = true;
                    owned.lease_until = Some(started + lease);
                    tx.send_if_modified(|o| {
                        let changed = o != owned;
                        if changed {
                            *o = owned.clone();
                        }
                        changed
                    });
                }
                Err(e) => {
                    all = false;
                    tracing::warn!(endpoint_id = id, error = %format!("{e:#}"), "renewing partitions failed; will retry");
                }
            }
        }
        if all {
            metrics.set_owning();
        }
    }
}

/// Takes this relay out of the count at a graceful stop.
async fn gone(db: &Db, relay: &str) {
    let r = async {
        let conn = db.conn().await?;
        let r = conn.execute(&conn.st.relay_gone, &[&relay]).await;
        db.report(&r);
        r.context("removing the relay's heartbeat")
    }
    .await;
    if let Err(e) = r {
        tracing::debug!(error = %format!("{e:#}"), "the relay's heartbeat stays until it ages out");
    }
}

async fn heartbeat(db: &Db, relay: &str, lease: Duration) -> Result<i64> {
    let conn = db.conn().await?;
    let r = conn
        .query_one(&conn.st.heartbeat, &[&relay, &lease.as_secs_f64()])
        .await;
    db.report(&r);
    Ok(r.context("writing the relay heartbeat")?.get(0))
}

#[allow(clippy::too_many_arguments)]
async fn cycle(
    db: &Db,
    endpoint: i32,
    relay: &str,
    lease: Duration,
    relays: i64,
    make: bool,
    no_more: &CancellationToken,
    owned: &mut Owned,
    late: &mut Vec<i32>,
    taken: &mut u64,
    metrics: &Metrics,
) -> Result<()> {
    let conn = db.conn().await?;
    let secs = lease.as_secs_f64();
    if make {
        let r = conn.query_one(&conn.st.partitions_make, &[&endpoint]).await;
        db.report(&r);
        owned.partitions = r.context("making the endpoint's partitions")?.get(0);
    }
    let r = conn
        .query(&conn.st.renew, &[&endpoint, &relay, &secs])
        .await;
    db.report(&r);
    let still: Vec<i32> = r
        .context("renewing partition leases")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    owned.parts.retain(|p, _| still.contains(p));
    owned.share = share(owned.partitions, relays);
    tracing::trace!(
        endpoint,
        owned = owned.parts.len(),
        share = owned.share,
        partitions = owned.partitions,
        "partitions renewed"
    );
    // Looked at again just before taking: shutdown may have begun meanwhile.
    if !no_more.is_cancelled() && owned.parts.len() < owned.share {
        let want = (owned.share - owned.parts.len()) as i64;
        let r = conn
            .query(&conn.st.take, &[&endpoint, &relay, &secs, &want])
            .await;
        db.report(&r);
        for row in r.context("taking partitions")? {
            let part: i32 = row.get(0);
            let tick = Tick::parse(row.get::<_, &str>(1)).map_err(anyhow::Error::msg)?;
            *taken += 1;
            let over: bool = row.get(2);
            if over {
                metrics.taken_over.inc();
                tracing::warn!(
                    endpoint_id = endpoint,
                    partition = part,
                    "partition taken over: its relay's lease expired"
                );
            } else {
                tracing::info!(endpoint_id = endpoint, partition = part, "partition taken");
            }
            if no_more.is_cancelled() {
                late.push(part);
            }
            owned.parts.insert(
                part,
                Held {
                    tick,
                    taken: *taken,
                },
            );
        }
    }
    Ok(())
}

/// Gives partitions back, their cursor at `tick` (unchanged when `None`).
pub async fn give_back(
    db: &Db,
    endpoint: i32,
    relay: &str,
    parts: &[i32],
    tick: Option<&Tick>,
) -> Result<()> {
    let conn = db.conn().await?;
    let tick = tick.map(|t| t.text().to_string());
    let r = conn
        .execute(&conn.st.give_back, &[&endpoint, &relay, &parts, &tick])
        .await;
    db.report(&r);
    r.context("giving partitions back")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_fair_and_cover_every_partition() {
        assert_eq!(share(16, 1), 16);
        assert_eq!(share(16, 3), 6);
        assert_eq!(share(16, 0), 16);
        assert_eq!(share(1, 3), 1);
        assert_eq!(renew_every(Duration::from_secs(60)), Duration::from_secs(2));
        assert_eq!(
            renew_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }
}
