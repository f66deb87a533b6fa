//! The pure part of an ingest request: items validated into events or invalid records (in
//! request order), then the queue records and claims that the dedup script takes. Kept apart
//! from the handlers so that the Redis ceiling benchmark builds exactly what the API sends.

use sift_core::hash::sha256_hex;
use sift_core::validate::validate;
use sift_core::{Event, InvalidRecord, Limits, QueueRecord};

use crate::body::Item;
use crate::dedup::Claim;

/// Why an event that repeats a key is refused.
pub const DUPLICATE_KEY: &str =
    "appears more than once in the event; send each field once (which copy is meant cannot be told)";

/// The items of one request after validation.
pub struct Prepared {
    pub events: Vec<Event>,
    pub invalid: Vec<InvalidRecord>,
    /// For each item, in request order: Ok(index into `events`) or Err(index into `invalid`).
    pub order: Vec<Result<usize, usize>>,
}

/// A valid event's queue record and the hash of its client `event_id`.
pub struct Ready<'a> {
    pub record: QueueRecord<'a>,
    pub event_id_hash: Option<String>,
    /// Whether the event is claimed by its timestamp too (see [`Claim::by_time`]).
    pub by_time: bool,
}

/// Validates every item of a request received at `now_ms` for `tenant`.
pub fn prepare(tenant: &str, items: Vec<Item>, limits: &Limits, now_ms: i64) -> Prepared {
    let mut events: Vec<Event> = Vec::with_capacity(items.len());
    let mut invalid: Vec<InvalidRecord> = Vec::new();
    let mut order: Vec<Result<usize, usize>> = Vec::with_capacity(items.len());
    for item in items {
        let checked = match item {
            Item::Event(value) => {
                validate(&value, limits, now_ms).map_err(|e| (value.to_string(), e.field, e.reason))
            }
            Item::Unparseable { raw, reason } => Err((raw, "$".to_owned(), reason)),
            Item::DuplicateKey { raw, key } => Err((raw, key, DUPLICATE_KEY.to_owned())),
        };
        match checked {
            Ok(event) => {
                order.push(Ok(events.len()));
                events.push(event);
            }
            Err((raw, field, reason)) => {
                order.push(Err(invalid.len()));
                invalid.push(InvalidRecord {
                    tenant_id: tenant.to_owned(),
                    received_at_ms: now_ms,
                    field,
                    reason,
                    raw,
                });
            }
        }
    }
    Prepared {
        events,
        invalid,
        order,
    }
}

impl Prepared {
    /// The queue record of each valid event (hashed here), in the order of `events`.
    pub fn records<'a>(&'a self, tenant: &'a str, now_ms: i64) -> Vec<Ready<'a>> {
        self.events
            .iter()
            .map(|event| Ready {
                record: QueueRecord::new(tenant, event, now_ms),
                event_id_hash: event.event_id.as_deref().map(sha256_hex),
                by_time: event.timestamp_given
                    && event.event_id.is_none()
                    && event.stream.is_none(),
            })
            .collect()
    }
}

/// The claims of `ready`, borrowing it.
pub fn claims<'a>(ready: &'a [Ready<'a>]) -> Vec<Claim<'a>> {
    ready
        .iter()
        .map(|r| Claim {
            record: &r.record,
            event_id_hash: r.event_id_hash.as_deref(),
            by_time: r.by_time,
        })
        .collect()
}
