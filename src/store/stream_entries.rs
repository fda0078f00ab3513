//! Reading stream entries out of raw replies. Entries whose content was
//! deleted from the stream come back as nil; they are kept (with no fields)
//! so the worker can acknowledge and report them instead of failing the batch.

use redis::Value;

/// One entry as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    /// `None` when the entry was deleted from the stream before it was read.
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The entry's fields as a JSON object, kept in a dead letter when the
    /// entry has no `data` field.
    pub fn fields_as_json(&self) -> Vec<u8> {
        let object: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .flatten()
            .map(|(field, value)| {
                (
                    field.clone(),
                    String::from_utf8_lossy(value).into_owned().into(),
                )
            })
            .collect();
        serde_json::Value::Object(object).to_string().into_bytes()
    }
}

/// Entries of an XREADGROUP reply for a single stream (nil on timeout).
pub fn from_read_reply(reply: Value) -> redis::RedisResult<Vec<StreamEntry>> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut entries = Vec::new();
            for stream in streams {
                let Value::Array(mut pair) = stream else {
                    return Err(unexpected("stream in XREADGROUP reply"));
                };
                if pair.len() != 2 {
                    return Err(unexpected("stream in XREADGROUP reply"));
                }
                entries.extend(from_entry_list(pair.swap_remove(1))?);
            }
            Ok(entries)
        }
        // RESP3 answers with a map of stream name to entries.
        Value::Map(streams) => {
            let mut entries = Vec::new();
            for (_, list) in streams {
                entries.extend(from_entry_list(list)?);
            }
            Ok(entries)
        }
        _ => Err(unexpected("XREADGROUP reply")),
    }
}

/// The cursor, claimed entries and deleted ids of an XAUTOCLAIM reply.
pub fn from_autoclaim_reply(
    reply: Value,
) -> redis::RedisResult<(String, Vec<StreamEntry>, Vec<String>)> {
    let Value::Array(parts) = reply else {
        return Err(unexpected("XAUTOCLAIM reply"));
    };
    let mut parts = parts.into_iter();
    let cursor = parts
        .next()
        .map(text)
        .transpose()?
        .ok_or_else(|| unexpected("XAUTOCLAIM cursor"))?;
    let claimed = parts
        .next()
        .map(from_entry_list)
        .transpose()?
        .unwrap_or_default();
    let deleted = match parts.next() {
        Some(Value::Array(ids)) => ids.into_iter().map(text).collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok((cursor, claimed, deleted))
}

fn from_entry_list(list: Value) -> redis::RedisResult<Vec<StreamEntry>> {
    let Value::Array(items) = list else {
        return Err(unexpected("entry list"));
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                let id = pair
                    .next()
                    .map(text)
                    .transpose()?
                    .ok_or_else(|| unexpected("entry id"))?;
                let fields = match pair.next() {
                    Some(Value::Array(flat)) => Some(field_pairs(flat)?),
                    Some(Value::Map(map)) => Some(
                        map.into_iter()
                            .map(|(k, v)| Ok((text(k)?, bytes(v)?)))
                            .collect::<redis::RedisResult<_>>()?,
                    ),
                    _ => None,
                };
                entries.push(StreamEntry { id, fields });
            }
            // XAUTOCLAIM before Redis 7 returned nil for deleted entries.
            Value::Nil => {}
            _ => return Err(unexpected("entry")),
        }
    }
    Ok(entries)
}

fn field_pairs(flat: Vec<Value>) -> redis::RedisResult<Vec<(String, Vec<u8>)>> {
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut values = flat.into_iter();
    while let Some(name) = values.next() {
        let value = values
            .next()
            .ok_or_else(|| unexpected("field without value"))?;
        pairs.push((text(name)?, bytes(value)?));
    }
    Ok(pairs)
}

fn text(value: Value) -> redis::RedisResult<String> {
    Ok(String::from_utf8_lossy(&bytes(value)?).into_owned())
}

fn bytes(value: Value) -> redis::RedisResult<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        _ => Err(unexpected("string")),
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected shape",
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn reads_entries_and_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("stream:predictions"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("data"), bulk("{}")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = from_read_reply(reply).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].field("data"), Some(&b"{}"[..]));
        assert_eq!(entries[1].fields, None);
        assert!(from_read_reply(Value::Nil).expect("timeout").is_empty());
    }

    #[test]
    fn reads_autoclaim() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("5-1"),
                Value::Array(vec![bulk("x"), bulk("y")]),
            ])]),
            Value::Array(vec![bulk("4-0")]),
        ]);
        let (cursor, claimed, deleted) = from_autoclaim_reply(reply).expect("parses");
        assert_eq!(cursor, "0-0");
        assert_eq!(claimed[0].field("data"), None);
        assert_eq!(claimed[0].fields_as_json(), br#"{"x":"y"}"#.to_vec());
        assert_eq!(deleted, vec!["4-0".to_owned()]);
    }

    #[test]
    fn odd_shapes_are_errors_not_panics() {
        assert!(from_read_reply(Value::Int(3)).is_err());
        assert!(from_autoclaim_reply(Value::Array(vec![])).is_err());
        assert!(from_read_reply(Value::Array(vec![Value::Array(vec![bulk("s")])])).is_err());
    }
}
