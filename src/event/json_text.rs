//! The producer's JSON as text: insignificant whitespace removed, every
//! token, number and key order kept exactly as written. A record is then
//! always one line (JSON strings cannot hold a raw newline), so no producer
//! bytes can ever turn into a second row of an NDJSON file, and the same
//! event sent indented and compact becomes the same record.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Why a text is not one acceptable JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonProblem {
    /// Not JSON at all (or not UTF-8), with the parser's words.
    Invalid(String),
    /// Valid JSON, but not an object.
    NotAnObject,
    /// An object names the same key twice; which value counts is not defined.
    DuplicateKey(String),
    /// Nested deeper than `MAX_DEPTH` objects and arrays.
    TooDeep,
}

/// Deepest nesting of objects and arrays accepted. Far above what events
/// need, far below what BigQuery's JSON type (500) and the parsers on the
/// way (serde_json stops at 128; a row adds a level, an insertAll request
/// three more) can take.
pub const MAX_DEPTH: usize = 64;

/// Removes JSON whitespace outside strings. Whitespace between two value
/// characters is kept as one space: in valid JSON it never occurs, and
/// joining `1 2` into `12` would turn invalid JSON into a valid one.
pub fn minify(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut pending_space = false;
    for &byte in data {
        if in_string {
            out.push(byte);
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            pending_space = true;
            continue;
        }
        if pending_space
            && out.last().is_some_and(|last| !is_structural(*last))
            && !is_structural(byte)
        {
            out.push(b' ');
        }
        pending_space = false;
        if byte == b'"' {
            in_string = true;
        }
        out.push(byte);
    }
    out
}

fn is_structural(byte: u8) -> bool {
    matches!(byte, b'{' | b'}' | b'[' | b']' | b',' | b':')
}

/// One top-level field: its decoded name and its value as written.
pub type Field<'a> = (Cow<'a, str>, &'a RawValue);

/// Checks that `text` is one JSON object without duplicate keys at any
/// depth, and returns its top-level fields in order.
pub fn object_fields(text: &str) -> Result<Vec<Field<'_>>, JsonProblem> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let found = Cell::new(None);
    let shape = NoDuplicates {
        depth: 0,
        found: &found,
    }
    .deserialize(&mut deserializer)
    .and_then(|shape| deserializer.end().map(|()| shape))
    .map_err(|err| {
        found
            .take()
            .unwrap_or(JsonProblem::Invalid(err.to_string()))
    })?;
    if shape != Shape::Object {
        return Err(JsonProblem::NotAnObject);
    }
    let TopFields(fields) =
        serde_json::from_str(text).map_err(|err| JsonProblem::Invalid(err.to_string()))?;
    Ok(fields)
}

/// The byte range of `part` (a slice of `whole`) within `whole`.
pub fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    Other,
}

/// Walks a whole JSON value, refusing an object that repeats a key and
/// nesting deeper than `MAX_DEPTH`; what it refused is left in `found`.
struct NoDuplicates<'f> {
    depth: usize,
    found: &'f Cell<Option<JsonProblem>>,
}

impl NoDuplicates<'_> {
    fn refuse<E: de::Error>(&self, problem: JsonProblem) -> E {
        let message = format!("{problem:?}");
        self.found.set(Some(problem));
        E::custom(message)
    }

    fn deeper<E: de::Error>(&self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(self.refuse(JsonProblem::TooDeep));
        }
        Ok(NoDuplicates {
            depth: self.depth + 1,
            found: self.found,
        })
    }
}

impl<'de> DeserializeSeed<'de> for NoDuplicates<'_> {
    type Value = Shape;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let inner = self.deeper()?;
        while seq
            .next_element_seed(NoDuplicates {
                depth: inner.depth,
                found: inner.found,
            })?
            .is_some()
        {}
        Ok(Shape::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let inner = self.deeper()?;
        let mut seen = HashSet::new();
        while let Some(Key(key)) = map.next_key()? {
            if !seen.insert(key.clone()) {
                return Err(self.refuse(JsonProblem::DuplicateKey(format!(
                    "the key `{}` appears twice in one object",
                    shorten(&key)
                ))));
            }
            map.next_value_seed(NoDuplicates {
                depth: inner.depth,
                found: inner.found,
            })?;
        }
        Ok(Shape::Object)
    }
}

/// A key, borrowed from the text when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Top-level fields of an object, in order, values as written.
struct TopFields<'a>(Vec<Field<'a>>);

impl<'de> de::Deserialize<'de> for TopFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = TopFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    fields.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(TopFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// At most 64 characters of `text`, for messages.
pub fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(64) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(text: &str) -> String {
        String::from_utf8(minify(text.as_bytes())).expect("utf-8 in, utf-8 out")
    }

    #[test]
    fn removes_whitespace_between_tokens_only() {
        let pretty = "{\n  \"a b\": \"x\\\" y\\n\",\n  \"n\": 1.50e+3 ,\n\t\"o\": { \"k\" : [ 1 , 2 ] }\r\n}";
        assert_eq!(
            min(pretty),
            r#"{"a b":"x\" y\n","n":1.50e+3,"o":{"k":[1,2]}}"#
        );
        assert_eq!(
            min(r#"{"a":"\\"} "#),
            r#"{"a":"\\"}"#,
            "escaped backslash ends"
        );
    }

    #[test]
    fn whitespace_that_separates_values_stays_so_invalid_json_stays_invalid() {
        assert_eq!(min(r#"{"a":1 2}"#), r#"{"a":1 2}"#);
        assert!(object_fields(&min(r#"{"a":1 2}"#)).is_err());
        assert_eq!(min("[true  false]"), "[true false]");
    }

    #[test]
    fn fields_come_in_order_with_their_text() {
        let fields = object_fields(r#"{"b":{"x":1},"a":"t","c":2.50}"#).expect("object");
        let seen: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.get().to_owned()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("b".into(), r#"{"x":1}"#.into()),
                ("a".into(), r#""t""#.into()),
                ("c".into(), "2.50".into())
            ]
        );
    }

    #[test]
    fn shapes_and_duplicates_are_told_apart() {
        assert_eq!(object_fields("[1,2]").err(), Some(JsonProblem::NotAnObject));
        assert_eq!(object_fields("\"x\"").err(), Some(JsonProblem::NotAnObject));
        assert!(matches!(
            object_fields("[1,2"),
            Err(JsonProblem::Invalid(_))
        ));
        assert!(matches!(
            object_fields("{} {}"),
            Err(JsonProblem::Invalid(_))
        ));
        assert!(matches!(
            object_fields(r#"{"a":1,"a":2}"#),
            Err(JsonProblem::DuplicateKey(_))
        ));
        assert!(matches!(
            object_fields(r#"{"o":[{"k":1,"\u006b":2}]}"#),
            Err(JsonProblem::DuplicateKey(m)) if m.contains("`k`")
        ));
        assert!(object_fields(r#"{"a":{"k":1},"b":{"k":1}}"#).is_ok());
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(object_fields(&format!("{{\"a\":{}}}", nested(MAX_DEPTH - 1))).is_ok());
        assert_eq!(
            object_fields(&format!("{{\"a\":{}}}", nested(MAX_DEPTH))).err(),
            Some(JsonProblem::TooDeep)
        );
        assert_eq!(
            object_fields(&format!("{{\"a\":{}}}", nested(200))).err(),
            Some(JsonProblem::TooDeep),
            "deeper than serde_json's own limit: still our reason"
        );
    }

    #[test]
    fn offsets_of_values_are_found() {
        let text = r#"{"a":null}"#;
        let fields = object_fields(text).expect("object");
        assert_eq!(offset_in(text, fields[0].1.get()), Some(5));
    }
}
