//! The version of the Redis layout: which keys exist and what they mean
//! (docs/architecture.md, "Storage layout"). Each kind's database holds it
//! in `flit:layout`. A binary that writes there first claims the layout it
//! knows: it records its version where none (or an older one) is, and
//! refuses, changing nothing, when Redis already holds a newer one, so two
//! versions side by side during a deploy cannot misread each other's keys.

use redis::aio::MultiplexedConnection;

use super::scripts;

use crate::keys::LAYOUT;

/// This binary's layout. 1: records removed at upload (no key written);
/// 2: uploaded records kept and marked (`tx!{id}`), one command per event;
/// 3: a batch's entries leave the queue when it is taken (its entries list,
/// manifests of positions), settling in slices; 4: an uploaded record's
/// version is recorded in the kind's uploaded index (`flit:uploaded:<kind>`)
/// instead of a mark key of its own (the marks of 2 and 3 are still read,
/// so nothing is converted).
pub const LAYOUT_VERSION: u32 = 4;

/// Whether `err` is a layout claim refused because Redis holds a newer
/// layout: an older binary still running beside a newer one, which is
/// refused by design and changes nothing.
pub fn is_newer_layout(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<redis::RedisError>())
        .any(|redis| redis.code() == Some("NEWER_LAYOUT"))
}

/// Claims this binary's layout in the connection's database; returns the
/// version that was there (1 when none was: layout 1 wrote no key). Errs
/// with code `NEWER_LAYOUT` when Redis holds a newer one.
pub async fn claim(conn: &mut MultiplexedConnection) -> redis::RedisResult<u32> {
    scripts::LAYOUT_CLAIM
        .key(LAYOUT)
        .arg(LAYOUT_VERSION)
        .invoke_async(conn)
        .await
}
