//! The version of the Redis layout: which keys exist and what they mean
//! (docs/architecture.md, "Storage layout"). Each kind's database holds it
//! in `flit:layout`. A binary that writes there first claims the layout it
//! knows: it records its version where none (or an older one) is, and
//! refuses, changing nothing, when Redis already holds a newer one, so two
//! versions side by side during a deploy cannot misread each other's keys.

use redis::Script;
use redis::aio::MultiplexedConnection;

use crate::keys::LAYOUT;

/// This binary's layout. 1: records removed at upload (no key written);
/// 2: uploaded records kept and marked (`tx!{id}`), one command per event;
/// 3: a batch's entries leave the queue when it is taken (its entries list,
/// manifests of positions), settling in slices.
pub const LAYOUT_VERSION: u32 = 3;

/// allow-oom: a full Redis must still let the workers and the uploader,
/// which free memory, start.
const CLAIM: &str = "#!lua flags=allow-oom
local held = tonumber(redis.call('GET', KEYS[1]) or '1') or 0
local mine = tonumber(ARGV[1])
if held > mine then
  return redis.error_reply('NEWER_LAYOUT Redis holds layout ' .. held .. ' in ' .. KEYS[1] ..
    ', this flit-cache knows layouts up to ' .. mine .. '; run the newer flit-cache (nothing was changed)')
end
if held < mine or redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], mine) end
return held";

/// Claims this binary's layout in the connection's database; returns the
/// version that was there (1 when none was: layout 1 wrote no key). Errs
/// with code `NEWER_LAYOUT` when Redis holds a newer one.
pub async fn claim(conn: &mut MultiplexedConnection) -> redis::RedisResult<u32> {
    Script::new(CLAIM)
        .key(LAYOUT)
        .arg(LAYOUT_VERSION)
        .invoke_async(conn)
        .await
}
