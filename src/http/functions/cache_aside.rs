//! `CacheAside`: `GET api/cache-aside/{key}` (or the seed's body-only `POST`), and the bulk read
//! `POST api/cache-aside` with `{"keys":[…]}`.

use super::input::{bulk_read_keys, read_key};
use super::reads;
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::CacheAside;

pub(super) async fn handle(cache_aside: &CacheAside, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    match bulk_read_keys(call) {
        Some(Ok(keys)) => return reads::bulk_reply("cache-aside", cache_aside.get_many(&keys).await, log),
        Some(Err(reply)) => return reply,
        None => {}
    }
    match read_key(call) {
        Ok(key) => reads::reply("cache-aside", &key, cache_aside.get(&key).await, log),
        Err(reply) => reply,
    }
}
