//! Database connections: connect with a redacted error, and the connection
//! driver task that tokio-postgres needs.

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

/// Connects and spawns the connection's driver task. The returned handle
/// finishes when the connection closes, which is how long-lived users (the
/// listener) notice a lost database.
pub async fn connect(url: &str) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact_database_url(url)))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok((client, driver))
}

/// Connects for a short task (migrate, status): the driver runs detached.
pub async fn connect_simple(url: &str) -> Result<Client> {
    Ok(connect(url).await?.0)
}

/// A database URL fit for messages: the password, if any, replaced.
pub fn redact_database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => crate::config::redact_url(&parsed),
        // key=value connection strings: drop any password=... pair.
        Err(_) => url
            .split_whitespace()
            .map(|kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_database_url("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            redact_database_url("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
    }
}
