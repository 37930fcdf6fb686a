//! Payload mode: the JSON invocation envelope `POST /{FunctionName}` (docs/host-protocol.md §2.2, §4).
//!
//! Request: `{"Data": {<binding>: …}, "Metadata": {…}}`, keys matched case-insensitively, every
//! value decoded leniently. For an HTTP trigger, `Data.<trigger>` holds `Url`, `Method`, `Query`,
//! `Headers` (values are arrays), `Params` and `Body` (absent when empty; base64 for
//! `application/octet-stream` and `multipart/*`).
//!
//! Response: always `Content-Type: application/json`, `{"Outputs": {…}, "Logs": […],
//! "ReturnValue": null}`. An HTTP answer travels in the `res` output as an object with a string
//! `statusCode`, string headers and a string `body`, so the host neither re-indents nor
//! base64-decodes it, and the envelope itself stays `200` (a non-2xx envelope fails the invocation
//! and drops Outputs and Logs).
//!
//! An HTTP invocation, the hot path, is read by [`http_call`] straight from the text into an
//! [`HttpCall`] and answered by [`http_envelope_text`] straight into text; the other triggers go
//! through [`Invocation`], a [`Value`] per binding.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use super::lenient::{self, Json, Member, Name, Skip, field};
use super::{HttpCall, HttpReply, RequestHeaders, parse_query};

/// A decoded invocation envelope.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `Data`: one entry per input binding.
    pub data: Map<String, Value>,
    /// `Metadata`: the trigger's binding data.
    pub metadata: Map<String, Value>,
}

/// Why an envelope could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or not an object.
    #[error("the invocation envelope is not a JSON object: {0}")]
    NotJson(String),
    /// The trigger binding is missing from `Data`.
    #[error("the invocation envelope has no `Data.{0}` (the trigger binding)")]
    MissingTrigger(String),
    /// The trigger value has the wrong shape.
    #[error("`Data.{binding}` is malformed: {problem}")]
    Malformed {
        /// The binding.
        binding: String,
        /// What is wrong.
        problem: String,
    },
}

impl Invocation {
    /// Parses an envelope body.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let Value::Object(mut root) = value else {
            return Err(EnvelopeError::NotJson("the top level is not an object".into()));
        };
        // The exact name first, then any casing (`lenient::field`'s rule, which `http_call` follows too).
        let mut part = |name: &str| {
            let found = root.remove(name).or_else(|| {
                let other = root.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()?;
                root.remove(&other)
            });
            found.and_then(lenient::into_object).unwrap_or_default()
        };
        Ok(Self { data: part("Data"), metadata: part("Metadata") })
    }

    /// The value of input binding `binding` (case-insensitive).
    pub fn binding(&self, binding: &str) -> Option<&Value> {
        field(&self.data, binding)
    }

    /// A metadata value (case-insensitive), leniently unwrapped.
    pub fn metadata(&self, name: &str) -> Option<Value> {
        field(&self.metadata, name).map(lenient::unwrap)
    }
}

/// Reads the HTTP trigger `trigger` of an envelope as an [`HttpCall`]. `route_base` is the
/// function's route without its `{key?}` (e.g. `cache-aside`), used to find the key in `Url` when
/// `Params` lacks it.
///
/// Decoded straight from `body`, keeping only the members the call is made of, borrowed where
/// they need no unescaping: building `Data` as a [`Value`] (`BTreeMap`s, copied strings) and
/// walking it was about a tenth of the CPU of a payload-mode hit. `Metadata` (a second copy of the
/// request, and of every field of a JSON body) is checked to be JSON and skipped; the rest of
/// `Data` is checked as strictly as a [`Value`] checks it, then dropped. The rules are those of
/// [`lenient`] over a [`Value`], so every envelope gives the call, or the error, it gave when
/// `Data` was read as one.
pub fn http_call(body: &[u8], trigger: &str, route_base: &str) -> Result<HttpCall, EnvelopeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let data = EnvelopeSeed { trigger }
        .deserialize(&mut deserializer)
        .and_then(|data| deserializer.end().map(|()| data))
        .map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let found = match data {
        Some(Data::Members(found)) => found,
        // `Data` as a string holding the object.
        Some(Data::Text(text)) => Json::Str(text)
            .into_object()
            .and_then(|members| lenient::take_member(members, trigger))
            .map(Trigger::from_json),
        Some(Data::Other) | None => None,
    };
    let req = found.ok_or_else(|| EnvelopeError::MissingTrigger(trigger.to_string()))?.into_req().ok_or_else(|| {
        EnvelopeError::Malformed {
            binding: trigger.to_string(),
            problem: "expected an object with Url, Method, Headers, Query, Params and Body".into(),
        }
    })?;
    call_from(req, trigger, route_base)
}

// The slots of `Req::FIELDS`.
const URL: usize = 0;
const METHOD: usize = 1;
const QUERY: usize = 2;
const HEADERS: usize = 3;
const PARAMS: usize = 4;
const BODY: usize = 5;

/// The members of `Data.<trigger>` that make an [`HttpCall`], each the one [`lenient::field`]
/// finds (with its name, to compare with a later one).
#[derive(Default)]
struct Req<'a> {
    fields: [Option<Member<'a>>; 6],
}

impl<'a> Req<'a> {
    const FIELDS: [&'static str; 6] = ["Url", "Method", "Query", "Headers", "Params", "Body"];

    /// The slot a member called `name` goes to, if it is read and is the one found so far.
    fn slot(&self, name: &str) -> Option<usize> {
        let i = Self::FIELDS.iter().position(|field| field.eq_ignore_ascii_case(name))?;
        lenient::prefer(Self::FIELDS[i], name, self.fields[i].as_ref().map(|(found, _)| found.as_ref())).then_some(i)
    }

    fn from_members(members: Vec<Member<'a>>) -> Self {
        let mut req = Self::default();
        for (name, value) in members {
            if let Some(i) = req.slot(&name) {
                req.fields[i] = Some((name, value));
            }
        }
        req
    }

    fn get(&self, slot: usize) -> Option<&Json<'a>> {
        self.fields[slot].as_ref().map(|(_, value)| value)
    }

    fn take(&mut self, slot: usize) -> Option<Json<'a>> {
        self.fields[slot].take().map(|(_, value)| value)
    }
}

/// What `Data.<trigger>` held.
enum Trigger<'a> {
    /// Boxed: a [`Req`] is some 300 bytes, moved from visitor to visitor.
    Object(Box<Req<'a>>),
    Text(Cow<'a, str>),
    Other,
}

impl<'a> Trigger<'a> {
    fn from_json(value: Json<'a>) -> Self {
        match value {
            Json::Object(members) => Trigger::Object(Box::new(Req::from_members(members))),
            Json::Str(text) => Trigger::Text(text),
            _ => Trigger::Other,
        }
    }

    /// The request, whether it came as an object or as a string holding one.
    fn into_req(self) -> Option<Req<'a>> {
        match self {
            Trigger::Object(req) => Some(*req),
            Trigger::Text(text) => Json::Str(text).into_object().map(Req::from_members),
            Trigger::Other => None,
        }
    }
}

/// What `Data` held: an object (and in it, the trigger's value if there is one), a string (which
/// may hold the object), or anything else.
enum Data<'a> {
    Members(Option<Trigger<'a>>),
    Text(Cow<'a, str>),
    Other,
}

/// The envelope: `Data` (any casing, the last one given) read, everything else skipped unread.
#[derive(Clone, Copy)]
struct EnvelopeSeed<'t> {
    trigger: &'t str,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Option<Data<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Option<Data<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an invocation envelope object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // `Data` by the rule of `lenient::field`: the exact name first, then any casing.
        let mut data = None;
        let mut chosen: Option<std::borrow::Cow<'de, str>> = None;
        while let Some(Name(name)) = map.next_key()? {
            if lenient::prefer("Data", &name, chosen.as_deref()) {
                data = Some(map.next_value_seed(DataSeed { trigger: self.trigger })?);
                chosen = Some(name);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(data)
    }
}

/// `Data`: of its members, only the trigger's is kept.
#[derive(Clone, Copy)]
struct DataSeed<'t> {
    trigger: &'t str,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Data<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Visitor methods for the values a visitor has no use for: read (and so checked like any other),
/// then `$other`.
macro_rules! other_values {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok($other)
        }
    };
}

/// Visitor methods for a string, kept as `$text(…)`.
macro_rules! text_values {
    ($text:path) => {
        fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok($text(Cow::Borrowed(s)))
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok($text(Cow::Owned(s.to_owned())))
        }
        fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
            Ok($text(Cow::Owned(s)))
        }
    };
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Data<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    other_values!(Data::Other);
    text_values!(Data::Text);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: Option<(Cow<'de, str>, Trigger<'de>)> = None;
        while let Some(Name(name)) = map.next_key()? {
            if lenient::prefer(self.trigger, &name, found.as_ref().map(|(n, _)| n.as_ref())) {
                found = Some((name, map.next_value()?));
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(Data::Members(found.map(|(_, trigger)| trigger)))
    }
}

impl<'de> serde::Deserialize<'de> for Trigger<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TriggerVisitor)
    }
}

/// The trigger's value: of an object, only the members of [`Req`] are kept.
struct TriggerVisitor;

impl<'de> Visitor<'de> for TriggerVisitor {
    type Value = Trigger<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    other_values!(Trigger::Other);
    text_values!(Trigger::Text);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut req = Box::<Req<'de>>::default();
        while let Some(Name(name)) = map.next_key()? {
            match req.slot(&name) {
                Some(i) => req.fields[i] = Some((name, map.next_value()?)),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Trigger::Object(req))
    }
}

/// The [`HttpCall`] that the members of `req` make.
fn call_from(mut req: Req<'_>, trigger: &str, route_base: &str) -> Result<HttpCall, EnvelopeError> {
    let method = req.get(METHOD).and_then(Json::text).map(|m| m.to_ascii_uppercase()).ok_or_else(|| {
        EnvelopeError::Malformed { binding: trigger.to_string(), problem: "`Method` is missing".into() }
    })?;
    let url = req.get(URL).and_then(Json::text).unwrap_or_default();
    let (path, url_query) = split_url(&url);

    let headers = req.get(HEADERS).and_then(Json::object).map(|h| header_pairs(&h)).unwrap_or_default();
    let from_url = parse_query(url_query);
    let query = match req.get(QUERY).and_then(Json::object) {
        Some(members) => {
            let mut query: Vec<(String, String)> = lenient::in_map_order(members.iter().collect(), |m| &*m.0)
                .into_iter()
                .filter_map(|(name, value)| plain_or_joined(value).map(|v| (name.to_string(), v)))
                .collect();
            // The host joins the values of a parameter given several times with commas
            // (`?key=a&key=b` arrives as `a,b`); the `Url` still has them apart, as sent.
            let repeated = |name: &str| from_url.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count() > 1;
            if query.iter().any(|(name, _)| repeated(name)) {
                query.retain(|(name, _)| !repeated(name));
                query.extend(from_url.iter().filter(|(name, _)| repeated(name)).cloned());
            }
            query
        }
        None => from_url,
    };
    let route_key = req
        .get(PARAMS)
        .and_then(Json::object)
        .and_then(|params| lenient::member(&params, "key").and_then(plain_text).map(Cow::into_owned))
        // ASP.NET decodes route values except `%2F`, which it leaves escaped.
        .map(|k| if k.contains("%2F") || k.contains("%2f") { k.replace("%2F", "/").replace("%2f", "/") } else { k })
        .filter(|k| !k.is_empty());
    // Without the route value, the key is read from the `Url` only when that is unambiguous:
    // the host writes its decoded path back escaping some characters but leaving `%XX`
    // sequences as they are, so `a%41` there may be the key `a%41` or an escaped `aA`. A
    // path that names a key this way (or ends in `/` after the route) names one the call
    // cannot use.
    let (route_key, path_key_unusable) = match route_key {
        Some(key) => (Some(key), false),
        None => match key_in_url(path, route_base) {
            None => (None, false),
            Some(raw) if !raw.is_empty() && !raw.contains('%') => (Some(raw.to_string()), false),
            Some(_) => (None, true),
        },
    };

    let mut call = HttpCall {
        method: method.into(),
        route_key,
        path_key_unusable,
        query,
        headers: RequestHeaders::Listed(headers),
        body: Bytes::new(),
    };
    call.body = match req.take(BODY) {
        None | Some(Json::Null) => Bytes::new(),
        Some(Json::Str(text)) => {
            let binary =
                call.content_type().is_some_and(|ct| ct == "application/octet-stream" || ct.starts_with("multipart/"));
            if binary {
                base64::engine::general_purpose::STANDARD.decode(text.trim()).map(Bytes::from).map_err(|e| {
                    EnvelopeError::Malformed {
                        binding: trigger.to_string(),
                        problem: format!("`Body` of an octet-stream request is not base64: {e}"),
                    }
                })?
            } else {
                Bytes::from(text.into_owned())
            }
        }
        // Not what the host sends, but a body given as JSON is taken as its JSON text.
        Some(other) => Bytes::from(other.to_value().to_string()),
    };
    Ok(call)
}

/// Path and query of a URL like `http://host:7071/api/cache-aside/k?x=1`.
fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path_and_query = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    (path, query.split('#').next().unwrap_or(""))
}

/// What a request path holds after `/{prefix}/{route_base}/`, trailing `/` removed (empty when the
/// path ends there), or `None` when it does not go on past the route.
fn key_in_url<'a>(path: &'a str, route_base: &str) -> Option<&'a str> {
    let lower = path.to_ascii_lowercase();
    let marker = format!("/{}/", route_base.to_ascii_lowercase());
    let at = lower.find(&marker)?;
    Some(path[at + marker.len()..].trim_end_matches('/'))
}

/// A route or query value. `req` reaches the handler as one object, so the strings inside it are
/// plain text: taken as they are, never unwrapped as JSON (a key may well look like JSON: `"x"`,
/// `[1,2]`, `007`).
fn plain_text<'j>(value: &'j Json<'_>) -> Option<Cow<'j, str>> {
    match value {
        Json::Str(text) => Some(Cow::Borrowed(text)),
        Json::Number(n) => Some(Cow::Owned(n.to_string())),
        Json::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// A query value: plain text, or several values comma-joined.
fn plain_or_joined(value: &Json<'_>) -> Option<String> {
    match value {
        Json::Array(items) => Some(joined(items.iter().filter_map(plain_text))),
        other => plain_text(other).map(Cow::into_owned),
    }
}

/// A header value: text (leniently), or several values comma-joined.
fn scalar_or_joined(value: &Json<'_>) -> Option<String> {
    match value.unwrapped().as_ref() {
        Json::Array(items) => Some(joined(items.iter().filter_map(Json::text))),
        other => other.text().map(Cow::into_owned),
    }
}

fn joined<'s>(parts: impl Iterator<Item = Cow<'s, str>>) -> String {
    let mut out = String::new();
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&part);
    }
    out
}

fn header_pairs(members: &[Member<'_>]) -> Vec<(String, String)> {
    lenient::in_map_order(members.iter().collect(), |m| &*m.0)
        .into_iter()
        .filter_map(|(name, value)| scalar_or_joined(value).map(|v| (name.to_ascii_lowercase(), v)))
        .collect()
}

/// The response envelope `{"Outputs", "Logs", "ReturnValue": null}`.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<'a, O> {
    outputs: O,
    logs: &'a [String],
    return_value: (),
}

/// `envelope` as JSON text (maps of strings and values always serialise; the fallback only keeps
/// this total).
fn to_text<O: serde::Serialize>(envelope: &Envelope<'_, O>) -> String {
    serde_json::to_string(envelope).unwrap_or_else(|e| {
        json!({"Outputs": {}, "Logs": [format!("the answer could not be written as JSON: {e}")], "ReturnValue": null})
            .to_string()
    })
}

/// The response envelope `{"Outputs", "Logs", "ReturnValue": null}`, written straight out as JSON
/// text (building it as a [`Value`] first would copy the outputs once more).
pub(crate) fn envelope_text(outputs: &Map<String, Value>, logs: &[String]) -> String {
    to_text(&Envelope { outputs, logs, return_value: () })
}

/// The response envelope of an HTTP invocation: `reply` as output `binding`, an object with a
/// string `statusCode`, the headers (`Content-Type: application/json` unless the reply sets
/// another) and the body as a string. Written straight out, without building `Map`s: the text is
/// the one a `Map` of the same outputs gives, members in its (sorted) order.
pub(crate) fn http_envelope_text(binding: &str, mut reply: HttpReply, logs: &[String]) -> String {
    let reply_headers = std::mem::take(&mut reply.headers);
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(reply_headers.len() + 1);
    headers.push(("Content-Type", "application/json; charset=utf-8"));
    headers.extend(reply_headers.iter().map(|(name, value)| (*name, value.as_ref())));
    let status = reply.status;
    let body = reply.into_body_text();
    let res = HttpOutput { body: &body, headers: Headers(lenient::in_map_order(headers, |h| h.0)), status };
    to_text(&Envelope { outputs: OneOutput(binding, res), logs, return_value: () })
}

/// The `res` output of an HTTP answer, its members in a `Map`'s order.
#[derive(serde::Serialize)]
struct HttpOutput<'a> {
    body: &'a str,
    headers: Headers<'a>,
    #[serde(rename = "statusCode", serialize_with = "as_text")]
    status: u16,
}

fn as_text<S: serde::Serializer>(status: &u16, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(status)
}

/// Headers already in a `Map`'s order, written as an object.
struct Headers<'a>(Vec<(&'a str, &'a str)>);

impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

/// `Outputs` with one output.
struct OneOutput<'a>(&'a str, HttpOutput<'a>);

impl serde::Serialize for OneOutput<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// The decoder [`http_call`] replaced, which reads `Data` as a [`Value`] first: the oracle its
/// tests compare it with.
#[cfg(test)]
pub(crate) mod oracle {
    use super::*;

    /// The `Data` of an envelope (its name in any casing), everything else skipped.
    struct DataOnly(Option<Value>);

    impl<'de> serde::Deserialize<'de> for DataOnly {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = DataOnly;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an invocation envelope object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<DataOnly, A::Error> {
                    let mut data = None;
                    let mut chosen: Option<String> = None;
                    while let Some(name) = map.next_key::<String>()? {
                        if lenient::prefer("Data", &name, chosen.as_deref()) {
                            data = Some(map.next_value::<Value>()?);
                            chosen = Some(name);
                        } else {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                    Ok(DataOnly(data))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }

    impl Invocation {
        /// Parses the envelope of an HTTP-triggered invocation: only `Data`, which is all an HTTP
        /// function reads; `Metadata` (a second copy of the request, and of every field of a JSON
        /// body) is checked to be JSON and skipped, not built.
        pub fn parse_data_only(body: &[u8]) -> Result<Self, EnvelopeError> {
            let DataOnly(data) = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
            Ok(Self { data: data.and_then(lenient::into_object).unwrap_or_default(), metadata: Map::new() })
        }

        /// Reads the HTTP trigger `trigger` as an [`HttpCall`]. `route_base` is the function's route
        /// without its `{key?}` (e.g. `cache-aside`), used to find the key in `Url` when `Params` lacks it.
        pub fn http_call(&self, trigger: &str, route_base: &str) -> Result<HttpCall, EnvelopeError> {
            let raw = self.binding(trigger).ok_or_else(|| EnvelopeError::MissingTrigger(trigger.to_string()))?;
            let req = lenient::object_ref(raw).ok_or_else(|| EnvelopeError::Malformed {
                binding: trigger.to_string(),
                problem: "expected an object with Url, Method, Headers, Query, Params and Body".into(),
            })?;
            let method =
                field(&req, "Method").and_then(lenient::text).map(|m| m.to_ascii_uppercase()).ok_or_else(|| {
                    EnvelopeError::Malformed { binding: trigger.to_string(), problem: "`Method` is missing".into() }
                })?;
            let url = field(&req, "Url").and_then(lenient::text).unwrap_or_default();
            let (path, url_query) = split_url(&url);

            let headers =
                field(&req, "Headers").and_then(lenient::object_ref).map(|h| header_pairs(&h)).unwrap_or_default();
            let from_url = parse_query(url_query);
            let query = match field(&req, "Query").and_then(lenient::object_ref) {
                Some(map) => {
                    let mut query: Vec<(String, String)> =
                        map.iter().filter_map(|(k, v)| plain_or_joined(v).map(|v| (k.clone(), v))).collect();
                    // The host joins the values of a parameter given several times with commas
                    // (`?key=a&key=b` arrives as `a,b`); the `Url` still has them apart, as sent.
                    let repeated =
                        |name: &str| from_url.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count() > 1;
                    if query.iter().any(|(name, _)| repeated(name)) {
                        query.retain(|(name, _)| !repeated(name));
                        query.extend(from_url.iter().filter(|(name, _)| repeated(name)).cloned());
                    }
                    query
                }
                None => from_url,
            };
            let route_key = field(&req, "Params")
                .and_then(lenient::object_ref)
                .and_then(|params| field(&params, "key").and_then(plain_text))
                // ASP.NET decodes route values except `%2F`, which it leaves escaped.
                .map(|k| k.replace("%2F", "/").replace("%2f", "/"))
                .filter(|k| !k.is_empty());
            // Without the route value, the key is read from the `Url` only when that is unambiguous:
            // the host writes its decoded path back escaping some characters but leaving `%XX`
            // sequences as they are, so `a%41` there may be the key `a%41` or an escaped `aA`. A
            // path that names a key this way (or ends in `/` after the route) names one the call
            // cannot use.
            let (route_key, path_key_unusable) = match (route_key, key_in_url(path, route_base)) {
                (Some(key), _) => (Some(key), false),
                (None, None) => (None, false),
                (None, Some(raw)) if !raw.is_empty() && !raw.contains('%') => (Some(raw.to_string()), false),
                (None, Some(_)) => (None, true),
            };

            let mut call = HttpCall {
                method: method.into(),
                route_key,
                path_key_unusable,
                query,
                headers: RequestHeaders::Listed(headers),
                body: Bytes::new(),
            };
            call.body = match field(&req, "Body") {
                None | Some(Value::Null) => Bytes::new(),
                Some(Value::String(text)) => {
                    let binary = call
                        .content_type()
                        .is_some_and(|ct| ct == "application/octet-stream" || ct.starts_with("multipart/"));
                    if binary {
                        base64::engine::general_purpose::STANDARD.decode(text.trim()).map(Bytes::from).map_err(|e| {
                            EnvelopeError::Malformed {
                                binding: trigger.to_string(),
                                problem: format!("`Body` of an octet-stream request is not base64: {e}"),
                            }
                        })?
                    } else {
                        Bytes::from(text.clone())
                    }
                }
                // Not what the host sends, but a body given as JSON is taken as its JSON text.
                Some(other) => Bytes::from(other.to_string()),
            };
            Ok(call)
        }
    }

    /// A route or query value. `req` reaches the handler as one object, so the strings inside it are
    /// plain text: taken as they are, never unwrapped as JSON (a key may well look like JSON: `"x"`,
    /// `[1,2]`, `007`).
    fn plain_text(value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A query value: plain text, or several values comma-joined.
    fn plain_or_joined(value: &Value) -> Option<String> {
        match value {
            Value::Array(items) => Some(items.iter().filter_map(plain_text).collect::<Vec<_>>().join(",")),
            other => plain_text(other),
        }
    }

    fn scalar_or_joined(value: &Value) -> Option<String> {
        match lenient::unwrapped(value).as_ref() {
            Value::Array(items) => Some(items.iter().filter_map(lenient::text).collect::<Vec<_>>().join(",")),
            other => lenient::text(other),
        }
    }

    fn header_pairs(map: &Map<String, Value>) -> Vec<(String, String)> {
        map.iter().filter_map(|(name, value)| scalar_or_joined(value).map(|v| (name.to_ascii_lowercase(), v))).collect()
    }

    /// The `res` output object for an HTTP answer.
    pub(crate) fn http_output(mut reply: HttpReply) -> Value {
        let mut headers = Map::new();
        headers.insert("Content-Type".into(), Value::String("application/json; charset=utf-8".into()));
        for (name, value) in std::mem::take(&mut reply.headers) {
            headers.insert(name.to_string(), Value::String(value.into_owned()));
        }
        // Built by moving each part in (`json!` would copy the headers and the body once more).
        let mut res = Map::new();
        res.insert("statusCode".into(), Value::String(reply.status.to_string()));
        res.insert("headers".into(), Value::Object(headers));
        res.insert("body".into(), Value::String(reply.into_body_text()));
        Value::Object(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a decoded call holds, to compare two.
    type Parts = (String, Option<String>, bool, Vec<(String, String)>, RequestHeaders, Bytes);

    fn parts(decoded: Result<HttpCall, EnvelopeError>) -> Result<Parts, EnvelopeError> {
        decoded.map(|c| (c.method.into_owned(), c.route_key, c.path_key_unusable, c.query, c.headers, c.body))
    }

    /// What the oracle makes of `body`.
    fn by_value(body: &[u8], trigger: &str, route_base: &str) -> Result<HttpCall, EnvelopeError> {
        Invocation::parse_data_only(body).and_then(|invocation| invocation.http_call(trigger, route_base))
    }

    /// [`http_call`] on `body`, checked to give what the oracle gives.
    fn decode(body: &[u8], trigger: &str, route_base: &str) -> Result<HttpCall, EnvelopeError> {
        let decoded = http_call(body, trigger, route_base);
        let expected = parts(by_value(body, trigger, route_base));
        assert_eq!(parts(decoded.clone()), expected, "{}", String::from_utf8_lossy(body));
        decoded
    }

    #[test]
    fn decodes_a_host_shaped_http_trigger() {
        let body = json!({
            "Data": {"req": {
                "Url": "http://localhost:7071/api/cache-aside/a%2Fb?x=1",
                "Method": "\"GET\"",
                "Query": {"x": "1"},
                "Headers": {"Content-Type": ["application/json"], "X-Multi": ["a", "b"]},
                "Params": {},
                "Identities": []
            }},
            "Metadata": {"sys": {"MethodName": "CacheAside"}, "x": "\"1\""}
        });
        let inv = Invocation::parse(body.to_string().as_bytes()).unwrap();
        let call = decode(body.to_string().as_bytes(), "req", "cache-aside").unwrap();
        assert_eq!(call.method, "GET");
        // `Params` lacks the key and the `Url`'s `%2F` cannot be read for sure: no key is taken.
        assert_eq!((call.route_key.as_deref(), call.path_key_unusable), (None, true));
        assert_eq!(call.header("x-multi").as_deref(), Some("a,b"));
        assert_eq!(call.query("X"), Some("1"));
        assert!(call.body.is_empty());
        assert_eq!(inv.metadata("x"), Some(json!("1")));
    }

    #[test]
    fn without_params_only_an_unescaped_url_key_is_taken() {
        let call = |url: &str| {
            let body = json!({"Data": {"req": {"Url": url, "Method": "GET", "Params": {}}}});
            decode(body.to_string().as_bytes(), "req", "cache-aside").unwrap()
        };
        let plain = call("http://h/api/cache-aside/user:1");
        assert_eq!((plain.route_key.as_deref(), plain.path_key_unusable), (Some("user:1"), false));
        for ambiguous in
            ["http://h/api/cache-aside/a%41", "http://h/api/cache-aside/a%20b", "http://h/api/cache-aside/"]
        {
            let c = call(ambiguous);
            assert_eq!((c.route_key.as_deref(), c.path_key_unusable), (None, true), "{ambiguous}");
        }
        let bare = call("http://h/api/cache-aside");
        assert_eq!((bare.route_key.as_deref(), bare.path_key_unusable), (None, false));
    }

    #[test]
    fn base64_bodies_and_string_encoded_requests() {
        let req = json!({"Method": "PUT", "Url": "http://h/api/write-through/k", "Headers": "{\"Content-Type\":[\"application/octet-stream\"]}", "Params": {"key": "k"}, "Body": "eyJhIjoxfQ=="});
        let body = json!({"data": {"REQ": req.to_string()}});
        let call = decode(body.to_string().as_bytes(), "req", "write-through").unwrap();
        assert_eq!(&call.body[..], b"{\"a\":1}");
        assert_eq!(call.route_key.as_deref(), Some("k"));
        let bad = json!({"Data": {"req": {"Method": "PUT", "Headers": {"content-type": "multipart/x"}, "Body": "!"}}});
        assert!(matches!(decode(bad.to_string().as_bytes(), "req", "x"), Err(EnvelopeError::Malformed { .. })));
    }

    #[test]
    fn an_envelope_part_is_found_by_its_exact_name_before_another_casing() {
        // Sorted, `DATA` comes before `Data`: the exact name must still win, as for bindings.
        let body = br#"{"DATA": {"t": 1}, "Data": {"t": 2}, "METADATA": {"m": 1}, "Metadata": {"m": 2}}"#;
        let inv = Invocation::parse(body).unwrap();
        assert_eq!((inv.binding("t"), inv.metadata("m")), (Some(&json!(2)), Some(json!(2))));
        let other_casing = Invocation::parse(br#"{"dAtA": {"t": 3}}"#).unwrap();
        assert_eq!(other_casing.binding("t"), Some(&json!(3)));
        // HTTP functions read the same `Data`, whichever comes first.
        for envelope in [
            r#"{"Data": {"req": {"Method": "GET", "Url": "http://h/api/cache-aside/right"}}, "DATA": {"req": {"Method": "GET", "Url": "http://h/api/cache-aside/wrong"}}}"#,
            r#"{"DATA": {"req": {"Method": "GET", "Url": "http://h/api/cache-aside/wrong"}}, "Data": {"req": {"Method": "GET", "Url": "http://h/api/cache-aside/right"}}}"#,
        ] {
            let call = http_call(envelope.as_bytes(), "req", "cache-aside").unwrap();
            assert_eq!(call.route_key.as_deref(), Some("right"), "{envelope}");
            let oracle = by_value(envelope.as_bytes(), "req", "cache-aside").unwrap();
            assert_eq!(oracle.route_key.as_deref(), Some("right"), "the oracle: {envelope}");
        }
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        assert!(matches!(Invocation::parse(b"{nope"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(Invocation::parse(b"[1]"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(decode(b"{nope", "req", "x"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(decode(b"[1]", "req", "x"), Err(EnvelopeError::NotJson(_))));
        assert_eq!(decode(b"{\"Data\":{}}", "req", "x").unwrap_err(), EnvelopeError::MissingTrigger("req".into()));
        assert!(matches!(
            decode(b"{\"Data\":{\"req\":{\"Url\":\"/\"}}}", "req", "x"),
            Err(EnvelopeError::Malformed { .. })
        ));
        assert!(matches!(decode(b"{\"Data\":{\"req\":[1]}}", "req", "x"), Err(EnvelopeError::Malformed { .. })));
    }

    #[test]
    fn an_http_invocation_is_read_from_data_alone() {
        let body = json!({"metadata": {"Headers": {"x": "1"}, "huge": "x".repeat(1000)}, "DATA": {"req": {"Method": "GET", "Url": "http://h/api/cache-aside/k", "Params": {"key": "k"}}}});
        assert_eq!(decode(body.to_string().as_bytes(), "req", "cache-aside").unwrap().route_key.as_deref(), Some("k"));
        assert!(matches!(decode(b"{\"Data\":{},\"Metadata\":{nope", "req", "x"), Err(EnvelopeError::NotJson(_))));
        let as_text = json!({"Data": json!({"req": {"Method": "GET"}}).to_string()});
        assert_eq!(decode(as_text.to_string().as_bytes(), "req", "x").unwrap().method, "GET");
    }

    /// Outside `Data` only the syntax is checked (as before); inside it, what a `Value` refuses is
    /// refused, even where the decoder keeps nothing.
    #[test]
    fn data_is_checked_like_a_value() {
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        for bad in ["1e400", "\"\\ud800\"", deep.as_str()] {
            let inside = format!(r#"{{"Data":{{"req":{{"Method":"GET","Identities":{bad}}},"other":{bad}}}}}"#);
            assert!(matches!(decode(inside.as_bytes(), "req", "x"), Err(EnvelopeError::NotJson(_))), "{inside}");
            let outside = format!(r#"{{"Metadata":{bad},"Data":{{"req":{{"Method":"GET"}}}}}}"#);
            assert_eq!(decode(outside.as_bytes(), "req", "x").unwrap().method, "GET", "{outside}");
        }
    }

    /// Of members whose names differ only in case, the one a `Map` lookup finds: the exact name,
    /// else the first in sorted order; of a name given twice, the last. Members are read in a
    /// `Map`'s order too.
    #[test]
    fn repeated_and_recased_names_pick_what_a_map_picks() {
        let body = br#"{"Data":{"REQ":{"Method":"PUT"},"req":{"METHOD":"POST","method":"GET","Method":"PATCH","Method":"DELETE",
            "headers":{"b":["2"],"A":["1"],"b":["3"]},"HEADERS":{"x":["no"]},
            "Query":{"y":"1","X":"2","y":"3"},"Params":{"KEY":"a","Key":"b","key":"c","key":"d"}},"rEq":{}}}"#;
        let call = decode(body, "req", "x").unwrap();
        assert_eq!(call.method, "DELETE");
        assert_eq!(call.headers, RequestHeaders::Listed(vec![("x".to_string(), "no".to_string())]));
        assert_eq!(call.query, [("X".to_string(), "2".to_string()), ("y".to_string(), "3".to_string())]);
        assert_eq!(call.route_key.as_deref(), Some("d"));
        let body = br#"{"data":{"req":{"Method":"PUT"}},"DATA":{"Req":{"Method":"GET"},"rEQ":{"Method":"POST"}}}"#;
        assert_eq!(decode(body, "req", "x").unwrap().method, "GET");
    }

    /// The envelope of an HTTP answer: the text `envelope_text` gives for the oracle's `res`.
    fn http_envelope_checked(reply: HttpReply, logs: &[String]) -> String {
        let mut outputs = Map::new();
        outputs.insert("res".into(), oracle::http_output(reply.clone()));
        let text = http_envelope_text("res", reply, logs);
        assert_eq!(text, envelope_text(&outputs, logs));
        text
    }

    #[test]
    fn the_envelope_text_is_the_envelope() {
        let mut outputs = Map::new();
        outputs.insert("res".into(), oracle::http_output(HttpReply::json(200, json!({"a": "é\"\n"}))));
        let logs = vec!["line \"one\"".to_string()];
        let text = envelope_text(&outputs, &logs);
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"Outputs": outputs, "Logs": logs, "ReturnValue": null})
        );
        assert_eq!(http_envelope_checked(HttpReply::json(200, json!({"a": "é\"\n"})), &logs), text);
    }

    #[test]
    fn output_shape() {
        let reply = HttpReply::json(404, json!({"a": 1})).with_header("x-cache", "miss");
        let out: Value = serde_json::from_str(&http_envelope_checked(reply, &[])).unwrap();
        let res = &out["Outputs"]["res"];
        assert_eq!(res["statusCode"], "404");
        assert_eq!(res["body"], "{\"a\":1}");
        assert_eq!(res["headers"]["x-cache"], "miss");
        assert_eq!(res["headers"]["Content-Type"], "application/json; charset=utf-8");
        let text = HttpReply::text(200, "text/plain; version=0.0.4", "a 1\n".into())
            .with_header("X-Cache", "hit")
            .with_header("ETag", "\"1\"")
            .with_header("X-Cache", "miss");
        let out: Value = serde_json::from_str(&http_envelope_checked(text, &["l".into()])).unwrap();
        assert_eq!(
            out["Outputs"]["res"]["headers"],
            json!({"Content-Type": "text/plain; version=0.0.4", "ETag": "\"1\"", "X-Cache": "miss"})
        );
    }

    /// `text` (a JSON value's text) as is, or as a string holding it, or a string holding that.
    fn wrapped(text: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        (text, prop::sample::select(vec![0, 0, 0, 1, 2])).prop_map(|(mut text, levels)| {
            for _ in 0..levels {
                text = Value::String(text).to_string();
            }
            text
        })
    }

    /// `name` as sent, or in another casing.
    fn recased(name: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(name.to_string()),
            1 => prop::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
                name.chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect()
            }),
        ]
    }

    /// An object's text from members in the order given, repeated names included.
    fn object_text(members: Vec<(String, String)>) -> String {
        let members: Vec<String> =
            members.into_iter().map(|(name, value)| format!("{}:{value}", Value::String(name))).collect();
        format!("{{{}}}", members.join(","))
    }

    /// An object's text from up to `n` members, its names drawn from `names`.
    fn object_of(
        names: Vec<&'static str>,
        value: impl Strategy<Value = String> + Clone,
        n: usize,
    ) -> impl Strategy<Value = String> {
        prop::collection::vec((prop::sample::select(names).prop_flat_map(recased), value), 0..n).prop_map(object_text)
    }

    fn text_of(v: Value) -> String {
        v.to_string()
    }

    /// Any JSON value's text, a few levels deep, now and then one a `Value` refuses.
    fn any_json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            2 => Just("null".to_string()),
            2 => any::<bool>().prop_map(|b| b.to_string()),
            2 => any::<i64>().prop_map(|n| n.to_string()),
            2 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| text_of(json!(f))),
            2 => Just("1.5e3".to_string()),
            2 => any::<String>().prop_map(|s| text_of(Value::String(s))),
            2 => "[a-z\"\\[\\]{}:,0-9 ]{0,12}".prop_map(|s| text_of(Value::String(s))),
            1 => prop::sample::select(vec!["1e400", "\"\\ud800\"", "-0", "\"\\u00e9\\n\""]).prop_map(str::to_string),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec(("[a-zA-Z]{0,3}", inner), 0..4).prop_map(object_text),
            ]
        })
    }

    fn scalar_text() -> impl Strategy<Value = String> {
        let words = vec![
            "GET",
            "get",
            "Put",
            "a",
            "",
            " ",
            "\"GET\"",
            "007",
            "true",
            "[\"a\",\"b\"]",
            "{\"a\":1}",
            "[1",
            "a,b",
            "application/json",
            "application/octet-stream",
            "Multipart/Form-Data; boundary=x",
            "text/plain",
            "%2F",
            "a%2fb%2F",
            "x:1",
            "ü",
            "\u{1F642}",
        ];
        prop_oneof![
            6 => wrapped(prop::sample::select(words).prop_map(|w| text_of(json!(w)))),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just("2.50".to_string()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => Just("null".to_string()),
            1 => any_json(),
        ]
    }

    /// A header or query value: mostly arrays of scalars, as the host sends them.
    fn list_or_scalar() -> impl Strategy<Value = String> + Clone {
        prop_oneof![
            3 => wrapped(prop::collection::vec(scalar_text(), 0..3).prop_map(|items| format!("[{}]", items.join(",")))),
            2 => scalar_text(),
        ]
        .boxed()
    }

    fn url_text() -> impl Strategy<Value = String> {
        let scheme = prop::sample::select(vec!["http://localhost:7071", "https://h", "", "h", "http://"]);
        let route = prop::sample::select(vec!["/api/cache-aside", "/API/Cache-Aside", "/api/other", "", "/"]);
        let key = prop::sample::select(vec!["", "/", "/k", "/user:1/", "/a%41", "/a%2Fb", "/a b", "/ü", "//"]);
        let query = prop::collection::vec(
            (
                prop::sample::select(vec!["key", "KEY", "x", "y"]),
                prop::sample::select(vec!["", "=a", "=b+c", "=%FF", "=%2F", "=1"]),
            ),
            0..4,
        )
        .prop_map(|pairs| {
            if pairs.is_empty() {
                String::new()
            } else {
                format!("?{}", pairs.into_iter().map(|(n, v)| format!("{n}{v}")).collect::<Vec<_>>().join("&"))
            }
        });
        let fragment = prop::sample::select(vec!["", "#f", "#a?b"]);
        wrapped(
            (scheme, route, key, query, fragment)
                .prop_map(|(s, r, k, q, f)| text_of(json!(format!("{s}{r}{k}{q}{f}")))),
        )
    }

    fn body_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            "[ -~]{0,20}".prop_map(|s| text_of(json!(s))),
            prop::collection::vec(any::<u8>(), 0..24)
                .prop_map(|b| text_of(json!(format!(" {} ", base64::engine::general_purpose::STANDARD.encode(b))))),
            Just(text_of(json!("{\"a\":1}"))),
            any_json(),
        ]
    }

    /// An envelope's text: the host's shape, varied in every way the decoder reads leniently.
    fn envelope() -> impl Strategy<Value = String> {
        let field =
            |name: &'static str, value: BoxedStrategy<String>| prop::option::weighted(0.85, (recased(name), value));
        let fields = (
            field("Url", url_text().boxed()),
            field("Method", prop_oneof![4 => wrapped(prop::sample::select(vec!["GET", "put", "Delete"]).prop_map(|m| text_of(json!(m)))), 1 => scalar_text()].boxed()),
            field("Query", wrapped(object_of(vec!["key", "x", "y", "flag"], list_or_scalar(), 4)).boxed()),
            field(
                "Headers",
                wrapped(object_of(vec!["Content-Type", "Host", "X-Multi", "x-multi"], list_or_scalar(), 4)).boxed(),
            ),
            field("Params", wrapped(object_of(vec!["key", "other"], scalar_text().boxed(), 3)).boxed()),
            field("Body", body_text().boxed()),
            field("Identities", any_json().boxed()),
            prop::collection::vec((prop::sample::select(vec!["Method", "Params", "Body", "Headers", "Zz"]).prop_flat_map(recased), any_json()), 0..2),
        );
        let req = fields
            .prop_flat_map(|(url, method, query, headers, params, body, identities, extra)| {
                let mut members: Vec<(String, String)> =
                    [url, method, query, headers, params, body, identities].into_iter().flatten().collect();
                members.extend(extra);
                Just(members).prop_shuffle()
            })
            .prop_map(object_text);
        let req = prop_oneof![8 => wrapped(req), 1 => any_json()];
        let data = (recased("req"), req, prop::option::weighted(0.15, (recased("req"), any_json())), any_json())
            .prop_map(|(name, req, another, other)| {
                let mut members = vec![(name, req), ("other".to_string(), other)];
                members.extend(another);
                object_text(members)
            });
        let data = prop_oneof![8 => wrapped(data), 1 => any_json()];
        (prop::option::weighted(0.95, (recased("Data"), data)), any_json(), any::<bool>()).prop_map(
            |(data, metadata, metadata_first)| {
                let metadata = ("Metadata".to_string(), metadata);
                let members = match (data, metadata_first) {
                    (Some(data), true) => vec![metadata, data],
                    (Some(data), false) => vec![data, metadata],
                    (None, _) => vec![metadata],
                };
                object_text(members)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the envelope, the call (or the error) is the one reading `Data` as a `Value` gives.
        #[test]
        fn the_decoder_agrees_with_reading_data_as_a_value(body in envelope(), route in prop::sample::select(vec!["cache-aside", "other"])) {
            prop_assert_eq!(parts(http_call(body.as_bytes(), "req", route)), parts(by_value(body.as_bytes(), "req", route)), "{}", body);
        }

        /// Bytes that are barely JSON, or not: the same error, or the same call.
        #[test]
        fn the_decoder_agrees_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64), prefix in prop::sample::select(vec!["", "{\"Data\":{\"req\":", "{\"data\":"])) {
            let body = [prefix.as_bytes(), &bytes].concat();
            prop_assert_eq!(parts(http_call(&body, "req", "x")), parts(by_value(&body, "req", "x")));
        }

        /// Any answer: the envelope text is the one built through `Map`s.
        #[test]
        fn the_answer_is_written_as_before(
            status in 100u16..600,
            headers in prop::collection::vec((prop::sample::select(vec!["Content-Type", "x-cache", "X-Cache", "ETag", "Retry-After", "a"]), any::<String>()), 0..5),
            body in any::<String>(),
            as_json in any::<bool>(),
            logs in prop::collection::vec(any::<String>(), 0..3),
        ) {
            let mut reply =
                if as_json { HttpReply::json(status, json!({"a": body})) } else { HttpReply::text(status, "text/plain", body) };
            for (name, value) in headers {
                reply = reply.with_header(name, value);
            }
            let mut outputs = Map::new();
            outputs.insert("res".into(), oracle::http_output(reply.clone()));
            prop_assert_eq!(http_envelope_text("res", reply, &logs), envelope_text(&outputs, &logs));
        }
    }
}
