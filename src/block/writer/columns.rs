//! Arrow builders for one row group: offsets and struct/list assembly, the generic
//! attribute list of one nesting level, and the dedicated attribute columns.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, Int32Array, ListArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{FieldRef, Fields};
use prost::Message;

use super::legacy;
use crate::block::schema::{list_element, value_type};
use crate::block::wire_rows::Attr;
use crate::block::{BlockError, Dedicated, DedicatedType};
use crate::model::{any_value, KeyValue};

pub(super) fn to_i32(n: usize) -> Result<i32, BlockError> {
    i32::try_from(n)
        .map_err(|_| BlockError::Corrupt(format!("row group too large: {n} list entries")))
}

pub(super) fn offsets(v: Vec<i32>) -> OffsetBuffer<i32> {
    // Built by this module from running lengths: non-negative and non-decreasing.
    OffsetBuffer::new(ScalarBuffer::from(v))
}

/// Assembles a struct from named columns in schema order.
pub(super) fn make_struct(
    fields: &Fields,
    mut cols: Vec<(&str, ArrayRef)>,
    nulls: Option<NullBuffer>,
) -> Result<StructArray, BlockError> {
    let mut arrays = Vec::with_capacity(fields.len());
    for f in fields {
        let pos = cols
            .iter()
            .position(|(n, _)| *n == f.name())
            .ok_or_else(|| BlockError::Schema(format!("writer has no column {}", f.name())))?;
        arrays.push(cols.swap_remove(pos).1);
    }
    if let Some((extra, _)) = cols.first() {
        return Err(BlockError::Schema(format!("schema has no column {extra}")));
    }
    Ok(StructArray::try_new(fields.clone(), arrays, nulls)?)
}

pub(super) fn make_list(
    field: &FieldRef,
    offs: Vec<i32>,
    values: StructArray,
) -> Result<ArrayRef, BlockError> {
    let (elem, _) = list_element(field)?;
    Ok(Arc::new(ListArray::try_new(
        elem.clone(),
        offsets(offs),
        Arc::new(values),
        None,
    )?))
}

pub(super) fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

pub(super) fn arc<A: arrow_array::Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}

/// A generic attribute list column at one nesting level.
pub(super) struct AttrBuilder {
    offsets: Vec<i32>,
    len: usize,
    key: StringBuilder,
    /// Null when the value column that holds the value implies the type.
    ty: Vec<Option<i32>>,
    str: StringBuilder,
    int: Int64Builder,
    dbl: Float64Builder,
    bool: BooleanBuilder,
    bytes: BinaryBuilder,
}

impl AttrBuilder {
    pub(super) fn new() -> Self {
        Self {
            offsets: vec![0],
            len: 0,
            key: StringBuilder::new(),
            ty: Vec::new(),
            str: StringBuilder::new(),
            int: Int64Builder::new(),
            dbl: Float64Builder::new(),
            bool: BooleanBuilder::new(),
            bytes: BinaryBuilder::new(),
        }
    }

    pub(super) fn push_kv(&mut self, kv: &KeyValue) {
        use any_value::Value;
        let (mut s, mut i, mut d, mut b, mut by): (_, _, _, _, Option<Vec<u8>>) =
            (None, None, None, None, None);
        let mut bytes_ref: Option<&[u8]> = None;
        let ty = match kv.value.as_ref() {
            None => value_type::NONE,
            Some(av) => match &av.value {
                None => value_type::EMPTY,
                Some(Value::StringValue(v)) => {
                    s = Some(v.as_str());
                    value_type::STRING
                }
                Some(Value::BoolValue(v)) => {
                    b = Some(*v);
                    value_type::BOOL
                }
                Some(Value::IntValue(v)) => {
                    i = Some(*v);
                    value_type::INT
                }
                Some(Value::DoubleValue(v)) => {
                    d = Some(*v);
                    value_type::DOUBLE
                }
                Some(Value::BytesValue(v)) => {
                    bytes_ref = Some(v.as_slice());
                    value_type::BYTES
                }
                Some(Value::ArrayValue(_)) => {
                    by = Some(av.encode_to_vec());
                    value_type::ARRAY
                }
                Some(Value::KvlistValue(_)) => {
                    by = Some(av.encode_to_vec());
                    value_type::KVLIST
                }
                Some(_) => {
                    by = Some(av.encode_to_vec());
                    value_type::ENCODED
                }
            },
        };
        let bytes = bytes_ref.or(by.as_deref());
        self.push_cell(&kv.key, ty, s, i, d, b, bytes);
    }

    /// [`AttrBuilder::push_kv`] for an attribute read off the wire.
    pub(super) fn push_wire(&mut self, a: &Attr<'_>) {
        use crate::block::wire_rows::Value;
        let (mut s, mut i, mut d, mut b, mut by) = (None, None, None, None, None);
        let ty = match a.value {
            None => value_type::NONE,
            Some(Value::Empty) => value_type::EMPTY,
            Some(Value::Str(v)) => {
                s = Some(v);
                value_type::STRING
            }
            Some(Value::Bool(v)) => {
                b = Some(v);
                value_type::BOOL
            }
            Some(Value::Int(v)) => {
                i = Some(v);
                value_type::INT
            }
            Some(Value::Double(v)) => {
                d = Some(v);
                value_type::DOUBLE
            }
            Some(Value::Bytes(v)) => {
                by = Some(v);
                value_type::BYTES
            }
            Some(Value::Array(v)) => {
                by = Some(v);
                value_type::ARRAY
            }
            Some(Value::Kvlist(v)) => {
                by = Some(v);
                value_type::KVLIST
            }
        };
        self.push_cell(a.key, ty, s, i, d, b, by);
    }

    #[allow(clippy::too_many_arguments)]
    fn push_cell(
        &mut self,
        key: &str,
        ty: i32,
        s: Option<&str>,
        i: Option<i64>,
        d: Option<f64>,
        b: Option<bool>,
        bytes: Option<&[u8]>,
    ) {
        self.key.append_value(key);
        // STRING..=BYTES are implied by which value column is set (see value_type::implied).
        let implied = matches!(
            ty,
            value_type::STRING
                | value_type::BOOL
                | value_type::INT
                | value_type::DOUBLE
                | value_type::BYTES
        );
        self.ty.push((!implied || legacy::on()).then_some(ty));
        self.str.append_option(s);
        self.int.append_option(i);
        self.dbl.append_option(d);
        self.bool.append_option(b);
        self.bytes.append_option(bytes);
        self.len += 1;
    }

    /// [`AttrBuilder::push_list`] for attributes read off the wire.
    pub(super) fn push_wire_list(
        &mut self,
        attrs: &[Attr<'_>],
        skip: &[Option<usize>],
    ) -> Result<(), BlockError> {
        for (i, a) in attrs.iter().enumerate() {
            if !skip.contains(&Some(i)) {
                self.push_wire(a);
            }
        }
        self.offsets.push(to_i32(self.len)?);
        Ok(())
    }

    /// Appends one list: `attrs` minus the indexes in `skip`.
    pub(super) fn push_list(
        &mut self,
        attrs: &[KeyValue],
        skip: &[Option<usize>],
    ) -> Result<(), BlockError> {
        for (i, kv) in attrs.iter().enumerate() {
            if !skip.contains(&Some(i)) {
                self.push_kv(kv);
            }
        }
        self.offsets.push(to_i32(self.len)?);
        Ok(())
    }

    pub(super) fn finish(mut self, field: &FieldRef) -> Result<ArrayRef, BlockError> {
        let (_, fields) = list_element(field)?;
        let values = make_struct(
            fields,
            vec![
                ("key", arc(self.key.finish())),
                ("type", arc(Int32Array::from(self.ty))),
                ("str", arc(self.str.finish())),
                ("int", arc(self.int.finish())),
                ("dbl", arc(self.dbl.finish())),
                ("bool", arc(self.bool.finish())),
                ("bytes", arc(self.bytes.finish())),
            ],
            None,
        )?;
        make_list(field, self.offsets, values)
    }
}

/// Dedicated columns of one level, one builder per entry of the spec.
pub(super) enum DedCol {
    Str(StringBuilder),
    Int(Int64Builder),
}

pub(super) struct DedBuilder {
    spec: &'static [Dedicated],
    cols: Vec<DedCol>,
}

impl DedBuilder {
    pub(super) fn new(spec: &'static [Dedicated]) -> Self {
        let cols = spec
            .iter()
            .map(|(_, _, ty)| match ty {
                DedicatedType::String => DedCol::Str(StringBuilder::new()),
                DedicatedType::Int => DedCol::Int(Int64Builder::new()),
            })
            .collect();
        Self { spec, cols }
    }

    pub(super) fn push(&mut self, attrs: &[KeyValue], pos: &[Option<usize>]) {
        use any_value::Value;
        for (col, p) in self.cols.iter_mut().zip(pos) {
            let v = p
                .and_then(|i| attrs.get(i))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref());
            match (col, v) {
                (DedCol::Str(b), Some(Value::StringValue(s))) => b.append_value(s),
                (DedCol::Int(b), Some(Value::IntValue(i))) => b.append_value(*i),
                (DedCol::Str(b), _) => b.append_null(),
                (DedCol::Int(b), _) => b.append_null(),
            }
        }
    }

    /// [`DedBuilder::push`] for attributes read off the wire.
    pub(super) fn push_wire(&mut self, attrs: &[Attr<'_>], pos: &[Option<usize>]) {
        use crate::block::wire_rows::Value;
        for (col, p) in self.cols.iter_mut().zip(pos) {
            let v = p.and_then(|i| attrs.get(i)).and_then(|a| a.value);
            match (col, v) {
                (DedCol::Str(b), Some(Value::Str(s))) => b.append_value(s),
                (DedCol::Int(b), Some(Value::Int(i))) => b.append_value(i),
                (DedCol::Str(b), _) => b.append_null(),
                (DedCol::Int(b), _) => b.append_null(),
            }
        }
    }

    pub(super) fn push_none(&mut self) {
        for col in &mut self.cols {
            match col {
                DedCol::Str(b) => b.append_null(),
                DedCol::Int(b) => b.append_null(),
            }
        }
    }

    pub(super) fn finish(self, out: &mut Vec<(&'static str, ArrayRef)>) {
        for ((_, name, _), col) in self.spec.iter().zip(self.cols) {
            let a = match col {
                DedCol::Str(mut b) => arc(b.finish()),
                DedCol::Int(mut b) => arc(b.finish()),
            };
            out.push((name, a));
        }
    }
}
