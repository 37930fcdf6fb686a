//! Lenient decoding of the values in an invocation envelope (docs/host-protocol.md §3).
//!
//! The host JSON-encodes strings a second time (`hello` arrives as `"\"hello\""`), sends numbers and
//! booleans as strings, arrays as strings holding JSON text, and timestamps with or without an
//! offset. Every rule here also accepts the plain form, so a host that stops doing any of this
//! keeps working.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::domain::time::Timestamp;

/// Unwraps JSON carried inside strings, up to two levels: `"\"hello\""` → `"hello"`,
/// `"[1,2]"` → `[1,2]`, `"{\"a\":1}"` → `{"a":1}`. Anything else comes back unchanged (plain text
/// stays a string; `"123"` stays the string `"123"` so keys like `007` survive).
pub fn unwrap(value: &Value) -> Value {
    unwrapped(value).into_owned()
}

/// [`unwrap`] without copying what needs no unwrapping (the usual case: the host's objects arrive
/// as objects).
pub(crate) fn unwrapped(value: &Value) -> Cow<'_, Value> {
    let mut current = Cow::Borrowed(value);
    for _ in 0..2 {
        let Value::String(text) = current.as_ref() else { break };
        if !looks_like_json(text) {
            break;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(parsed) => current = Cow::Owned(parsed),
            Err(_) => break,
        }
    }
    current
}

/// Whether [`unwrapped`] tries `text` as JSON: it starts, after white space, like a string, an
/// array or an object.
fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with(['"', '[', '{'])
}

/// A scalar as text: strings unwrapped, numbers and booleans printed; `None` for null, arrays and objects.
pub fn text(value: &Value) -> Option<String> {
    match unwrapped(value).as_ref() {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An object, whether it came as an object or as a string holding one.
pub fn object(value: &Value) -> Option<Map<String, Value>> {
    object_ref(value).map(Cow::into_owned)
}

/// [`object`], borrowed when it came as an object.
pub(crate) fn object_ref(value: &Value) -> Option<Cow<'_, Map<String, Value>>> {
    match unwrapped(value) {
        Cow::Borrowed(Value::Object(map)) => Some(Cow::Borrowed(map)),
        Cow::Owned(Value::Object(map)) => Some(Cow::Owned(map)),
        _ => None,
    }
}

/// An object taken by value, whether it came as an object or as a string holding one.
pub(crate) fn into_object(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        other => object(&other),
    }
}

/// An array, whether it came as an array or as a string holding JSON array text.
pub fn array(value: &Value) -> Option<Vec<Value>> {
    match unwrap(value) {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// The value of `name` in `map`, matching the name case-insensitively (Newtonsoft matches that way).
pub fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// A host timestamp: RFC 3339 with `Z` or an offset, or ISO 8601 with no offset (taken as UTC),
/// with or without fractional seconds, possibly JSON-encoded twice. `None` for anything else, and
/// for the year-1 "never" the host sends on a first run.
pub fn timestamp(value: &Value) -> Option<Timestamp> {
    Timestamp::parse_iso8601(&text(value)?)
}

/// A JSON value borrowed from the text it was read from, for the HTTP trigger's decoder
/// (`payload::http_call`): a [`Value`] would build a `BTreeMap` per object and copy every string.
/// An object keeps its members as sent, repeated names included; [`member`] and
/// [`in_map_order`] pick from them what a `Map` of them would hold, so every rule here gives what
/// its [`Value`] counterpart gives. Reading one checks the text as strictly as reading a [`Value`].
#[derive(Debug, Clone)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<Member<'a>>),
}

/// An object's member: its name and value.
pub(crate) type Member<'a> = (Cow<'a, str>, Json<'a>);

impl<'a> Json<'a> {
    /// `text` read as JSON (as [`unwrapped`] reads it), owning its strings.
    fn parse(text: &str) -> Option<Json<'static>> {
        serde_json::from_str::<Json<'_>>(text).ok().map(Json::into_owned)
    }

    fn into_owned(self) -> Json<'static> {
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(n),
            Json::Str(s) => Json::Str(Cow::Owned(s.into_owned())),
            Json::Array(items) => Json::Array(items.into_iter().map(Json::into_owned).collect()),
            Json::Object(members) => Json::Object(
                members.into_iter().map(|(name, value)| (Cow::Owned(name.into_owned()), value.into_owned())).collect(),
            ),
        }
    }

    /// The same value as a [`Value`].
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::Str(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(members) => {
                Value::Object(members.iter().map(|(name, value)| (name.to_string(), value.to_value())).collect())
            }
        }
    }

    /// [`unwrapped`].
    pub(crate) fn unwrapped(&self) -> Cow<'_, Json<'a>> {
        let mut current = Cow::Borrowed(self);
        for _ in 0..2 {
            let Json::Str(text) = current.as_ref() else { break };
            if !looks_like_json(text) {
                break;
            }
            match Json::parse(text) {
                Some(parsed) => current = Cow::Owned(parsed),
                None => break,
            }
        }
        current
    }

    /// [`text`], borrowed where it can be.
    pub(crate) fn text(&self) -> Option<Cow<'_, str>> {
        match self.unwrapped() {
            Cow::Borrowed(Json::Str(s)) => Some(Cow::Borrowed(s)),
            Cow::Owned(Json::Str(s)) => Some(Cow::Owned(s.into_owned())),
            other => match other.as_ref() {
                Json::Number(n) => Some(Cow::Owned(n.to_string())),
                Json::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                _ => None,
            },
        }
    }

    /// [`into_object`]: the members of an object, whether it came as an object or as a string
    /// holding one.
    pub(crate) fn into_object(self) -> Option<Vec<Member<'a>>> {
        match self {
            Json::Object(members) => Some(members),
            other => other.object().map(Cow::into_owned),
        }
    }

    /// [`object_ref`]: the members of an object, whether it came as an object or as a string
    /// holding one.
    pub(crate) fn object(&self) -> Option<Cow<'_, [Member<'a>]>> {
        match self.unwrapped() {
            Cow::Borrowed(Json::Object(members)) => Some(Cow::Borrowed(members.as_slice())),
            Cow::Owned(Json::Object(members)) => Some(Cow::Owned(members)),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// Reads a [`Json`] as `Value`'s own visitor reads a [`Value`].
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(deserializer)
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some((Name(name), value)) = map.next_entry()? {
            members.push((name, value));
        }
        Ok(Json::Object(members))
    }
}

/// An object member's name, borrowed from the text when it has no escapes.
pub(crate) struct Name<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

pub(crate) use crate::domain::json::Skip;

/// Whether member `candidate`, met after `current` (the one chosen so far, if any), is the one
/// [`field`] finds for `name` in a `Map` of the members: an exact name first, else the first name
/// equal to `name` but for ASCII case in the map's sorted order; of a name given twice, the last.
pub(crate) fn prefer(name: &str, candidate: &str, current: Option<&str>) -> bool {
    if !candidate.eq_ignore_ascii_case(name) {
        return false;
    }
    match current {
        None => true,
        Some(_) if candidate == name => true,
        Some(current) if current == name => false,
        Some(current) => candidate <= current,
    }
}

/// [`field`] over the members of a [`Json`] object.
pub(crate) fn member<'m, 'a>(members: &'m [Member<'a>], name: &str) -> Option<&'m Json<'a>> {
    let mut found: Option<&'m Member<'a>> = None;
    for m in members {
        if prefer(name, &m.0, found.map(|(n, _)| n.as_ref())) {
            found = Some(m);
        }
    }
    found.map(|(_, value)| value)
}

/// [`member`], taken out of `members`.
pub(crate) fn take_member<'a>(mut members: Vec<Member<'a>>, name: &str) -> Option<Json<'a>> {
    let mut found: Option<usize> = None;
    for (i, m) in members.iter().enumerate() {
        if prefer(name, &m.0, found.map(|f| members[f].0.as_ref())) {
            found = Some(i);
        }
    }
    found.map(|i| members.swap_remove(i).1)
}

/// `items` as a `Map` of them iterates them: sorted by name, of a name given twice the last.
pub(crate) fn in_map_order<T>(mut items: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    if items.windows(2).all(|pair| name(&pair[0]) < name(&pair[1])) {
        return items;
    }
    // A stable sort: of equal names, the last given stays last.
    items.sort_by(|a, b| name(a).cmp(name(b)));
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        match kept.last_mut() {
            Some(last) if name(last) == name(&item) => *last = item,
            _ => kept.push(item),
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn unwraps_double_encoded_strings_and_json_text() {
        assert_eq!(unwrap(&json!("\"hello\"")), json!("hello"));
        assert_eq!(unwrap(&json!("[\"a\",\"b\"]")), json!(["a", "b"]));
        assert_eq!(unwrap(&json!("\"[1,2]\"")), json!([1, 2]));
        assert_eq!(unwrap(&json!("{\"a\":1}")), json!({"a": 1}));
        assert_eq!(unwrap(&json!("plain text")), json!("plain text"));
        assert_eq!(unwrap(&json!("007")), json!("007"));
        assert_eq!(unwrap(&json!("[not json")), json!("[not json"));
        assert_eq!(text(&json!("123")).as_deref(), Some("123"));
        assert_eq!(text(&json!(123)).as_deref(), Some("123"));
        assert_eq!(text(&json!("\"GET\"")).as_deref(), Some("GET"));
    }

    #[test]
    fn timestamps_with_and_without_offsets() {
        let utc = Timestamp::from_millis(1_729_851_600_000);
        assert_eq!(timestamp(&json!("2024-10-25T10:20:00Z")), Some(utc));
        assert_eq!(timestamp(&json!("2024-10-25T10:20:00")), Some(utc));
        assert_eq!(timestamp(&json!("\"2024-10-25T10:20:00\"")), Some(utc));
        assert_eq!(timestamp(&json!("2024-10-25T12:20:00+02:00")), Some(utc));
        assert_eq!(
            timestamp(&json!("2024-10-25T10:20:00.1234567+00:00")).map(Timestamp::as_millis),
            Some(utc.as_millis() + 123)
        );
        assert_eq!(timestamp(&json!("2024-10-25T10:20:00.5")).map(Timestamp::as_millis), Some(utc.as_millis() + 500));
        assert_eq!(timestamp(&json!("0001-01-01T00:00:00+00:00")), None, "the year-1 sentinel is no time");
        assert!(timestamp(&json!("9999-12-31T23:59:59.9999999")).is_some_and(|t| t > utc));
        assert_eq!(timestamp(&json!("not a date")), None);
    }

    /// A JSON value, its strings often JSON text themselves (once or twice), or text that only
    /// looks like it.
    fn json_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            any::<String>(),
            "[ \"\\[\\]{}:,a-c0-9]{0,10}",
            Just(" [1, \"a\"]".to_string()),
            Just(r#""\"x\"""#.to_string()),
            Just("[1e400]".to_string()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-cA-C]{0,2}", inner.clone()), 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
                inner.prop_map(|v| Value::String(v.to_string())),
            ]
        })
    }

    /// `members` as object text, in the order given (repeated names included).
    fn object_text(members: &[(String, Value)]) -> String {
        let members: Vec<String> = members.iter().map(|(n, v)| format!("{}:{v}", Value::String(n.clone()))).collect();
        format!("{{{}}}", members.join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// The rules over a [`Json`] give what the same rules over a [`Value`] give.
        #[test]
        fn json_rules_are_the_value_rules(value in json_value()) {
            let text = value.to_string();
            let json: Json<'_> = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(json.to_value(), value.clone());
            prop_assert_eq!(json.unwrapped().to_value(), unwrap(&value));
            prop_assert_eq!(json.text().map(Cow::into_owned), super::text(&value));
            prop_assert_eq!(json.object().map(|m| Json::Object(m.into_owned()).to_value()), object(&value).map(Value::Object));
            prop_assert_eq!(json.clone().into_object().map(|m| Json::Object(m).to_value()), into_object(value).map(Value::Object));
        }

        /// [`member`], [`take_member`] and [`in_map_order`] pick from members as sent what a `Map` of them holds.
        #[test]
        fn members_are_picked_as_a_map_picks(
            members in prop::collection::vec(
                (prop::sample::select(vec!["a", "A", "b", "B", "ab", "aB", "Ab"]).prop_map(str::to_string), any::<u8>().prop_map(|n| json!(n))),
                0..8,
            ),
            name in prop::sample::select(vec!["a", "A", "b", "ab", "AB", "c"]),
        ) {
            let text = object_text(&members);
            let map: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let Json::Object(sent) = serde_json::from_str::<Json<'_>>(&text).unwrap() else { panic!("an object") };
            prop_assert_eq!(member(&sent, name).map(Json::to_value), field(&map, name).cloned());
            prop_assert_eq!(take_member(sent.clone(), name).map(|v| v.to_value()), field(&map, name).cloned());
            let ordered: Vec<(String, Value)> =
                in_map_order(sent, |m| &*m.0).into_iter().map(|(n, v)| (n.into_owned(), v.to_value())).collect();
            prop_assert_eq!(ordered, map.into_iter().collect::<Vec<_>>());
        }
    }
}
