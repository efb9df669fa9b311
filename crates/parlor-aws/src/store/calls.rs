//! The DynamoDB calls every concern makes, written once: a strongly consistent get, a
//! batch get (consistent, with unprocessed keys asked again), a query followed through its
//! pages, writes as transaction items, and a transaction that reports why it was cancelled.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use parlor_core::error::BackendError;

use super::codec::Item;
use super::error::{build, sdk};

/// Keys one BatchGetItem call may ask for.
const BATCH_GET_KEYS_MAX: usize = 100;
/// How often a batch get asks again for keys DynamoDB left unprocessed (under load).
const UNPROCESSED_ROUNDS_MAX: u32 = 10;
/// Items one TransactWriteItems call may hold.
pub(super) const TRANSACT_ITEMS_MAX: usize = 100;

/// The item at `key`, read strongly consistently.
pub(super) async fn get(
    client: &Client,
    table: &str,
    key: Item,
) -> Result<Option<Item>, BackendError> {
    let output = client
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .map_err(|error| sdk(&format!("get from {table}"), error))?;
    Ok(output.item)
}

/// The items at `keys` that exist, read strongly consistently, in no particular order.
pub(super) async fn batch_get(
    client: &Client,
    table: &str,
    keys: Vec<Item>,
) -> Result<Vec<Item>, BackendError> {
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH_GET_KEYS_MAX) {
        let mut pending = KeysAndAttributes::builder()
            .set_keys(Some(chunk.to_vec()))
            .consistent_read(true)
            .build()
            .map_err(|error| build("batch get", error))?;
        for round in 0.. {
            let output = client
                .batch_get_item()
                .request_items(table, pending)
                .send()
                .await
                .map_err(|error| sdk(&format!("batch get from {table}"), error))?;
            if let Some(mut responses) = output.responses {
                found.extend(responses.remove(table).unwrap_or_default());
            }
            match output
                .unprocessed_keys
                .and_then(|mut unprocessed| unprocessed.remove(table))
            {
                Some(rest) if !rest.keys().is_empty() => {
                    if round >= UNPROCESSED_ROUNDS_MAX {
                        return Err(BackendError::unavailable(format!(
                            "batch get from {table}: keys still unprocessed after {round} rounds"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20 << round.min(5))).await;
                    pending = rest;
                }
                _ => break,
            }
        }
    }
    Ok(found)
}

/// A query: its key condition, an optional filter, the names and values they use.
pub(super) struct Query<'a> {
    pub(super) table: &'a str,
    pub(super) index: Option<&'a str>,
    pub(super) key_condition: &'a str,
    pub(super) filter: Option<&'a str>,
    pub(super) projection: Option<&'a str>,
    pub(super) names: &'a [(&'a str, &'a str)],
    pub(super) values: Vec<(&'a str, AttributeValue)>,
    pub(super) forward: bool,
    /// Items evaluated per call (before the filter); `None`: DynamoDB's 1 MB pages.
    pub(super) page_items: Option<i32>,
}

impl Query<'_> {
    /// Follows the pages until `enough` says the items so far suffice, or there are no
    /// more; reads are strongly consistent but on an index (which cannot give them).
    pub(super) async fn run(
        &self,
        client: &Client,
        mut enough: impl FnMut(&[Item]) -> bool,
    ) -> Result<Vec<Item>, BackendError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut request = client
                .query()
                .table_name(self.table)
                .set_index_name(self.index.map(str::to_owned))
                .key_condition_expression(self.key_condition)
                .set_filter_expression(self.filter.map(str::to_owned))
                .set_projection_expression(self.projection.map(str::to_owned))
                .scan_index_forward(self.forward)
                .consistent_read(self.index.is_none())
                .set_limit(self.page_items)
                .set_exclusive_start_key(start.take());
            for (name, attribute) in self.names {
                request = request.expression_attribute_names(*name, *attribute);
            }
            for (name, value) in &self.values {
                request = request.expression_attribute_values(*name, value.clone());
            }
            let output = request
                .send()
                .await
                .map_err(|error| sdk(&format!("query {}", self.table), error))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() && !enough(&items) => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Every item the query finds.
    pub(super) async fn all(&self, client: &Client) -> Result<Vec<Item>, BackendError> {
        self.run(client, |_| false).await
    }
}

/// The names and values an expression uses.
pub(super) type Names<'a> = &'a [(&'a str, &'a str)];
pub(super) type Values = Vec<(&'static str, AttributeValue)>;

fn names_map(names: Names<'_>) -> Option<HashMap<String, String>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|(name, attribute)| ((*name).to_owned(), (*attribute).to_owned()))
            .collect()
    })
}

fn values_map(values: Values) -> Option<HashMap<String, AttributeValue>> {
    (!values.is_empty()).then(|| {
        values
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    })
}

/// A Put of `item` into `table`, under `condition` if any.
pub(super) fn put(
    table: &str,
    item: Item,
    condition: Option<&str>,
    names: Names<'_>,
    values: Values,
) -> Result<TransactWriteItem, BackendError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition.map(str::to_owned))
        .set_expression_attribute_names(names_map(names))
        .set_expression_attribute_values(values_map(values))
        .build()
        .map_err(|error| build("put", error))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// An Update of the item at `key` in `table`.
pub(super) fn update(
    table: &str,
    key: Item,
    expression: &str,
    condition: Option<&str>,
    names: Names<'_>,
    values: Values,
) -> Result<TransactWriteItem, BackendError> {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key))
        .update_expression(expression)
        .set_condition_expression(condition.map(str::to_owned))
        .set_expression_attribute_names(names_map(names))
        .set_expression_attribute_values(values_map(values))
        .build()
        .map_err(|error| build("update", error))?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// A Delete of the item at `key` in `table`.
pub(super) fn delete(table: &str, key: Item) -> Result<TransactWriteItem, BackendError> {
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key))
        .build()
        .map_err(|error| build("delete", error))?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

/// A Delete of the item at `key` in `table`, under `condition`.
pub(super) fn delete_if(
    table: &str,
    key: Item,
    condition: &str,
    names: Names<'_>,
    values: Values,
) -> Result<TransactWriteItem, BackendError> {
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key))
        .condition_expression(condition)
        .set_expression_attribute_names(names_map(names))
        .set_expression_attribute_values(values_map(values))
        .build()
        .map_err(|error| build("delete", error))?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

/// How a transaction ended.
#[derive(Debug)]
pub(super) enum Transacted {
    Committed,
    /// Cancelled: per item, in order, the reason's code (`ConditionalCheckFailed`,
    /// `TransactionConflict`, `None` for the items that were fine).
    Cancelled(Vec<String>),
}

/// Runs `items` (at most [`TRANSACT_ITEMS_MAX`]) as one transaction. A client request
/// token makes the SDK's own retry of a transaction whose answer was lost idempotent:
/// within ten minutes, a repeat of a committed transaction succeeds without applying it
/// again, instead of failing its conditions.
pub(super) async fn transact(
    client: &Client,
    what: &str,
    items: Vec<TransactWriteItem>,
) -> Result<Transacted, BackendError> {
    debug_assert!(items.len() <= TRANSACT_ITEMS_MAX, "{} items", items.len());
    let result = client
        .transact_write_items()
        .set_transact_items(Some(items))
        .client_request_token(uuid::Uuid::now_v7().to_string())
        .send()
        .await;
    match result {
        Ok(_) => Ok(Transacted::Committed),
        Err(error) => match error.as_service_error() {
            Some(service) if service.is_transaction_canceled_exception() => {
                let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(cancelled) = service else {
                    unreachable!("checked above")
                };
                let reasons: Vec<String> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|reason| reason.code().unwrap_or("None").to_owned())
                    .collect();
                // Anything but a failed condition or a clash with another transaction is
                // trouble of DynamoDB's, or input it refuses.
                let kind_of = |code: &str| {
                    super::error::service_kind(
                        match code {
                            "ThrottlingError" | "ProvisionedThroughputExceeded" => {
                                "ThrottlingException"
                            }
                            "ValidationError" => "ValidationException",
                            other => other,
                        },
                        "",
                    )
                };
                if let Some(bad) = reasons.iter().find(|code| {
                    !matches!(
                        code.as_str(),
                        "None" | "ConditionalCheckFailed" | "TransactionConflict"
                    )
                }) {
                    return Err(BackendError::new(
                        kind_of(bad),
                        format!("{what}: transaction cancelled: {reasons:?}"),
                    ));
                }
                Ok(Transacted::Cancelled(reasons))
            }
            _ => Err(sdk(what, error)),
        },
    }
}
