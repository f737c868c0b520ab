//! Structured outputs for the scripted model: with `text.format` `json_schema` the answer is a
//! JSON value that fits the schema, with `json_object` an object holding the answer, so the
//! SDKs' `parse()` helpers have something to parse. Deterministic like the rest of the model:
//! every string is the plain answer text, every number the conversation's item count.

use serde_json::{Map, Value, json};

/// How deep a schema is followed; past it (a recursive `$ref`) values are `null`.
const MAX_DEPTH: usize = 16;

/// The JSON shape a request asks the answer to take.
#[derive(Debug, Clone, Copy)]
pub enum Format<'a> {
    /// `json_schema`: the schema (`$defs` / `definitions` are looked up in it).
    Schema(&'a Value),
    /// `json_object`: any object.
    Object,
}

/// The structured format `text.format` asks for, if any.
pub fn format(request: &Map<String, Value>) -> Option<Format<'_>> {
    let format = request.get("text")?.get("format")?;
    match format.get("type")?.as_str()? {
        "json_schema" => Some(Format::Schema(format.get("schema").unwrap_or(&Value::Null))),
        "json_object" => Some(Format::Object),
        _ => None,
    }
}

impl Format<'_> {
    /// The answer as compact JSON text.
    pub fn render(self, text: &str, count: usize) -> String {
        let value = match self {
            Format::Schema(schema) => Filler {
                root: schema,
                text,
                count,
            }
            .fill(schema, 0),
            Format::Object => json!({ "answer": text }),
        };
        value.to_string()
    }
}

struct Filler<'a> {
    root: &'a Value,
    text: &'a str,
    count: usize,
}

impl Filler<'_> {
    fn fill(&self, schema: &Value, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            return self
                .resolve(target)
                .map_or(Value::Null, |found| self.fill(found, depth + 1));
        }
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(first) = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|v| v.first())
        {
            return first.clone();
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(variants) = schema.get(key).and_then(Value::as_array) {
                let variant = variants
                    .iter()
                    .find(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                    .or_else(|| variants.first());
                return variant.map_or(Value::Null, |v| self.fill(v, depth + 1));
            }
        }
        match schema_type(schema) {
            Some("object") => {
                let properties = schema.get("properties").and_then(Value::as_object);
                let fields = properties.into_iter().flatten();
                Value::Object(
                    fields
                        .map(|(name, property)| (name.clone(), self.fill(property, depth + 1)))
                        .collect(),
                )
            }
            Some("array") => {
                let items = schema.get("items").unwrap_or(&Value::Null);
                Value::Array(vec![self.fill(items, depth + 1)])
            }
            Some("string") => Value::from(self.text),
            Some("integer") => Value::from(self.count),
            Some("number") => Value::from(self.count as f64),
            Some("boolean") => Value::Bool(true),
            Some("null") => Value::Null,
            // No type: the plain answer.
            _ => Value::from(self.text),
        }
    }

    /// `#/$defs/Name`, `#/definitions/Name` or `#` in the root schema.
    fn resolve(&self, target: &str) -> Option<&Value> {
        let path = target.strip_prefix('#')?;
        path.split('/')
            .filter(|part| !part.is_empty())
            .try_fold(self.root, |node, part| node.get(part))
    }
}

/// `type`, or the first non-null one of a type list (`["string", "null"]`).
fn schema_type(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(kind) => Some(kind),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .or(Some("null")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: Value) -> Value {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"text": {"format": format}})).unwrap();
        let text = super::format(&request).unwrap().render("hi there", 3);
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_pydantic_style_schema_gets_every_field_in_order() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "kind": {"enum": ["a", "b"]},
                "step": {"$ref": "#/$defs/Step"},
                "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            },
            "$defs": {"Step": {"type": "object", "properties": {"done": {"type": "boolean"}}}},
        });
        let value = render(json!({"type": "json_schema", "name": "x", "schema": schema}));
        assert_eq!(
            value,
            json!({"name": "hi there", "count": 3, "tags": ["hi there"], "kind": "a",
                   "step": {"done": true}, "note": "hi there"})
        );
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "count", "tags", "kind", "step", "note"]);
    }

    #[test]
    fn json_object_wraps_the_answer_and_recursion_stops() {
        assert_eq!(
            render(json!({"type": "json_object"})),
            json!({"answer": "hi there"})
        );
        let recursive = json!({"type": "object", "properties": {"next": {"$ref": "#"}}});
        let value = render(json!({"type": "json_schema", "schema": recursive}));
        assert!(value.to_string().contains("null"));
    }
}
