//! Typed access to the columns of a decoded record batch, shared by the reader (conversion
//! back to OTLP) and the search path: a missing or mistyped column is a corrupt block, never
//! a panic.

use arrow_array::{
    Array, BinaryArray, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    StructArray,
};

use super::schema::value_type;
use super::{BlockError, Dedicated, DedicatedType};

pub(super) fn corrupt(msg: impl Into<String>) -> BlockError {
    BlockError::Corrupt(msg.into())
}

pub(super) fn get<'a, T: Array + 'static>(
    s: &'a StructArray,
    name: &str,
) -> Result<&'a T, BlockError> {
    opt(s, name)?.ok_or_else(|| corrupt(format!("missing column {name}")))
}

/// Like [`get`], for a column a projection may leave out.
pub(super) fn opt<'a, T: Array + 'static>(
    s: &'a StructArray,
    name: &str,
) -> Result<Option<&'a T>, BlockError> {
    match s.column_by_name(name) {
        None => Ok(None),
        Some(c) => c
            .as_any()
            .downcast_ref::<T>()
            .map(Some)
            .ok_or_else(|| corrupt(format!("column {name} has the wrong type"))),
    }
}

/// The element columns of an attribute list: key, value type and one column per kind of
/// value.
pub(super) struct AttrValues<'a> {
    pub(super) key: &'a StringArray,
    pub(super) ty: &'a Int32Array,
    pub(super) str: &'a StringArray,
    pub(super) int: &'a Int64Array,
    pub(super) dbl: &'a Float64Array,
    pub(super) bool: &'a BooleanArray,
    pub(super) bytes: &'a BinaryArray,
}

impl<'a> AttrValues<'a> {
    /// The columns of `v`, the element struct of an `attrs` list.
    pub(super) fn new(v: &'a StructArray) -> Result<Self, BlockError> {
        Ok(Self {
            key: get(v, "key")?,
            ty: get(v, "type")?,
            str: get(v, "str")?,
            int: get(v, "int")?,
            dbl: get(v, "dbl")?,
            bool: get(v, "bool")?,
            bytes: get(v, "bytes")?,
        })
    }

    /// Element `j`'s value type: the stored one, else the one its non-null column implies
    /// (`None` when none does).
    pub(super) fn value_type(&self, j: usize) -> Option<i32> {
        if self.ty.is_valid(j) {
            return Some(self.ty.value(j));
        }
        value_type::implied(
            self.str.is_valid(j),
            self.int.is_valid(j),
            self.dbl.is_valid(j),
            self.bool.is_valid(j),
            self.bytes.is_valid(j),
        )
    }
}

/// One dedicated attribute column.
pub(super) enum DedCol<'a> {
    Str(&'a StringArray),
    Int(&'a Int64Array),
}

/// The dedicated columns of `spec` in `s`, with their attribute keys, in `spec`'s order.
/// With `projected`, a column the projection left out is skipped; otherwise it is an error.
pub(super) fn ded_cols<'a>(
    s: &'a StructArray,
    spec: &[Dedicated],
    projected: bool,
) -> Result<Vec<(&'static str, DedCol<'a>)>, BlockError> {
    let mut out = Vec::with_capacity(spec.len());
    for (key, col, ty) in spec {
        let c = match ty {
            DedicatedType::String => opt(s, col)?.map(DedCol::Str),
            DedicatedType::Int => opt(s, col)?.map(DedCol::Int),
        };
        match c {
            Some(c) => out.push((*key, c)),
            None if projected => {}
            None => return Err(corrupt(format!("missing column {col}"))),
        }
    }
    Ok(out)
}
