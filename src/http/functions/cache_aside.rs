//! `CacheAside`: `GET api/cache-aside/{key}` (or the seed's body-only `POST`).

use super::input::read_key;
use super::reads;
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::CacheAside;

pub(super) async fn handle(cache_aside: &CacheAside, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    match read_key(call) {
        Ok(key) => reads::reply("cache-aside", &key, cache_aside.get(&key).await, log),
        Err(reply) => reply,
    }
}
