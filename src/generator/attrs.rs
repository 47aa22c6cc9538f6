//! Attribute lookups as Tempo's processors do them: the first attribute with the key, in the
//! order the lists are given, turned into a label value the way Tempo prints values.

use std::borrow::Cow;
use std::fmt::Write;

use crate::model::{any_value, AnyValue, KeyValue};

/// The value of the first attribute named `key` in `lists`, as a label value.
pub(crate) fn find<'a>(key: &str, lists: &[&'a [KeyValue]]) -> Option<Cow<'a, str>> {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .find(|kv| kv.key == key)
        .map(|kv| stringify(kv.value.as_ref()))
}

/// Tempo's rendering of an attribute value: strings as they are, numbers in plain decimal,
/// arrays as `[ab]` and maps as `{k:v}` with nothing between items.
pub(crate) fn stringify(v: Option<&AnyValue>) -> Cow<'_, str> {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
        Some(other) => {
            let mut out = String::new();
            write_value(&mut out, other);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(""),
    }
}

fn write_value(out: &mut String, v: &any_value::Value) {
    match v {
        any_value::Value::StringValue(s) => out.push_str(s),
        any_value::Value::BoolValue(b) => {
            let _ = write!(out, "{b}");
        }
        any_value::Value::IntValue(i) => {
            let _ = write!(out, "{i}");
        }
        any_value::Value::DoubleValue(d) => {
            let _ = write!(out, "{d}");
        }
        any_value::Value::ArrayValue(a) => {
            out.push('[');
            for item in a.values.iter().filter_map(|x| x.value.as_ref()) {
                write_value(out, item);
            }
            out.push(']');
        }
        any_value::Value::KvlistValue(kvs) => {
            out.push('{');
            for kv in &kvs.values {
                out.push_str(&kv.key);
                out.push(':');
                if let Some(x) = kv.value.as_ref().and_then(|x| x.value.as_ref()) {
                    write_value(out, x);
                }
            }
            out.push('}');
        }
        // Bytes have no text form in Tempo either.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ArrayValue;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn values_print_as_tempo_prints_them_and_the_first_list_wins() {
        let res = [kv("k", any_value::Value::IntValue(-3))];
        let span = [
            kv("k", any_value::Value::StringValue("span".into())),
            kv("d", any_value::Value::DoubleValue(0.25)),
            kv("b", any_value::Value::BoolValue(true)),
            kv(
                "a",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(any_value::Value::IntValue(1)),
                        },
                        AnyValue {
                            value: Some(any_value::Value::StringValue("x".into())),
                        },
                    ],
                }),
            ),
        ];
        assert_eq!(find("k", &[&res, &span]).unwrap(), "-3");
        assert_eq!(find("k", &[&span, &res]).unwrap(), "span");
        assert_eq!(find("d", &[&res, &span]).unwrap(), "0.25");
        assert_eq!(find("b", &[&span]).unwrap(), "true");
        assert_eq!(find("a", &[&span]).unwrap(), "[1x]");
        assert!(find("missing", &[&res, &span]).is_none());
    }
}
