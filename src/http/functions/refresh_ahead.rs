//! `RefreshAheadRead`: `GET api/refresh-ahead/{key?}`.

use super::input::read_key;
use super::reads;
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::RefreshAhead;

pub(super) async fn handle(refresh_ahead: &RefreshAhead, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    match read_key(call) {
        Ok(key) => reads::reply("refresh-ahead", &key, refresh_ahead.get(&key).await, log),
        Err(reply) => reply,
    }
}
