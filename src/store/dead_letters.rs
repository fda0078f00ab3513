//! `DeadLetter`s: events the door refused (and records the warehouse
//! refused), kept in `stream:<kind>:dead` with their reason, never silently
//! dropped, and bounded: an entry keeps at most `keep_bytes` of the event
//! (a longer one keeps a prefix, its size and its SHA-1), and each stream an
//! approximate `max_len` entries; what the cap trims is counted.
//!
//! `flit-cache dead-letter list|show|redrive` reads them here. `redrive`
//! re-checks each with today's rules; an acceptable one goes back onto its
//! event stream and leaves the dead-letter stream in the same script.

use chrono::{DateTime, Utc};
use redis::Value;
use redis::aio::MultiplexedConnection;
use serde::Serialize;

use super::{connection, scripts};
use crate::event::{self, DoorRules};
use crate::keys::{DATA_FIELD, EventKind};

/// How dead letters are kept: bounded per entry and per stream, so no
/// input, however large or frequent, fills Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterSettings {
    /// Bytes of a refused event kept in its dead letter; a longer one keeps
    /// this prefix, its size and its SHA-1 (and cannot be redriven).
    pub keep_bytes: usize,
    /// Approximate cap of each dead-letter stream; what it drops is counted.
    pub max_len: u64,
}

/// A refused event's body as kept: whole when it is short, else a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptBody {
    pub data: Vec<u8>,
    /// Size of the whole event, in bytes.
    pub size: usize,
    /// Hex SHA-1 of the whole event.
    pub sha1: String,
    pub truncated: bool,
}

impl KeptBody {
    /// Keeps at most `keep_bytes` of `data`, cut on a character boundary
    /// when the data is text.
    pub fn new(data: &[u8], keep_bytes: usize) -> Self {
        let mut cut = data.len().min(keep_bytes);
        if let Ok(text) = std::str::from_utf8(data) {
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
        }
        KeptBody {
            data: data[..cut].to_vec(),
            size: data.len(),
            sha1: sha1_smol::Sha1::from(data).digest().to_string(),
            truncated: cut < data.len(),
        }
    }
}

/// One dead letter as read back.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    /// When it was dead-lettered (from its id).
    pub at: Option<DateTime<Utc>>,
    pub reason_code: String,
    pub reason: String,
    /// The stream entry it came from (`source_id`), or the record key
    /// (`source_key`) for records the upload refused.
    pub source: String,
    #[serde(serialize_with = "as_text")]
    pub data: Vec<u8>,
    pub size: usize,
    pub sha1: String,
    pub truncated: bool,
    /// The dead letter this one replaced, when a redrive refused it again.
    pub redriven_from: Option<String>,
}

fn as_text<S: serde::Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(data))
}

impl DeadLetter {
    fn from_fields(id: String, fields: EntryFields) -> Self {
        let text = |name: &str| {
            fields
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let data = fields
            .iter()
            .find(|(f, _)| f == DATA_FIELD)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        DeadLetter {
            at: event::entry_time(&id),
            reason_code: text("reason_code").unwrap_or_default(),
            reason: text("reason").unwrap_or_default(),
            source: text("source_id")
                .or_else(|| text("source_key"))
                .unwrap_or_default(),
            size: text("size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(data.len()),
            sha1: text("sha1").unwrap_or_else(|| sha1_smol::Sha1::from(&data).digest().to_string()),
            truncated: text("truncated").as_deref() == Some("1"),
            redriven_from: text("redriven_from"),
            data,
            id,
        }
    }

    /// Why this dead letter cannot go back onto its stream, if it cannot.
    pub fn not_redrivable(&self) -> Option<&'static str> {
        if self.truncated {
            Some(
                "only a prefix of the event was kept (it was larger than FLIT_DEAD_LETTER_KEEP_BYTES)",
            )
        } else if self.reason_code == "missing_data" {
            Some("the stream entry had no `data` field; there is no event to send")
        } else if self.reason_code == "expired" {
            Some("the record expired before any upload took it; its data is gone")
        } else {
            None
        }
    }
}

/// Which dead letters a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub reason: Option<String>,
    pub id: Option<String>,
    pub limit: usize,
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.reason
            .as_ref()
            .is_none_or(|r| *r == letter.reason_code)
            && self.id.as_ref().is_none_or(|id| *id == letter.id)
    }
}

const PAGE: usize = 200;

/// A stream entry's fields, values as bytes.
type EntryFields = Vec<(String, Vec<u8>)>;

/// The selected dead letters of `kind`, oldest first, at most `limit`, and
/// how many the stream holds in all.
pub async fn read(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    selection: &Selection,
) -> redis::RedisResult<(Vec<DeadLetter>, u64)> {
    let total: u64 = redis::cmd("XLEN")
        .arg(kind.dead_letter_stream())
        .query_async(conn)
        .await?;
    let mut found = Vec::new();
    let mut start = selection.id.clone().unwrap_or_else(|| "-".to_owned());
    let end = selection.id.clone().unwrap_or_else(|| "+".to_owned());
    while found.len() < selection.limit {
        let page = range(conn, kind.dead_letter_stream(), &start, &end, PAGE).await?;
        let Some(last) = page.last().map(|l| l.id.clone()) else {
            break;
        };
        found.extend(
            page.into_iter()
                .filter(|l| selection.matches(l))
                .take(selection.limit - found.len()),
        );
        start = format!("({last}");
    }
    Ok((found, total))
}

async fn range(
    conn: &mut MultiplexedConnection,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> redis::RedisResult<Vec<DeadLetter>> {
    let entries: Vec<(String, EntryFields)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| DeadLetter::from_fields(id, fields))
        .collect())
}

/// What happened to one dead letter in a redrive.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Redriven {
    /// Back on the event stream as entry `entry_id`.
    Back { id: String, entry_id: String },
    /// Still refused, with another reason: replaced by `new_id`.
    Replaced {
        id: String,
        new_id: String,
        reason_code: String,
        reason: String,
    },
    /// Still refused for the same reason; left as it is.
    Unchanged { id: String, reason_code: String },
    /// Cannot be sent again, and why.
    NotRedrivable { id: String, why: String },
    /// Gone before it could be moved (another redrive took it).
    Gone { id: String },
}

impl Redriven {
    /// Whether the event is still a dead letter afterwards.
    pub fn stays_dead(&self) -> bool {
        matches!(
            self,
            Redriven::Replaced { .. } | Redriven::Unchanged { .. } | Redriven::NotRedrivable { .. }
        )
    }
}

/// Re-checks the selected dead letters of `kind` with today's `rules` and
/// moves the acceptable ones back onto the event stream. Only entries that
/// existed when it started are looked at, so replaced ones are not seen
/// twice. Each move is one script: killed and rerun, nothing is lost or
/// doubled.
pub async fn redrive(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    selection: &Selection,
    rules: &DoorRules,
) -> redis::RedisResult<Vec<Redriven>> {
    let script = &scripts::REDRIVE;
    let stream = kind.dead_letter_stream();
    let newest: Vec<(String, Value)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let Some((end, _)) = newest.into_iter().next() else {
        return Ok(Vec::new());
    };
    let end = selection.id.clone().unwrap_or(end);
    let mut start = selection.id.clone().unwrap_or_else(|| "-".to_owned());
    let mut outcomes = Vec::new();
    while outcomes.len() < selection.limit {
        let page = range(conn, stream, &start, &end, PAGE).await?;
        let Some(last) = page.last().map(|l| l.id.clone()) else {
            break;
        };
        start = format!("({last}");
        let now = connection::server_time(conn).await?;
        let mut planned: Vec<(DeadLetter, Option<event::Rejection>)> = Vec::new();
        for letter in page.into_iter().filter(|l| selection.matches(l)) {
            if outcomes.len() + planned.len() >= selection.limit {
                break;
            }
            if let Some(why) = letter.not_redrivable() {
                outcomes.push(Redriven::NotRedrivable {
                    id: letter.id,
                    why: why.to_owned(),
                });
                continue;
            }
            match event::accept(kind, &letter.data, now, now, rules) {
                Ok(_) => planned.push((letter, None)),
                // The same code about the same field: the same reason, even
                // when its words differ (a window read at another time).
                Err(rejection)
                    if rejection.code() == letter.reason_code
                        && rejection.field().is_none_or(|field| {
                            letter.reason.starts_with(&format!("`{field}`"))
                        }) =>
                {
                    outcomes.push(Redriven::Unchanged {
                        id: letter.id,
                        reason_code: letter.reason_code,
                    });
                }
                Err(rejection) => planned.push((letter, Some(rejection))),
            }
        }
        if planned.is_empty() {
            continue;
        }
        let mut invocation = script.prepare_invoke();
        invocation
            .key(stream)
            .key(kind.stream())
            .arg(DATA_FIELD)
            .arg(planned.len());
        for (letter, rejection) in &planned {
            invocation.arg(&letter.id);
            match rejection {
                None => invocation.arg("back").arg(&letter.data),
                Some(rejection) => invocation
                    .arg("replace")
                    .arg(rejection.code())
                    .arg(rejection.to_string()),
            };
        }
        let results: Vec<Option<String>> = invocation.invoke_async(conn).await?;
        for ((letter, rejection), result) in planned.into_iter().zip(results) {
            outcomes.push(match (result, rejection) {
                (None, _) => Redriven::Gone { id: letter.id },
                (Some(entry_id), None) => Redriven::Back {
                    id: letter.id,
                    entry_id,
                },
                (Some(new_id), Some(rejection)) => Redriven::Replaced {
                    id: letter.id,
                    new_id,
                    reason_code: rejection.code().to_owned(),
                    reason: rejection.to_string(),
                },
            });
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_event_is_kept_whole() {
        let kept = KeptBody::new(b"{\"a\":1}", 4096);
        assert_eq!(kept.data, b"{\"a\":1}");
        assert!(!kept.truncated);
        assert_eq!(kept.size, 7);
    }

    #[test]
    fn a_long_event_keeps_a_prefix_cut_on_a_character() {
        let text = format!("{{\"a\":\"{}\"}}", "é".repeat(3000));
        let kept = KeptBody::new(text.as_bytes(), 4096);
        assert!(kept.truncated);
        assert!(kept.data.len() <= 4096 && kept.data.len() >= 4094);
        assert!(std::str::from_utf8(&kept.data).is_ok());
        assert_eq!(kept.size, text.len());
        assert_eq!(
            kept.sha1,
            sha1_smol::Sha1::from(text.as_bytes()).digest().to_string()
        );
        let binary = vec![0xffu8; 5000];
        assert_eq!(KeptBody::new(&binary, 4096).data.len(), 4096);
    }
}
