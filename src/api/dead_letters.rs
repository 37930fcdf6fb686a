//! `DeadLetters` (`authLevel: admin`): inspect, replay and discard dead-lettered writes.
//!
//! * `GET api/dead-letters[?count=50&after=<id>]`: the oldest dead letters and the total.
//! * `GET api/dead-letters/{id}`: one.
//! * `POST api/dead-letters/{id}`: replay one: publish its event again (same version, so it cannot
//!   overwrite anything newer) and remove it. `POST api/dead-letters`: replay up to `count`.
//! * `DELETE api/dead-letters/{id}`: discard one.

use serde_json::{Value, json};

use crate::app::App;
use crate::protocol::{HttpCall, HttpReply, InvocationLog};
use crate::queue::WriteEvent;
use crate::queue::dead_letter::{DeadLetter, parse_id};

pub async fn handle(app: &App, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    let dead_letters = app.patterns.dead_letters();
    let count = match call.query("count") {
        None => 50,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return HttpReply::error(
                    400,
                    "bad_count",
                    format!("`count` must be a whole number from 1 to 1000, got {raw:?}"),
                );
            }
        },
    };
    let after = match call.query("after") {
        None => None,
        Some(raw) => match parse_id(raw) {
            Some(id) => Some(id),
            None => return bad_id("after", raw),
        },
    };
    let id = match call.route_key.as_deref() {
        None => None,
        Some(raw) => match parse_id(raw) {
            Some(id) => Some(id),
            None => return bad_id("the path", raw),
        },
    };
    let unavailable = |e: crate::cache::CacheError| match e {
        crate::cache::CacheError::Unavailable(_) => {
            HttpReply::error(503, "redis_unavailable", format!("the dead-letter stream cannot be read: {e}"))
                .with_header("Retry-After", "5")
        }
        crate::cache::CacheError::Command(_) => {
            HttpReply::error(500, "redis_error", format!("Redis refused the dead-letter command: {e}"))
        }
    };
    match (call.method.as_str(), id.as_deref()) {
        ("GET", None) => {
            let items = match dead_letters.list(count, after.as_deref()).await {
                Ok(items) => items,
                Err(e) => return unavailable(e),
            };
            let total = dead_letters.count().await.unwrap_or(items.len() as u64);
            let next = items.last().map(|d| Value::String(d.id.clone())).unwrap_or(Value::Null);
            HttpReply::json(200, json!({"total": total, "items": items, "next": next}))
        }
        ("GET", Some(id)) => match dead_letters.get(id).await {
            Ok(Some(item)) => HttpReply::json(200, json!(item)),
            Ok(None) => not_found(id),
            Err(e) => unavailable(e),
        },
        ("DELETE", Some(id)) => match dead_letters.remove(id).await {
            Ok(true) => {
                log.info(format!("dead letter {id} discarded"));
                HttpReply::json(200, json!({"discarded": id}))
            }
            Ok(false) => not_found(id),
            Err(e) => unavailable(e),
        },
        ("POST", target) => {
            let items = match target {
                Some(id) => match dead_letters.get(id).await {
                    Ok(Some(item)) => vec![item],
                    Ok(None) => return not_found(id),
                    Err(e) => return unavailable(e),
                },
                None => match dead_letters.list(count, None).await {
                    Ok(items) => items,
                    Err(e) => return unavailable(e),
                },
            };
            let (replayed, failed) = replay(app, items).await;
            log.info(format!("dead letters replayed: {}, not replayed: {}", replayed.len(), failed.len()));
            let status = if target.is_some() && !failed.is_empty() { 422 } else { 200 };
            HttpReply::json(status, json!({"replayed": replayed, "failed": failed}))
        }
        ("DELETE", None) => {
            HttpReply::error(400, "bad_key", "name the dead letter to discard: DELETE api/dead-letters/{id}")
        }
        _ => HttpReply::error(405, "method_not_allowed", "use GET, POST or DELETE")
            .with_header("Allow", "GET, POST, DELETE"),
    }
}

async fn replay(app: &App, items: Vec<DeadLetter>) -> (Vec<String>, Vec<Value>) {
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for item in items {
        let event = match WriteEvent::parse(&item.event) {
            Ok(event) => event,
            Err(e) => {
                failed
                    .push(json!({"id": item.id, "reason": format!("cannot be replayed: {e}; discard it with DELETE")}));
                continue;
            }
        };
        if let Err(e) = app.patterns.queue().publish(&event).await {
            failed.push(json!({"id": item.id, "reason": e.to_string()}));
            continue;
        }
        match app.patterns.dead_letters().remove(&item.id).await {
            Ok(_) => replayed.push(item.id),
            // Published but not removed: a later replay publishes it again, which is harmless.
            Err(e) => failed.push(json!({"id": item.id, "reason": format!("replayed, but not removed: {e}")})),
        }
    }
    (replayed, failed)
}

fn bad_id(place: &str, raw: &str) -> HttpReply {
    HttpReply::error(
        400,
        "bad_id",
        format!(
            "{place} holds {raw:?}, which is not a dead-letter id; ids look like 1730000000000-0 (see GET api/dead-letters)"
        ),
    )
}

fn not_found(id: &str) -> HttpReply {
    HttpReply::error(404, "not_found", format!("no dead letter with id {id:?}"))
}
