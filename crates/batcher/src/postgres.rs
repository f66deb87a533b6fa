//! Connections to PostgreSQL for the batcher and its commands.

use tokio_postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL URL is not valid: {0}")]
    Url(tokio_postgres::Error),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

/// Opens one connection and drives it on a background task.
pub async fn connect(url: &str) -> Result<Client, PostgresError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|source| PostgresError::Connect {
            url: redact(url),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Creates the database named in `url` when it does not exist, through the `postgres` database.
pub async fn ensure_database(url: &str) -> Result<(), PostgresError> {
    let config: tokio_postgres::Config = url.parse().map_err(PostgresError::Url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    match connect(url).await {
        Ok(_) => return Ok(()),
        // Most often: the database does not exist yet. Any other cause shows again below.
        Err(error) => tracing::info!(%error, "creating the database if it is missing"),
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) =
        admin
            .connect(NoTls)
            .await
            .map_err(|source| PostgresError::Connect {
                url: redact(url),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection (database creation) closed");
        }
    });
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another migrator created it at the same moment.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
