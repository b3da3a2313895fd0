//! Schema management: the embedded refinery migrations, the schema version
//! check, and the mirror of config endpoints into `webhook.endpoints`.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;

use crate::config::EndpointConfig;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Where refinery records applied migrations: inside the relay's own schema.
const HISTORY_TABLE: &str = "webhook.schema_history";

/// Applies every migration not yet applied. Idempotent.
pub async fn run_migrations(client: &mut Client) -> Result<Vec<String>> {
    run_migrations_to(client, None).await
}

/// Applies the migrations not yet applied up to `version` (None: all), for a
/// database built at an older schema to test an upgrade on.
pub async fn run_migrations_to(client: &mut Client, version: Option<u32>) -> Result<Vec<String>> {
    // The history table lives in schema webhook, which must exist before
    // refinery creates that table.
    client
        .batch_execute("CREATE SCHEMA IF NOT EXISTS webhook")
        .await
        .context("creating schema webhook")?;
    let target = version.map_or(refinery::Target::Latest, refinery::Target::Version);
    let mut runner = embedded::migrations::runner().set_target(target);
    let report = runner
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(client)
        .await
        .context("applying migrations")?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// The newest migration version this binary carries.
pub fn expected_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i32)
        .max()
        .unwrap_or(0)
}

/// Refuses a database whose `webhook` schema is missing or older than this
/// binary, with a message that says what to do.
pub async fn check_schema_version(client: &Client) -> Result<()> {
    let expected = expected_version();
    // Unnamed statements (query_typed): these work through a pooler in
    // transaction mode too.
    let exists: bool = client
        .query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&HISTORY_TABLE, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .context("checking the webhook schema")?
        .get(0);
    let applied: i32 = if exists {
        client
            .query_typed_one(
                &format!("SELECT coalesce(max(version), 0)::int4 FROM {HISTORY_TABLE}"),
                &[],
            )
            .await
            .context("reading the webhook schema version")?
            .get(0)
    } else {
        0
    };
    if applied < expected {
        bail!(
            "the database's webhook schema is at version {applied}, this relay needs {expected}: \
             run `outbox-relay migrate` first"
        );
    }
    Ok(())
}

/// Upserts each configured endpoint by name and disables the ones no longer in
/// the config (they are never deleted: outbox rows point at them). Secrets and
/// headers are not written. Returns name -> endpoint_id.
pub async fn sync_endpoints(
    client: &mut Client,
    endpoints: &[EndpointConfig],
) -> Result<HashMap<String, i32>> {
    let tx = client
        .transaction()
        .await
        .context("starting the endpoint sync")?;
    let mut ids = HashMap::new();
    for ep in endpoints {
        let row = tx
            .query_one(
                include_str!("../sql/sync_endpoint.sql"),
                &[&ep.name, &ep.display_url(), &ep.events, &ep.enabled],
            )
            .await
            .with_context(|| format!("syncing endpoint {:?}", ep.name))?;
        ids.insert(ep.name.clone(), row.get::<_, i32>(0));
    }
    let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    let disabled = tx
        .execute(
            include_str!("../sql/disable_missing_endpoints.sql"),
            &[&names],
        )
        .await
        .context("disabling endpoints no longer configured")?;
    tx.batch_execute(include_str!("../sql/analyze_endpoints.sql"))
        .await
        .context("analyzing webhook.endpoints")?;
    tx.commit().await.context("committing the endpoint sync")?;
    if disabled > 0 {
        tracing::info!(
            disabled,
            "endpoints no longer in the config were disabled (their rows are kept)"
        );
    }
    Ok(ids)
}
