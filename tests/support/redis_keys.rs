//! The service's keys as tests read and write them directly, by SCAN and
//! plain commands (the service itself never scans): records, uploaded marks,
//! the upload queue, streams and their pending entries.

use std::collections::HashSet;

use super::redis::RedisServer;

/// Keys matching `pattern`, by SCAN (test-side only; the service never scans).
pub fn keys(conn: &mut redis::Connection, pattern: &str) -> HashSet<String> {
    let mut cursor = 0u64;
    let mut found = HashSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .expect("scan");
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Records of the kind whose keys start with `prefix` (`tx` or `pred`)
/// that are not recorded as uploaded: every record key (`tx:*`) and older
/// version (`tx@*`) whose value's SHA-1 is neither in the uploaded index
/// (`flit:uploaded:<kind>`) nor among the marks beside it (`tx!{id}`).
/// Empty once everything is uploaded, whether records are kept or removed
/// (FLIT_KEEP_UPLOADED=false).
pub fn unuploaded_records(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut waiting = Vec::new();
    for key in keys(conn, &format!("{prefix}[:@]*")) {
        let id = match key.strip_prefix(&format!("{prefix}:")) {
            Some(id) => id.to_owned(),
            None => key[prefix.len() + 42..].to_owned(),
        };
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(conn).expect("get");
        let Some(value) = value else { continue };
        let digest = sha1_smol::Sha1::from(&value).digest().to_string();
        if !uploaded_versions(conn, prefix, &id).contains(&digest) {
            waiting.push(key);
        }
    }
    waiting.sort();
    waiting
}

/// The uploaded index of the kind whose keys start with `prefix`.
pub fn uploaded_index(prefix: &str) -> &'static str {
    match prefix {
        "tx" => "flit:uploaded:transactions",
        "pred" => "flit:uploaded:predictions",
        other => panic!("no kind has the prefix {other}"),
    }
}

/// The SHA-1s of the versions of record `id` recorded as uploaded, sorted:
/// the one in the uploaded index and those in the mark beside the record
/// (`tx!{id}`, a hash), each once.
pub fn uploaded_versions(conn: &mut redis::Connection, prefix: &str, id: &str) -> Vec<String> {
    let mut versions = uploaded_marks(conn, &format!("{prefix}!{id}"));
    let indexed: Option<String> = redis::cmd("HGET")
        .arg(uploaded_index(prefix))
        .arg(id)
        .query(conn)
        .expect("hget");
    if let Some(digest) = indexed.and_then(|value| value.get(..40).map(str::to_owned)) {
        versions.push(digest);
    }
    versions.sort();
    versions.dedup();
    versions
}

/// The SHA-1s an uploaded mark (`tx!{id}`, a hash) holds, sorted.
pub fn uploaded_marks(conn: &mut redis::Connection, mark: &str) -> Vec<String> {
    let mut marks: Vec<String> = redis::cmd("HKEYS").arg(mark).query(conn).expect("hkeys");
    marks.sort();
    marks
}

pub fn queue(conn: &mut redis::Connection) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg("upload_queue")
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("lrange")
}

pub fn llen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("LLEN").arg(key).query(conn).unwrap_or(0)
}

pub fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap_or(0)
}

/// Entries delivered to the group's consumers but not acknowledged.
pub fn pending(conn: &mut redis::Connection, stream: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("flit-cache")
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

pub fn xadd(conn: &mut redis::Connection, stream: &str, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (field, value) in fields {
        cmd.arg(*field).arg(*value);
    }
    cmd.query(conn).expect("xadd")
}

/// Checks the whole Redis side for one kind after all `expected` records
/// were ingested: exactly that many record keys, each queued exactly once,
/// and nothing left pending.
pub fn assert_exactly_once(
    redis: &RedisServer,
    db: i64,
    prefix: &str,
    stream: &str,
    expected: usize,
) {
    assert_exactly_once_in(&mut redis.conn(db), db, prefix, stream, expected);
}

/// [`assert_exactly_once`] on a connection made elsewhere (a TLS server).
pub fn assert_exactly_once_in(
    conn: &mut redis::Connection,
    db: i64,
    prefix: &str,
    stream: &str,
    expected: usize,
) {
    let records = keys(conn, &format!("{prefix}*"));
    let queued = queue(conn);
    let distinct: HashSet<&String> = queued.iter().collect();
    assert_eq!(records.len(), expected, "record keys with {prefix}");
    assert_eq!(queued.len(), expected, "queue entries in db {db}");
    assert_eq!(distinct.len(), queued.len(), "no key is queued twice");
    assert!(
        queued.iter().all(|k| records.contains(k)),
        "every queue entry names a stored record"
    );
    assert_eq!(pending(conn, stream), 0, "nothing pending on {stream}");
}
