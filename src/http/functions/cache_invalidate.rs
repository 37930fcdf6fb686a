//! `CacheInvalidate` (function key): `DELETE api/cache/{key}` evicts one key (`?hard=true` drops
//! the fail-safe copy too); `POST api/cache` with `{"keys":[…]}` (and optionally `"hard":true`) or
//! `{"tags":[…]}` invalidates in bulk.
//! `CacheClear` (admin key): `POST api/cache-clear` invalidates every entry. It is a function of
//! its own because the host checks keys per function: clearing everything needs the admin key.

use serde_json::{Value, json};

use super::input::read_key;
use crate::domain::key::Key;
use crate::domain::options::{MAX_TAGS, tags_from};
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::invalidation::{Invalidator, Outcome, Scope};

/// Most keys one bulk eviction may name.
pub(crate) const MAX_KEYS_PER_CALL: usize = 1000;

pub(super) async fn handle(invalidator: &Invalidator, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    let scope = match scope_of(call) {
        Ok(scope) => scope,
        Err(reply) => return reply,
    };
    let outcome = invalidator.invalidate(&scope).await;
    let described = match &scope {
        Scope::Keys { keys, hard } if keys.len() == 1 => {
            format!("evicted {:?}{}", keys[0].as_str(), if *hard { " (hard)" } else { "" })
        }
        Scope::Keys { keys, hard } => format!("evicted {} keys{}", keys.len(), if *hard { " (hard)" } else { "" }),
        Scope::Tags(tags) => format!("invalidated tags {:?}", tags.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
        Scope::All => "invalidated every entry".to_string(),
    };
    reply(&scope, outcome, described, log)
}

/// `CacheClear`: every entry.
pub(super) async fn clear(invalidator: &Invalidator, log: &mut InvocationLog) -> HttpReply {
    let outcome = invalidator.invalidate(&Scope::All).await;
    reply(&Scope::All, outcome, "invalidated every entry".into(), log)
}

fn reply(scope: &Scope, outcome: Outcome, described: String, log: &mut InvocationLog) -> HttpReply {
    let mut body = match scope {
        Scope::Keys { keys, hard } if keys.len() == 1 => json!({"key": keys[0].as_str(), "hard": hard}),
        Scope::Keys { keys, hard } => json!({"keys": keys.len(), "hard": hard}),
        Scope::Tags(tags) => json!({"tags": tags.iter().map(|t| t.as_str()).collect::<Vec<_>>()}),
        Scope::All => json!({"all": true}),
    };
    let (status, stamp, state) = match outcome {
        Outcome::Done { stamp } => (200, stamp, "invalidated"),
        Outcome::Pending { stamp } => (202, stamp, "pending"),
        Outcome::Stopping => {
            let message = "the handler is stopping and cut this invalidation, which may be partly done; send it again";
            return crate::http::errors::stopping(message.into(), log);
        }
    };
    body["stamp"] = json!(stamp);
    body["status"] = json!(state);
    if status == 202 {
        log.info(format_args!("{described} when Redis answers again (stamp {stamp}): it is unreachable now"));
    } else {
        log.info(format_args!("{described} (stamp {stamp})"));
    }
    HttpReply::json(status, body)
}

fn bad_body(message: impl Into<String>) -> HttpReply {
    HttpReply::error(400, "bad_body", message)
}

/// A boolean query parameter: absent is false, else `true` or `false` (any case) and nothing else,
/// as docs/openapi.yaml says (`?hard=`, `?hard=1` were false and true: found by scripts/api-fuzz.sh).
fn flag(call: &HttpCall, name: &str) -> Result<bool, HttpReply> {
    match call.query(name).map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(HttpReply::error(400, "bad_query", format!("?{name}={other} is not true or false"))),
    }
}

fn scope_of(call: &HttpCall) -> Result<Scope, HttpReply> {
    if call.method == "DELETE" {
        let key = read_key(call)?;
        return Ok(Scope::Keys { keys: vec![key], hard: flag(call, "hard")? });
    }
    let body: Value = serde_json::from_slice(&call.body).map_err(|e| {
        bad_body(format!("the body is not valid JSON ({e}); send {{\"keys\":[…]}} or {{\"tags\":[…]}}"))
    })?;
    let Value::Object(map) = body else {
        return Err(bad_body("the body must be a JSON object: {\"keys\":[…]} or {\"tags\":[…]}"));
    };
    let strings = |name: &str| -> Result<Option<Vec<String>>, HttpReply> {
        match map.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| bad_body(format!("\"{name}\" must be an array of strings"))),
            Some(_) => Err(bad_body(format!("\"{name}\" must be an array of strings"))),
        }
    };
    let keys = strings("keys")?;
    let tags = strings("tags")?;
    let all = map.get("all").is_some_and(|v| v.as_bool() == Some(true));
    // `?hard=` is checked even when the body says `"hard"` (which wins): a malformed query is an
    // error, never silently ignored.
    let query_hard = flag(call, "hard")?;
    let hard = match map.get("hard") {
        None => query_hard,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_body("\"hard\" must be true or false")),
    };
    if let Some(unknown) = map.keys().find(|k| !["keys", "tags", "all", "hard"].contains(&k.as_str())) {
        return Err(bad_body(format!("unknown field \"{unknown}\"; send {{\"keys\":[…]}} or {{\"tags\":[…]}}")));
    }
    match (keys, tags, all) {
        (_, _, true) => Err(HttpReply::error(
            403,
            "admin_required",
            "invalidating every entry needs the admin key: send POST api/cache-clear (function CacheClear)",
        )),
        (Some(keys), None, false) => {
            if keys.is_empty() || keys.len() > MAX_KEYS_PER_CALL {
                return Err(bad_body(format!("\"keys\" must name 1 to {MAX_KEYS_PER_CALL} keys")));
            }
            let mut checked = Vec::with_capacity(keys.len());
            for (i, key) in keys.into_iter().enumerate() {
                checked.push(Key::new(key).map_err(|e| HttpReply::error(400, "bad_key", format!("keys[{i}]: {e}")))?);
            }
            checked.sort();
            checked.dedup();
            Ok(Scope::Keys { keys: checked, hard })
        }
        (None, Some(tags), false) => {
            if tags.is_empty() || tags.len() > MAX_TAGS {
                return Err(bad_body(format!("\"tags\" must name 1 to {MAX_TAGS} tags")));
            }
            let tags = tags_from(tags.iter().map(String::as_str))
                .map_err(|e| HttpReply::error(400, "bad_tag", e.to_string()))?;
            Ok(Scope::Tags(tags))
        }
        (Some(_), Some(_), false) => Err(bad_body("send either \"keys\" or \"tags\", not both")),
        (None, None, false) => Err(bad_body("send {\"keys\":[…]} or {\"tags\":[…]}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, route_key: Option<&str>, query: &[(&str, &str)], body: &str) -> HttpCall {
        HttpCall {
            method: method.to_string().into(),
            route_key: route_key.map(str::to_string),
            path_key_unusable: false,
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            headers: Default::default(),
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn scopes_and_refusals() {
        let k = |s: &str| Key::new(s).unwrap();
        assert_eq!(
            scope_of(&call("DELETE", Some("a"), &[], "")).unwrap(),
            Scope::Keys { keys: vec![k("a")], hard: false }
        );
        assert_eq!(
            scope_of(&call("DELETE", Some("a"), &[("hard", "true")], "")).unwrap(),
            Scope::Keys { keys: vec![k("a")], hard: true }
        );
        assert_eq!(
            scope_of(&call("POST", None, &[], r#"{"keys":["b","a","b"],"hard":true}"#)).unwrap(),
            Scope::Keys { keys: vec![k("a"), k("b")], hard: true }
        );
        assert!(
            matches!(scope_of(&call("POST", None, &[], r#"{"tags":["t"]}"#)).unwrap(), Scope::Tags(t) if t.len() == 1)
        );
        let status = |c: HttpCall| scope_of(&c).unwrap_err().status;
        assert_eq!(status(call("POST", None, &[], r#"{"all":true}"#)), 403);
        assert_eq!(status(call("POST", None, &[], r#"{"keys":[]}"#)), 400);
        assert_eq!(status(call("POST", None, &[], r#"{"keys":["a"],"tags":["t"]}"#)), 400);
        assert_eq!(status(call("POST", None, &[], r#"{"keys":[1]}"#)), 400);
        assert_eq!(status(call("POST", None, &[], r#"{"keys":["a\u0001"]}"#)), 400);
        assert_eq!(status(call("POST", None, &[], r#"{"tags":["a,b"]}"#)), 400);
        assert_eq!(status(call("POST", None, &[], r#"{"kyes":["a"]}"#)), 400);
        assert_eq!(status(call("POST", None, &[], "nope")), 400);
        assert_eq!(status(call("DELETE", Some("a"), &[("hard", "maybe")], "")), 400);
        for loose in ["", "1", "0", "yes"] {
            assert_eq!(status(call("DELETE", Some("a"), &[("hard", loose)], "")), 400, "?hard={loose}");
        }
        assert_eq!(
            scope_of(&call("DELETE", Some("a"), &[("hard", "TRUE")], "")).unwrap(),
            Scope::Keys { keys: vec![k("a")], hard: true }
        );
        // Found by scripts/api-fuzz.sh: a malformed `?hard=` was ignored when the body had "hard".
        assert_eq!(status(call("POST", None, &[("hard", "null")], r#"{"keys":["a"],"hard":false}"#)), 400);
        assert_eq!(
            scope_of(&call("POST", None, &[("hard", "true")], r#"{"keys":["a"],"hard":false}"#)).unwrap(),
            Scope::Keys { keys: vec![k("a")], hard: false },
            "the body's \"hard\" wins over the query's"
        );
    }
}
