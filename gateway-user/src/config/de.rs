//! A serde `Deserializer` over the positioned YAML tree. It does what `serde_yaml` cannot:
//! every error carries the field path and the position it came from, unknown fields are all
//! reported (with a did-you-mean) rather than only the first, fields Sluice does not
//! implement yet are rejected by name, and deserialization continues past both.
use std::{cell::RefCell, fmt};

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::yaml::{Mark, Node, Value};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the object root, e.g. `spec.servers[1].port.protocol`.
    pub path: String,
    pub mark: Mark,
    pub message: String,
}

/// Fields of a struct that are part of the API but not implemented yet: `(field, note)`,
/// looked up by the struct's serde name.
pub type UnsupportedFields = fn(&str) -> &'static [(&'static str, &'static str)];

/// Deserializes `node` as a `T`, returning the value (unless a fatal type error stopped it)
/// and every field error found on the way.
pub fn from_node<'a, T: de::Deserialize<'a>>(
    node: &'a Node,
    unsupported: UnsupportedFields,
) -> (Option<T>, Vec<FieldError>) {
    let ctx = Context {
        errors: RefCell::new(Vec::new()),
        unsupported,
    };
    let result = T::deserialize(NodeDeserializer {
        node,
        path: String::new(),
        ctx: &ctx,
    });
    let mut errors = ctx.errors.into_inner();
    match result {
        Ok(value) => (Some(value), errors),
        Err(e) => {
            errors.push(FieldError {
                path: e.path,
                mark: e.mark.unwrap_or(node.mark),
                message: e.message,
            });
            (None, errors)
        }
    }
}

struct Context {
    errors: RefCell<Vec<FieldError>>,
    unsupported: UnsupportedFields,
}

/// A fatal error; the path and mark are filled in by the innermost node that saw it.
#[derive(Debug)]
pub struct Error {
    path: String,
    mark: Option<Mark>,
    message: String,
    located: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            path: String::new(),
            mark: None,
            message: msg.to_string(),
            located: false,
        }
    }
}

impl Error {
    fn at(mut self, path: &str, mark: Mark) -> Self {
        if !self.located {
            self.path = path.to_owned();
            self.mark = Some(mark);
            self.located = true;
        }
        self
    }
}

/// The closest of `candidates` to `field`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    field: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = field.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                c,
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
            )
        })
        .filter(|&(c, d)| d <= (c.len().max(field.len()) / 3).max(1))
        .min_by_key(|&(_, d)| d)
        .map(|(c, _)| c)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

struct NodeDeserializer<'a, 'c> {
    node: &'a Node,
    path: String,
    ctx: &'c Context,
}

impl<'a, 'c> NodeDeserializer<'a, 'c> {
    fn child(&self, node: &'a Node, path: String) -> Self {
        NodeDeserializer {
            node,
            path,
            ctx: self.ctx,
        }
    }

    fn fail(&self, message: String) -> Error {
        <Error as de::Error>::custom(message).at(&self.path, self.node.mark)
    }

    fn describe(&self) -> String {
        match &self.node.value {
            Value::Scalar { .. } if self.node.is_null() => "null".into(),
            Value::Scalar { text, .. } => format!("{text:?}"),
            Value::Sequence(_) => "a list".into(),
            Value::Mapping(_) => "a map".into(),
        }
    }

    fn scalar(&self, expected: &str) -> Result<&'a str, Error> {
        match &self.node.value {
            Value::Scalar { text, .. } if !self.node.is_null() => Ok(text),
            _ => Err(self.fail(format!("expected {expected}, found {}", self.describe()))),
        }
    }

    fn parse<T: std::str::FromStr>(&self, expected: &str) -> Result<T, Error> {
        let text = self.scalar(expected)?;
        text.parse()
            .map_err(|_| self.fail(format!("expected {expected}, found {text:?}")))
    }

    fn located<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| e.at(&self.path, self.node.mark))
    }
}

macro_rules! deserialize_number {
    ($($method:ident => $visit:ident($ty:ty), $what:literal;)*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
            let value: $ty = self.parse($what)?;
            let result = visitor.$visit(value);
            self.located(result)
        }
    )*};
}

impl<'a> de::Deserializer<'a> for NodeDeserializer<'a, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.value {
            _ if self.node.is_null() => visitor.visit_unit(),
            Value::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => visitor.visit_bool(true),
                "false" | "False" | "FALSE" => visitor.visit_bool(false),
                t => match (t.parse::<u64>(), t.parse::<i64>(), t.parse::<f64>()) {
                    (Ok(u), _, _) => visitor.visit_u64(u),
                    (_, Ok(i), _) => visitor.visit_i64(i),
                    (_, _, Ok(f)) if t.bytes().any(|b| b.is_ascii_digit()) => visitor.visit_f64(f),
                    _ => visitor.visit_str(t),
                },
            },
            Value::Scalar { text, .. } => visitor.visit_str(text),
            Value::Sequence(_) => return self.deserialize_seq(visitor),
            Value::Mapping(_) => return self.deserialize_map(visitor),
        };
        self.located(result)
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = match self.scalar("true or false")? {
            "true" | "True" | "TRUE" => true,
            "false" | "False" | "FALSE" => false,
            other => return Err(self.fail(format!("expected true or false, found {other:?}"))),
        };
        let result = visitor.visit_bool(value);
        self.located(result)
    }

    deserialize_number! {
        deserialize_i8 => visit_i8(i8), "an integer";
        deserialize_i16 => visit_i16(i16), "an integer";
        deserialize_i32 => visit_i32(i32), "an integer";
        deserialize_i64 => visit_i64(i64), "an integer";
        deserialize_u8 => visit_u8(u8), "a non-negative integer up to 255";
        deserialize_u16 => visit_u16(u16), "a non-negative integer up to 65535";
        deserialize_u32 => visit_u32(u32), "a non-negative integer";
        deserialize_u64 => visit_u64(u64), "a non-negative integer";
        deserialize_f32 => visit_f32(f32), "a number";
        deserialize_f64 => visit_f64(f64), "a number";
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.scalar("a string")?;
        let result = visitor.visit_str(text);
        self.located(result)
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            let result = visitor.visit_none();
            return self.located(result);
        }
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = visitor.visit_unit();
        self.located(result)
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let Value::Sequence(items) = &self.node.value else {
            return Err(self.fail(format!("expected a list, found {}", self.describe())));
        };
        let access = SeqAccess {
            items: items.iter().enumerate(),
            parent: &self,
        };
        let result = visitor.visit_seq(access);
        self.located(result)
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let Value::Mapping(entries) = &self.node.value else {
            return Err(self.fail(format!("expected a map, found {}", self.describe())));
        };
        let access = MapAccess {
            entries: entries.iter().collect::<Vec<_>>().into_iter(),
            value: None,
            parent: &self,
        };
        let result = visitor.visit_map(access);
        self.located(result)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Value::Mapping(entries) = &self.node.value else {
            return Err(self.fail(format!("expected a map, found {}", self.describe())));
        };
        let unsupported = (self.ctx.unsupported)(name);
        let mut known = Vec::new();
        for entry @ (key, _) in entries {
            let key_text = key.as_str().unwrap_or_default();
            let path = join(&self.path, key_text);
            if fields.contains(&key_text) {
                known.push(entry);
            } else if let Some((_, note)) = unsupported.iter().find(|(f, _)| *f == key_text) {
                let note = if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                };
                self.ctx.errors.borrow_mut().push(FieldError {
                    message: format!("`{path}` is not supported yet{note}"),
                    path,
                    mark: key.mark,
                });
            } else {
                let all = fields
                    .iter()
                    .chain(unsupported.iter().map(|(f, _)| f))
                    .copied();
                let hint = match did_you_mean(key_text, all) {
                    Some(candidate) => format!("; did you mean `{candidate}`?"),
                    None => format!("; expected one of: {}", fields.join(", ")),
                };
                self.ctx.errors.borrow_mut().push(FieldError {
                    message: format!("unknown field `{path}`{hint}"),
                    path,
                    mark: key.mark,
                });
            }
        }
        let access = MapAccess {
            entries: known.into_iter(),
            value: None,
            parent: &self,
        };
        let result = visitor.visit_map(access);
        self.located(result)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let text = self.scalar("a string")?;
        if !variants.contains(&text) {
            return Err(self.fail(format!(
                "unknown value {text:?}; expected one of: {}",
                variants.join(", ")
            )));
        }
        let result = visitor.visit_enum(text.into_deserializer());
        self.located(result)
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = visitor.visit_unit();
        self.located(result)
    }
}

struct SeqAccess<'a, 'p, 'c, I> {
    items: I,
    parent: &'p NodeDeserializer<'a, 'c>,
}

impl<'a, I: Iterator<Item = (usize, &'a Node)>> de::SeqAccess<'a> for SeqAccess<'a, '_, '_, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let child = self
            .parent
            .child(node, format!("{}[{i}]", self.parent.path));
        let (path, mark) = (child.path.clone(), node.mark);
        seed.deserialize(child)
            .map(Some)
            .map_err(|e| e.at(&path, mark))
    }
}

struct MapAccess<'a, 'p, 'c, I> {
    entries: I,
    value: Option<(&'a Node, String)>,
    parent: &'p NodeDeserializer<'a, 'c>,
}

impl<'a, I: Iterator<Item = &'a (Node, Node)>> de::MapAccess<'a> for MapAccess<'a, '_, '_, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let key_text = key.as_str().unwrap_or_default();
        let path = join(&self.parent.path, key_text);
        self.value = Some((value, path.clone()));
        seed.deserialize(self.parent.child(key, path.clone()))
            .map(Some)
            .map_err(|e| e.at(&path, key.mark))
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom("value requested before key"));
        };
        let mark = node.mark;
        seed.deserialize(self.parent.child(node, path.clone()))
            .map_err(|e| e.at(&path, mark))
    }
}
