//! A validating JSON scanner for upstream events: one pass over the bytes that checks the
//! whole text is one JSON value (RFC 8259) and hands back the few top-level members routing
//! needs, building no tree and copying nothing unless a wanted string holds escapes
//! (docs/architecture.md, "Data path").
//!
//! It replaces a serde pass that did the same work through serde's visitor machinery at about
//! ten times the cost per event. A property test holds it to serde_json's verdict on valid and
//! broken JSON alike.

use std::borrow::Cow;

/// Nesting deeper than this is refused (serde_json refuses the same depth).
const MAX_DEPTH: usize = 128;

/// The top-level members of an object that [`object`] reports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Members<'a> {
    /// `type`, when it is a string.
    pub kind: Option<Cow<'a, str>>,
    /// `sequence_number`, when it is a non-negative integer that fits `u64`.
    pub sequence: Option<u64>,
    /// The `id` string of the `response` object.
    pub response_id: Option<Cow<'a, str>>,
    /// A top-level `response_id` string.
    pub flat_response_id: Option<Cow<'a, str>>,
}

/// Why a text is not one JSON object: what was wrong, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    pub what: &'static str,
    pub at: usize,
}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Checks that `text` is exactly one JSON object (whitespace around it allowed) and reads its
/// members. A repeated `type`, `sequence_number`, `response` or `response_id` is an error: an
/// event that says two things is not relayed.
pub fn object(text: &str) -> Result<Members<'_>, NotJson> {
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_space();
    if scanner.peek() != Some(b'{') {
        return Err(scanner.error("not an object"));
    }
    let members = scanner.top_object()?;
    scanner.skip_space();
    if scanner.at != scanner.bytes.len() {
        return Err(scanner.error("trailing characters"));
    }
    Ok(members)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn error(&self, what: &'static str) -> NotJson {
        NotJson { what, at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), NotJson> {
        self.skip_space();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// The top-level object, `{` next: its members checked, the wanted ones kept.
    fn top_object(&mut self) -> Result<Members<'a>, NotJson> {
        let mut members = Members::default();
        let mut seen = [false; 4];
        self.at += 1;
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(members);
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            self.expect(b':', "expected `:`")?;
            self.skip_space();
            let slot = match &*key {
                "type" => 0,
                "sequence_number" => 1,
                "response" => 2,
                "response_id" => 3,
                _ => {
                    self.value(1)?;
                    if self.end_of_member(b'}')? {
                        return Ok(members);
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(self.error("duplicate member"));
            }
            match slot {
                0 => members.kind = self.string_or_skip(1)?,
                1 => members.sequence = self.counter_or_skip(1)?,
                2 => members.response_id = self.id_of_object_or_skip()?,
                _ => members.flat_response_id = self.string_or_skip(1)?,
            }
            if self.end_of_member(b'}')? {
                return Ok(members);
            }
        }
    }

    /// After a member or element: `,` (more follow: false) or `close` (the end: true).
    fn end_of_member(&mut self, close: u8) -> Result<bool, NotJson> {
        self.skip_space();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(false)
            }
            Some(byte) if byte == close => {
                self.at += 1;
                Ok(true)
            }
            _ => Err(self.error("expected `,` or a closing bracket")),
        }
    }

    /// A string value kept, or any other value skipped (`None`).
    fn string_or_skip(&mut self, depth: usize) -> Result<Option<Cow<'a, str>>, NotJson> {
        if self.peek() == Some(b'"') {
            return self.string().map(Some);
        }
        self.value(depth).map(|()| None)
    }

    /// A non-negative integer kept, or any other value skipped (`None`).
    fn counter_or_skip(&mut self, depth: usize) -> Result<Option<u64>, NotJson> {
        let start = self.at;
        self.value(depth)?;
        Ok(self.text[start..self.at].parse().ok())
    }

    /// The first string `id` of an object (`response`), or any other value skipped.
    fn id_of_object_or_skip(&mut self) -> Result<Option<Cow<'a, str>>, NotJson> {
        if self.peek() != Some(b'{') {
            return self.value(1).map(|()| None);
        }
        self.at += 1;
        let mut id = None;
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(None);
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            self.expect(b':', "expected `:`")?;
            self.skip_space();
            if key == "id" && id.is_none() {
                id = self.string_or_skip(2)?;
            } else {
                self.value(2)?;
            }
            if self.end_of_member(b'}')? {
                return Ok(id);
            }
        }
    }

    /// Skips one value of any kind, checking it; `depth` is that of its container.
    fn value(&mut self, depth: usize) -> Result<(), NotJson> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.container(depth + 1, b'}', true),
            Some(b'[') => self.container(depth + 1, b']', false),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// An object (`keyed`) or an array, its opening bracket next.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Result<(), NotJson> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.at += 1;
        self.skip_space();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.skip_space();
            if keyed {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a key"));
                }
                self.string()?;
                self.expect(b':', "expected `:`")?;
                self.skip_space();
            }
            self.value(depth)?;
            if self.end_of_member(close)? {
                return Ok(());
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), NotJson> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), NotJson> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// A string, `"` next: borrowed from the text, decoded into a copy only when it holds
    /// escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, NotJson> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string"));
        }
        self.at += 1;
        let start = self.at;
        let mut escaped = false;
        loop {
            // Plain bytes go by at one comparison each; UTF-8 was checked when the frame was
            // read, so only the ASCII structure matters here.
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            match byte {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0x00..=0x1f => return Err(self.error("control character in a string")),
                _ => self.at += 1,
            }
        }
        let raw = &self.text[start..self.at];
        self.at += 1;
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        // Valid by the scan above; decoding it is serde_json's job.
        serde_json::from_str::<String>(&self.text[start - 1..self.at])
            .map(Cow::Owned)
            .map_err(|_| NotJson {
                what: "invalid escape",
                at: start,
            })
    }

    /// One escape, its backslash next.
    fn escape(&mut self) -> Result<(), NotJson> {
        self.at += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.at += 1;
                Ok(())
            }
            Some(b'u') => {
                let hex = self.bytes.get(self.at + 1..self.at + 5);
                if hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    self.at += 5;
                    Ok(())
                } else {
                    Err(self.error("invalid \\u escape"))
                }
            }
            _ => Err(self.error("invalid escape")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;

    fn serde_accepts_object(text: &str) -> bool {
        text.trim_start().starts_with('{') && serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    #[test]
    fn members_are_read_from_the_top_level_only() {
        let members = object(
            r#"{"item":{"type":"message","id":"x"},"type":"response.created","sequence_number":3,
               "response":{"output":[{"id":"item"}],"id":"resp_1","id":"resp_2"}}"#,
        )
        .unwrap();
        assert_eq!(members.kind.as_deref(), Some("response.created"));
        assert_eq!(members.sequence, Some(3));
        assert_eq!(members.response_id.as_deref(), Some("resp_1"));
        assert_eq!(members.flat_response_id, None);
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let members = object(r#"{"ty\u0070e":"a\u002eb","response_id":"r\"1"}"#).unwrap();
        assert_eq!(members.kind.as_deref(), Some("a.b"));
        assert_eq!(members.flat_response_id.as_deref(), Some("r\"1"));
    }

    #[test]
    fn sequence_numbers_are_non_negative_integers_only() {
        for (text, expected) in [
            (r#"{"sequence_number":0}"#, Some(0)),
            (
                r#"{"sequence_number":18446744073709551615}"#,
                Some(u64::MAX),
            ),
            (r#"{"sequence_number":18446744073709551616}"#, None),
            (r#"{"sequence_number":-1}"#, None),
            (r#"{"sequence_number":1.0}"#, None),
            (r#"{"sequence_number":1e2}"#, None),
            (r#"{"sequence_number":"4"}"#, None),
        ] {
            assert_eq!(object(text).unwrap().sequence, expected, "{text}");
        }
    }

    #[test]
    fn broken_json_is_refused_where_it_breaks() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":{"b"}}"#,
            r#"{} {}"#,
            r#"{"type":"a","type":"b"}"#,
            r#"{"response":{},"response":{}}"#,
        ] {
            assert!(object(text).is_err(), "{text:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(object(&deep).unwrap_err().what, "nested too deeply");
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z_\"\\\\]{0,6}", inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Valid JSON objects, compact or pretty, are accepted with the members serde reads;
        /// any cut or one-byte change of them gets the same verdict from both.
        #[test]
        fn agrees_with_serde(
            value in json(),
            kind in "[a-z.]{1,12}",
            pretty in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            replacement in prop::sample::select(vec![b'"', b'\\', b',', b':', b'{', b'}', b'[', b']', b'1', b'e', b'-', b' ', b'u', 0x01]),
        ) {
            let mut event = serde_json::json!({"type": kind, "sequence_number": 7, "body": value});
            event["response"] = serde_json::json!({"id": "resp_9", "x": value});
            let text = if pretty { serde_json::to_string_pretty(&event) } else { serde_json::to_string(&event) }.unwrap();
            let members = object(&text).unwrap();
            prop_assert_eq!(members.kind.as_deref(), Some(kind.as_str()));
            prop_assert_eq!(members.sequence, Some(7));
            prop_assert_eq!(members.response_id.as_deref(), Some("resp_9"));

            let at = cut.index(text.len());
            let mut end = at;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let truncated = &text[..end];
            prop_assert_eq!(object(truncated).is_ok(), serde_accepts_object(truncated), "{:?}", truncated);
            let mut bytes = text.clone().into_bytes();
            if text.is_char_boundary(at) && text[at..].chars().next().is_some_and(|c| c.is_ascii()) {
                bytes[at] = replacement;
                let changed = String::from_utf8(bytes).unwrap();
                prop_assert_eq!(object(&changed).is_ok(), serde_accepts_object(&changed), "{:?}", changed);
            }
        }
    }
}
