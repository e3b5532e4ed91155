//! Opening a client from a connection string, with errors that name the hosts and never the
//! credentials; and the schema (collections and indexes) every type of this crate prepares or
//! checks when it is built.

use std::future::IntoFuture;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Cursor, IndexModel};
use mq_core::Result;
use serde::de::DeserializeOwned;

use crate::error::{Error, backend};
use crate::options::MongoOptions;

/// Checks `options`, parses `uri`, applies the timeouts of `options`, and pings the server so
/// that an unreachable one fails here, within the server selection timeout, rather than at the
/// first operation.
pub(crate) async fn client(uri: &str, options: &MongoOptions) -> Result<Client> {
    options.validate()?;
    let timeout = options.get_server_selection_timeout();
    let connect_error = |target: String, source: mq_core::BoxError| mq_core::Error::Connect {
        backend: "mongo",
        target,
        source,
    };
    let unreachable = |source: Option<mongodb::error::Error>| {
        Box::new(Error::Unreachable {
            timeout,
            source: source.map(Box::new),
        })
    };
    // Parsing may resolve DNS (mongodb+srv): bound it too.
    let mut co = match tokio::time::timeout(timeout, ClientOptions::parse(uri)).await {
        Ok(Ok(co)) => co,
        Ok(Err(e)) => {
            return Err(match &*e.kind {
                ErrorKind::InvalidArgument { message, .. } => mq_core::Error::invalid_option(
                    "uri",
                    format!("not a usable MongoDB connection string: {message}"),
                ),
                _ => connect_error(target_of(uri), Box::new(e)),
            });
        }
        Err(_) => return Err(connect_error(target_of(uri), unreachable(None))),
    };
    co.server_selection_timeout = Some(timeout);
    co.connect_timeout = Some(options.get_connect_timeout());
    if co.app_name.is_none() {
        co.app_name = Some("mq-mongo".into());
    }
    let target = co
        .hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::with_options(co).map_err(|e| connect_error(target.clone(), e.into()))?;
    let db = client.database(options.get_database());
    let ping = db.run_command(doc! { "ping": 1 });
    let pinged = match tokio::time::timeout(timeout + Duration::from_millis(500), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if matches!(&*e.kind, ErrorKind::ServerSelection { .. }) => {
            Err(connect_error(target, unreachable(Some(e))))
        }
        Ok(Err(e)) => Err(connect_error(target, Box::new(e))),
        Err(_) => Err(connect_error(target, unreachable(None))),
    };
    shut_down_on_error(&client, pinged).await.map(|()| client)
}

/// Builds something on a client opened by [`client`], shutting the client down when the build
/// fails.
///
/// Why: a dropped client ends its server sessions from a task it spawns. In a program that exits
/// on the error (a command-line tool meeting a mistyped collection), that task races the
/// runtime's shutdown, and the driver panics in it, printing a backtrace after the error.
/// Shutting down first ends the sessions before the error is returned, and the drop does nothing.
pub(crate) async fn build_or_shut_down<T>(
    client: Client,
    build: impl AsyncFnOnce(Client) -> Result<T>,
) -> Result<T> {
    let built = build(client.clone()).await;
    shut_down_on_error(&client, built).await
}

/// Shuts `client` down when `result` is an error (see [`build_or_shut_down`]).
async fn shut_down_on_error<T>(client: &Client, result: Result<T>) -> Result<T> {
    if result.is_err() {
        client.clone().shutdown().immediate(true).await;
    }
    result
}

/// The hosts of a connection string the driver could not parse, without the credentials.
fn target_of(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let hosts = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h);
    if hosts.is_empty() {
        "(no host in the connection string)".into()
    } else {
        hosts.chars().take(200).collect()
    }
}

/// Runs a find or aggregate and collects every document, mapping errors to `operation`.
pub(crate) async fn collect<T, A>(action: A, operation: &'static str) -> Result<Vec<T>>
where
    A: IntoFuture<Output = mongodb::error::Result<Cursor<T>>>,
    T: DeserializeOwned + Unpin + Send + Sync,
{
    let cursor = action.await.map_err(|e| backend(operation, e))?;
    cursor
        .try_collect()
        .await
        .map_err(|e| backend(operation, e))
}

/// Checks `options`, then prepares `collection` of their database with `indexes` (see
/// [`prepare_schema`]).
pub(crate) async fn store_collection(
    client: &Client,
    options: &MongoOptions,
    collection: &str,
    indexes: Vec<IndexModel>,
) -> Result<Collection<Document>> {
    options.validate()?;
    let coll = client
        .database(options.get_database())
        .collection(collection);
    prepare_schema(&coll, indexes, options.get_create_schema()).await?;
    Ok(coll)
}

/// Index error codes: an index of the same name exists with other options, or other keys.
const INDEX_CONFLICTS: [i32; 2] = [
    85, // IndexOptionsConflict
    86, // IndexKeySpecsConflict
];

/// No index of that name (another process dropped it first).
const INDEX_NOT_FOUND: i32 = 27;

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// True when two index definitions of the same name build the same index: same keys, same
/// expiry, uniqueness and partial filter.
fn same_index(have: &IndexModel, want: &IndexModel) -> bool {
    let opt = |m: &IndexModel| {
        m.options.as_ref().map(|o| {
            (
                o.expire_after,
                o.unique.unwrap_or(false),
                o.partial_filter_expression.clone(),
            )
        })
    };
    let (h, w) = (opt(have), opt(want));
    have.keys == want.keys
        && h.as_ref().map(|o| o.0) == w.as_ref().map(|o| o.0)
        && h.as_ref().is_some_and(|o| o.1) == w.as_ref().is_some_and(|o| o.1)
        && h.and_then(|o| o.2) == w.and_then(|o| o.2)
}

/// Creates `indexes` on `coll`. An index that exists under the same name with other keys or
/// options (a retention changed between two runs, a newer layout of the claim index) is
/// dropped and created again as asked, so a changed setting never stops a queue from starting.
/// Returns the names of the indexes it replaced.
async fn create_indexes(
    coll: &Collection<Document>,
    indexes: Vec<IndexModel>,
) -> Result<Vec<String>> {
    let first = match coll.create_indexes(indexes.clone()).await {
        Ok(_) => return Ok(Vec::new()),
        Err(e) if error_code(&e).is_some_and(|c| INDEX_CONFLICTS.contains(&c)) => e,
        Err(e) => return Err(backend("create indexes", e)),
    };
    let existing: Vec<IndexModel> = collect(coll.list_indexes(), "create indexes").await?;
    let mut replaced = Vec::new();
    for want in &indexes {
        let Some(name) = want.options.as_ref().and_then(|o| o.name.as_deref()) else {
            continue;
        };
        let Some(have) = existing
            .iter()
            .find(|h| h.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
        else {
            continue;
        };
        if same_index(have, want) {
            continue;
        }
        tracing::info!(collection = %coll.namespace(), index = name, old = %have.keys,
            new = %want.keys, "mq-mongo: an index changed its keys or options; replacing it");
        match coll.drop_index(name).await {
            Ok(()) => replaced.push(name.to_owned()),
            Err(e) if error_code(&e) == Some(INDEX_NOT_FOUND) => replaced.push(name.to_owned()),
            Err(e) => return Err(backend("replace index", e)),
        }
    }
    if replaced.is_empty() {
        return Err(backend("create indexes", first));
    }
    coll.create_indexes(indexes)
        .await
        .map_err(|e| backend("create indexes", e))?;
    Ok(replaced)
}

/// Creates the `indexes` of `coll` (and so the collection) when `create` is true; otherwise
/// checks that the collection and an index with each key pattern exist, failing with
/// [`Error::MissingSchema`] naming the first one missing. Never writes when `create` is false.
/// Returns the names of the indexes it replaced (see [`create_indexes`]).
pub(crate) async fn prepare_schema(
    coll: &Collection<Document>,
    indexes: Vec<IndexModel>,
    create: bool,
) -> Result<Vec<String>> {
    if create {
        return create_indexes(coll, indexes).await;
    }
    let ns = coll.namespace();
    let missing = |object: String| {
        mq_core::Error::backend("mongo", "check schema", Error::MissingSchema { object })
    };
    let names = coll
        .client()
        .database(&ns.db)
        .list_collection_names()
        .filter(doc! { "name": &ns.coll })
        .await
        .map_err(|e| backend("check schema", e))?;
    if names.is_empty() {
        return Err(missing(format!("collection {ns}")));
    }
    let existing: Vec<IndexModel> = collect(coll.list_indexes(), "check schema").await?;
    for want in indexes {
        let ttl = want.options.as_ref().and_then(|o| o.expire_after);
        let found = existing.iter().any(|have| {
            have.keys == want.keys && have.options.as_ref().and_then(|o| o.expire_after) == ttl
        });
        if !found {
            let name = want.options.as_ref().and_then(|o| o.name.as_deref());
            let name = name.map_or(String::new(), |n| format!("{n} "));
            let ttl = ttl.map_or(String::new(), |d| format!(" expiring after {d:?}"));
            return Err(missing(format!(
                "index {name}{keys}{ttl} on collection {ns}",
                keys = want.keys
            )));
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_never_show_credentials() {
        assert_eq!(
            target_of("mongodb://alice:s3cret@db1:27017,db2/?x=1"),
            "db1:27017,db2"
        );
        assert_eq!(
            target_of("mongodb+srv://u:p@cluster.example.com"),
            "cluster.example.com"
        );
        assert_eq!(target_of("mongodb://h?authSource=a@b"), "h");
        assert_eq!(target_of("nonsense"), "nonsense");
        assert_eq!(
            target_of("mongodb://u:p@/db"),
            "(no host in the connection string)"
        );
    }
}
