//! The Parquet block schema. `schema/block.parquet.txt` is the single source of truth: the
//! Parquet schema is parsed from it and the Arrow schema derived from that, so the writer,
//! the reader and the documentation cannot drift apart.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, FieldRef, Fields, SchemaRef};
use parquet::arrow::{parquet_to_arrow_schema, ProjectionMask};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::SchemaDescriptor;

use super::BlockError;

/// The schema text, exactly as committed.
pub const SCHEMA_TEXT: &str = include_str!("../../schema/block.parquet.txt");

/// Dotted column paths (Parquet leaf paths, including the `list.element` levels), for
/// building projections. Prefixes end in a dot so leaf names can be appended.
pub mod paths {
    pub const TRACE_ID: &str = "trace_id";
    pub const START_TIME: &str = "start_time_unix_nano";
    pub const END_TIME: &str = "end_time_unix_nano";
    pub const DURATION: &str = "duration_nano";
    pub const ROOT_SERVICE_NAME: &str = "root_service_name";
    pub const ROOT_SPAN_NAME: &str = "root_span_name";
    pub const RESOURCE_SPANS: &str = "resource_spans.list.element.";
    pub const RESOURCE: &str = "resource_spans.list.element.resource.";
    pub const SCOPE_SPANS: &str = "resource_spans.list.element.scope_spans.list.element.";
    pub const SCOPE: &str = "resource_spans.list.element.scope_spans.list.element.scope.";
    pub const SPAN: &str =
        "resource_spans.list.element.scope_spans.list.element.spans.list.element.";
    /// Appended to a level prefix to reach its generic attributes' leaves.
    pub const ATTRS: &str = "attrs.list.element.";
}

/// Attribute value type codes stored in the `type` column of every generic attribute list.
pub mod value_type {
    /// `KeyValue.value` is absent.
    pub const NONE: i32 = 0;
    /// An `AnyValue` with no value set.
    pub const EMPTY: i32 = 1;
    pub const STRING: i32 = 2;
    pub const BOOL: i32 = 3;
    pub const INT: i32 = 4;
    pub const DOUBLE: i32 = 5;
    pub const BYTES: i32 = 6;
    /// Stored in `bytes` as the prost-encoded `AnyValue`.
    pub const ARRAY: i32 = 7;
    /// Stored in `bytes` as the prost-encoded `AnyValue`.
    pub const KVLIST: i32 = 8;
    /// Any other (newer) value kind, stored in `bytes` as the prost-encoded `AnyValue`.
    pub const ENCODED: i32 = 9;

    /// The type of an attribute whose `type` is null: that of the value column holding
    /// its value (`bytes`: BYTES). None if all value columns are null (corrupt).
    pub fn implied(str: bool, int: bool, dbl: bool, bool: bool, bytes: bool) -> Option<i32> {
        if str {
            Some(STRING)
        } else if int {
            Some(INT)
        } else if dbl {
            Some(DOUBLE)
        } else if bool {
            Some(BOOL)
        } else if bytes {
            Some(BYTES)
        } else {
            None
        }
    }
}

/// The parsed Parquet schema.
pub fn parquet_schema() -> Result<Arc<SchemaDescriptor>, BlockError> {
    static SCHEMA: OnceLock<Result<Arc<SchemaDescriptor>, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            parse_message_type(SCHEMA_TEXT)
                .map(|t| Arc::new(SchemaDescriptor::new(Arc::new(t))))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(BlockError::Schema)
}

/// The Arrow schema derived from [`parquet_schema`].
pub fn arrow_schema() -> Result<SchemaRef, BlockError> {
    static SCHEMA: OnceLock<Result<SchemaRef, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let descr = parquet_schema().map_err(|e| e.to_string())?;
            parquet_to_arrow_schema(&descr, None)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(BlockError::Schema)
}

/// How the schema of older blocks (before parent span IDs and attribute types could be
/// left out, see `schema/meta.md`) differs from [`SCHEMA_TEXT`]: (now, then, occurrences).
const LEGACY: [(&str, &str, usize); 2] = [
    (
        "optional binary parent_span_id;",
        "required binary parent_span_id;",
        1,
    ),
    ("optional int32 type;", "required int32 type;", 5),
];

/// The Arrow schema to read a file with: [`arrow_schema`], or for older files whose span
/// `parent_span_id` column is required, the schema they were written with.
pub(crate) fn arrow_schema_for(file: &SchemaDescriptor) -> Result<SchemaRef, BlockError> {
    let path = format!("{}parent_span_id", paths::SPAN);
    let legacy = file
        .columns()
        .iter()
        .find(|c| c.path().string() == path)
        .is_some_and(|c| c.self_type().is_primitive() && !c.self_type().is_optional());
    if !legacy {
        return arrow_schema();
    }
    Ok(legacy_schemas()?.1)
}

/// [`arrow_schema_for`] with the span `name` column read dictionary-encoded, as search reads
/// it: span names repeat, and materialising every name into one string buffer (a copy per
/// span) was the largest single cost of decoding the hit columns.
pub(crate) fn search_schema_for(file: &SchemaDescriptor) -> Result<SchemaRef, BlockError> {
    static SCHEMAS: [OnceLock<Result<SchemaRef, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let base = arrow_schema_for(file)?;
    // One derived schema each for current blocks (0) and older ones (1).
    let legacy = usize::from(!Arc::ptr_eq(&base, &arrow_schema()?));
    SCHEMAS[legacy]
        .get_or_init(|| {
            let path = ["resource_spans", "scope_spans", "spans", "name"];
            let fields: Result<Vec<FieldRef>, String> = base
                .fields()
                .iter()
                .map(|f| dictionary_leaf(f, &path))
                .collect();
            Ok(Arc::new(arrow_schema::Schema::new_with_metadata(
                fields?,
                base.metadata().clone(),
            )))
        })
        .clone()
        .map_err(BlockError::Schema)
}

/// `field` with the string leaf at `path` (struct field names; lists are stepped through)
/// turned into `Dictionary(Int32, Utf8)`; other fields as they are.
fn dictionary_leaf(field: &FieldRef, path: &[&str]) -> Result<FieldRef, String> {
    use arrow_schema::{DataType, Field};
    let Some((first, rest)) = path.split_first() else {
        return Ok(field.clone());
    };
    if field.name() != first {
        return Ok(field.clone());
    }
    let data_type = match (field.data_type(), rest.is_empty()) {
        (DataType::Utf8, true) => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        }
        (DataType::List(item), false) => match item.data_type() {
            DataType::Struct(children) => {
                let children: Result<Vec<FieldRef>, String> =
                    children.iter().map(|c| dictionary_leaf(c, rest)).collect();
                DataType::List(Arc::new(
                    Field::new(
                        item.name(),
                        DataType::Struct(children?.into()),
                        item.is_nullable(),
                    )
                    .with_metadata(item.metadata().clone()),
                ))
            }
            other => return Err(format!("{first} holds {other}, not structs")),
        },
        (other, _) => return Err(format!("{first} is {other}, not a list or a string")),
    };
    Ok(Arc::new(field.as_ref().clone().with_data_type(data_type)))
}

/// The Parquet and Arrow schemas of older blocks.
pub(crate) fn legacy_schemas() -> Result<(Arc<SchemaDescriptor>, SchemaRef), BlockError> {
    static SCHEMA: OnceLock<Result<(Arc<SchemaDescriptor>, SchemaRef), String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut text = SCHEMA_TEXT.to_string();
            for (new, old, n) in LEGACY {
                if text.matches(new).count() != n {
                    return Err(format!("schema text does not have {n} `{new}`"));
                }
                text = text.replace(new, old);
            }
            let t = parse_message_type(&text).map_err(|e| e.to_string())?;
            let descr = Arc::new(SchemaDescriptor::new(Arc::new(t)));
            let arrow = parquet_to_arrow_schema(&descr, None).map_err(|e| e.to_string())?;
            Ok((descr, Arc::new(arrow)))
        })
        .clone()
        .map_err(BlockError::Schema)
}

/// A projection of the given leaf columns (dotted paths, see [`paths`]) or of every leaf
/// under a given prefix. Unknown paths are an error so typos surface early.
pub fn projection(descr: &SchemaDescriptor, wanted: &[&str]) -> Result<ProjectionMask, BlockError> {
    let mut leaves = Vec::new();
    for w in wanted {
        let before = leaves.len();
        for (i, col) in descr.columns().iter().enumerate() {
            let p = col.path().string();
            if p == *w || (w.ends_with('.') && p.starts_with(w)) {
                leaves.push(i);
            }
        }
        if leaves.len() == before {
            return Err(BlockError::Schema(format!("no column matches {w}")));
        }
    }
    Ok(ProjectionMask::leaves(descr, leaves))
}

// Navigation helpers over the derived Arrow schema, used to build arrays whose field
// definitions come from the schema rather than being restated in code.

pub(crate) fn child<'a>(fields: &'a Fields, name: &str) -> Result<&'a FieldRef, BlockError> {
    fields
        .iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| BlockError::Schema(format!("schema has no field {name}")))
}

pub(crate) fn struct_fields(field: &FieldRef) -> Result<&Fields, BlockError> {
    match field.data_type() {
        DataType::Struct(f) => Ok(f),
        other => Err(BlockError::Schema(format!(
            "field {} is {other}, expected a struct",
            field.name()
        ))),
    }
}

/// The element field of a list field and the element's struct fields.
pub(crate) fn list_element(field: &FieldRef) -> Result<(&FieldRef, &Fields), BlockError> {
    match field.data_type() {
        DataType::List(elem) => Ok((elem, struct_fields(elem)?)),
        other => Err(BlockError::Schema(format!(
            "field {} is {other}, expected a list",
            field.name()
        ))),
    }
}
