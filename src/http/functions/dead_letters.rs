//! `DeadLetters` (`authLevel: admin`): inspect, replay and discard dead-lettered writes.
//!
//! * `GET api/dead-letters[?count=50&after=<id>]`: the oldest dead letters and the total.
//! * `GET api/dead-letters/{id}`: one.
//! * `POST api/dead-letters/{id}`: replay one: publish its event again (same version, so it cannot
//!   overwrite anything newer) and remove it. `POST api/dead-letters`: replay up to `count`.
//! * `DELETE api/dead-letters/{id}`: discard one.

use serde_json::{Value, json};

use crate::http::errors::dead_letters_failure;
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::DeadLetterAdmin;
use crate::patterns::dead_letters::Replay;
use crate::ports::dead_letters::DeadLetterId;

pub(super) async fn handle(admin: &DeadLetterAdmin, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
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
    let after = match call.query("after").map(|raw| (raw, DeadLetterId::parse(raw))) {
        None => None,
        Some((_, Some(id))) => Some(id),
        Some((raw, None)) => return bad_id("after", raw),
    };
    let id = match call.route_key.as_deref().map(|raw| (raw, DeadLetterId::parse(raw))) {
        None => None,
        Some((_, Some(id))) => Some(id),
        Some((raw, None)) => return bad_id("the path", raw),
    };
    // The function's methods are GET, POST and DELETE, DELETE with an id (checked before this
    // handler runs).
    match (call.method.as_ref(), id) {
        ("GET", None) => match admin.list(count, after.as_ref()).await {
            Ok(page) => {
                let next = page.items.last().map(|d| Value::String(d.id.to_string())).unwrap_or(Value::Null);
                HttpReply::json(200, json!({"total": page.total, "items": page.items, "next": next}))
            }
            Err(e) => dead_letters_failure(&e),
        },
        ("GET", Some(id)) => match admin.get(&id).await {
            Ok(Some(item)) => HttpReply::json(200, json!(item)),
            Ok(None) => not_found(&id),
            Err(e) => dead_letters_failure(&e),
        },
        ("DELETE", Some(id)) => match admin.discard(&id).await {
            Ok(true) => {
                log.info(format_args!("dead letter {id} discarded"));
                HttpReply::json(200, json!({"discarded": id}))
            }
            Ok(false) => not_found(&id),
            Err(e) => dead_letters_failure(&e),
        },
        // Refused with 405 before this handler runs (`HttpFunction::methods_for`).
        ("DELETE", None) => {
            HttpReply::error(405, "method_not_allowed", "name the dead letter to discard: DELETE api/dead-letters/{id}")
                .with_header("Allow", "GET, POST")
        }
        (_, Some(id)) => match admin.replay_one(&id).await {
            Ok(Some(replay)) => replay_reply(&replay, true, log),
            Ok(None) => not_found(&id),
            Err(e) => dead_letters_failure(&e),
        },
        (_, None) => match admin.replay_oldest(count).await {
            Ok(replay) => replay_reply(&replay, false, log),
            Err(e) => dead_letters_failure(&e),
        },
    }
}

/// `200 {"replayed", "failed"}`; `422` when the one dead letter asked for was not replayed.
fn replay_reply(replay: &Replay, one: bool, log: &mut InvocationLog) -> HttpReply {
    log.info(format_args!("dead letters replayed: {}, not replayed: {}", replay.replayed.len(), replay.failed.len()));
    let failed: Vec<Value> = replay.failed.iter().map(|(id, reason)| json!({"id": id, "reason": reason})).collect();
    let status = if one && !failed.is_empty() { 422 } else { 200 };
    HttpReply::json(status, json!({"replayed": replay.replayed, "failed": failed}))
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

fn not_found(id: &DeadLetterId) -> HttpReply {
    HttpReply::error(404, "not_found", format!("no dead letter with id {:?}", id.as_str()))
}
