//! Avro record values: a bare datum with a schema given up front ([`AvroInput::bare`]), or
//! Confluent's wire format (magic byte `0`, a 4-byte big-endian schema id, the datum) with the
//! writer schema fetched from a schema registry by id ([`AvroInput::confluent`]).
//!
//! Each record is read with its own writer schema, so a topic whose producers moved to a newer
//! schema version keeps decoding; with a reader schema ([`AvroInput::reader_schema`]) Avro's
//! schema resolution fills fields that older writers did not have from their defaults.
//!
//! Record fields map to model inputs by name; for a single-input model, [`AvroInput::fields`]
//! picks and orders scalar fields into its feature vector. The mapping is worked out once per
//! writer schema (a [`Plan`]) and then applied to every record of that schema.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::types::Value;

use super::input::{DecodeError, InputLayout};
use super::registry::SchemaRegistry;

/// Magic byte that starts a Confluent wire-format value.
pub const CONFLUENT_MAGIC: u8 = 0;
/// Bytes before the Avro datum in the Confluent wire format.
const FRAME: usize = 5;

/// The Avro input formats' settings: where the writer schema comes from and which fields feed
/// the model.
#[derive(Clone)]
pub struct AvroInput {
    kind: Kind,
    fields: Option<Vec<String>>,
}

#[derive(Clone)]
enum Kind {
    /// Every value is a bare datum written with this schema.
    Bare(Arc<Schema>),
    /// Confluent wire format; writer schemas from the registry, optionally resolved to a
    /// reader schema.
    Confluent {
        registry: SchemaRegistry,
        reader: Option<Arc<Schema>>,
    },
}

impl AvroInput {
    /// Bare Avro datums written with `schema` (`format = "avro"`).
    pub fn bare(schema: Schema) -> AvroInput {
        AvroInput {
            kind: Kind::Bare(Arc::new(schema)),
            fields: None,
        }
    }

    /// Confluent wire format, writer schemas from `registry` (`format = "confluent-avro"`).
    pub fn confluent(registry: SchemaRegistry) -> AvroInput {
        AvroInput {
            kind: Kind::Confluent {
                registry,
                reader: None,
            },
            fields: None,
        }
    }

    /// For the Confluent format: resolve every record to this reader schema (fields added with
    /// a default in newer versions then read as their default in older records). Ignored for
    /// bare datums, whose schema is the writer schema.
    pub fn reader_schema(mut self, schema: Schema) -> AvroInput {
        if let Kind::Confluent { reader, .. } = &mut self.kind {
            *reader = Some(Arc::new(schema));
        }
        self
    }

    /// For a single-input model: these scalar fields, in this order, are its feature vector.
    pub fn fields(mut self, fields: Vec<String>) -> AvroInput {
        self.fields = Some(fields);
        self
    }

    /// The registry, for the Confluent format.
    pub fn registry(&self) -> Option<&SchemaRegistry> {
        match &self.kind {
            Kind::Confluent { registry, .. } => Some(registry),
            Kind::Bare(_) => None,
        }
    }

    /// `avro` or `confluent-avro`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Bare(_) => "avro",
            Kind::Confluent { .. } => "confluent-avro",
        }
    }

    /// Reads an `.avsc` file.
    pub fn parse_schema_file(path: &std::path::Path) -> Result<Schema, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Schema::parse_str(&text)
            .map_err(|e| format!("{}: not a valid Avro schema: {e}", path.display()))
    }
}

impl fmt::Debug for AvroInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AvroInput");
        match &self.kind {
            Kind::Bare(s) => d.field("schema", &s.canonical_form()),
            Kind::Confluent { registry, reader } => d
                .field("registry", registry)
                .field("reader", &reader.as_ref().map(|s| s.canonical_form())),
        };
        d.field("fields", &self.fields).finish()
    }
}

impl PartialEq for AvroInput {
    fn eq(&self, other: &AvroInput) -> bool {
        let same_kind = match (&self.kind, &other.kind) {
            (Kind::Bare(a), Kind::Bare(b)) => a.canonical_form() == b.canonical_form(),
            (
                Kind::Confluent {
                    registry: ra,
                    reader: a,
                },
                Kind::Confluent {
                    registry: rb,
                    reader: b,
                },
            ) => {
                ra.url() == rb.url()
                    && a.as_ref().map(|s| s.canonical_form())
                        == b.as_ref().map(|s| s.canonical_form())
            }
            _ => false,
        };
        same_kind && self.fields == other.fields
    }
}

impl Eq for AvroInput {}

/// Where one model input's values are in a record of one schema.
#[derive(Debug, Clone)]
enum Pick {
    /// One field shaped like the input (a number, an array, nested arrays).
    Field(FieldRef),
    /// Scalar fields, in order, making up the input's vector (`fields`).
    Scalars(Vec<FieldRef>),
}

#[derive(Debug, Clone)]
struct FieldRef {
    /// Position in the decoded record (reader order when resolving, else writer order).
    index: usize,
    name: String,
    /// The field's schema (for a decimal's scale, a union's branches).
    schema: Schema,
}

/// How records of one writer schema become a row.
#[derive(Debug)]
struct Plan {
    writer: Arc<Schema>,
    reader: Option<Arc<Schema>>,
    picks: Vec<Pick>,
}

impl Plan {
    fn new(
        writer: Arc<Schema>,
        reader: Option<Arc<Schema>>,
        inputs: &[InputLayout],
        fields: Option<&[String]>,
    ) -> Result<Plan, String> {
        let shape = reader.as_deref().unwrap_or(&writer);
        let Schema::Record(RecordSchema { fields: record, .. }) = shape else {
            return Err(format!(
                "the schema is not a record (found {}); the model's inputs need named fields",
                kind_of(shape)
            ));
        };
        let find = |name: &str| -> Option<FieldRef> {
            record
                .iter()
                .position(|f| f.name == name)
                .map(|index| FieldRef {
                    index,
                    name: name.to_string(),
                    schema: record[index].schema.clone(),
                })
        };
        let field_names = || {
            record
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let picks = match fields {
            Some(names) => {
                let mut refs = Vec::with_capacity(names.len());
                for name in names {
                    refs.push(find(name).ok_or_else(|| {
                        format!(
                            "`fields` names `{name}`, which the record does not have (record fields: {})",
                            field_names()
                        )
                    })?);
                }
                vec![Pick::Scalars(refs)]
            }
            None => {
                let mut picks = Vec::with_capacity(inputs.len());
                for input in inputs {
                    match find(&input.name) {
                        Some(f) => picks.push(Pick::Field(f)),
                        None => {
                            return Err(format!(
                                "no record field is named like the model input `{}` (model inputs: {}; record fields: {}); name the fields like the inputs, or for a single-input model list the feature fields with `fields`",
                                input.name,
                                inputs.iter().map(|i| format!("{} {:?}", i.name, i.shape)).collect::<Vec<_>>().join(", "),
                                field_names()
                            ))
                        }
                    }
                }
                picks
            }
        };
        Ok(Plan {
            writer,
            reader,
            picks,
        })
    }
}

/// A schema's plan, or why that schema cannot feed the model.
type PlanResult = Result<Arc<Plan>, String>;

/// Decodes Avro values for one model; shared by clones (schemas and plans are cached).
#[derive(Debug, Clone)]
pub(super) struct AvroDecoder {
    input: AvroInput,
    inputs: Vec<InputLayout>,
    /// The plan of a bare schema, made when the decoder is built.
    bare: Option<Arc<Plan>>,
    /// Plans by schema id (Confluent format), or why that schema cannot feed the model.
    plans: Arc<Mutex<HashMap<u32, PlanResult>>>,
    /// Ids the last [`resolve`](Self::resolve) could not fetch, with the reason.
    failures: Arc<Mutex<HashMap<u32, DecodeError>>>,
}

impl AvroDecoder {
    /// Checks the settings against the model inputs; for a bare schema, works out the mapping
    /// now so that a schema that cannot feed the model fails at start-up.
    pub(super) fn new(input: AvroInput, inputs: Vec<InputLayout>) -> Result<AvroDecoder, String> {
        if let Some(fields) = &input.fields {
            if inputs.len() != 1 {
                return Err(format!(
                    "`fields` picks the features of a single-input model; this one has {} inputs ({}): name record fields like the inputs instead",
                    inputs.len(),
                    inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            let unique: BTreeSet<&String> = fields.iter().collect();
            if fields.is_empty() || unique.len() != fields.len() {
                return Err("`fields` must list at least one field, each once".into());
            }
        }
        let bare = match &input.kind {
            Kind::Bare(schema) => Some(Arc::new(Plan::new(
                Arc::clone(schema),
                None,
                &inputs,
                input.fields.as_deref(),
            )?)),
            Kind::Confluent { .. } => None,
        };
        // A corrupt length prefix must not make the decoder try to allocate gigabytes. The
        // limit is process-wide and set once; 64 MiB is far above any record we accept.
        apache_avro::util::max_allocation_bytes(64 << 20);
        Ok(AvroDecoder {
            input,
            inputs,
            bare,
            plans: Arc::default(),
            failures: Arc::default(),
        })
    }

    pub(super) fn input(&self) -> &AvroInput {
        &self.input
    }

    /// Whether `schema` (e.g. the latest registered version) can feed the model; the error
    /// says which input has no field.
    pub(super) fn check(&self, schema: Schema) -> Result<(), String> {
        let reader = match &self.input.kind {
            Kind::Confluent { reader, .. } => reader.clone(),
            Kind::Bare(_) => None,
        };
        Plan::new(
            Arc::new(schema),
            reader,
            &self.inputs,
            self.input.fields.as_deref(),
        )
        .map(|_| ())
    }

    /// Fetches the writer schemas of `values` that are not cached yet (Confluent format),
    /// retrying a failing registry; ids it could not fetch make their records' decoding fail
    /// with the reason, until the next call.
    pub(super) async fn resolve<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) {
        let Kind::Confluent { registry, .. } = &self.input.kind else {
            return;
        };
        lock(&self.failures).clear();
        let missing: BTreeSet<u32> = values
            .into_iter()
            .filter_map(schema_id)
            .filter(|id| registry.cached(*id).is_none())
            .collect();
        // Concurrently: with several new ids in a chunk, an outage costs one retry period,
        // not one per id.
        let fetches = missing
            .into_iter()
            .map(|id| async move { (id, registry.fetch_retrying(id).await) });
        for (id, fetched) in futures::future::join_all(fetches).await {
            if let Err(e) = fetched {
                lock(&self.failures).insert(
                    id,
                    DecodeError::Schema {
                        id,
                        message: e.to_string(),
                    },
                );
            }
        }
    }

    /// Decodes one value into one vector per model input.
    pub(super) fn decode(&self, value: &[u8]) -> Result<Vec<Vec<f32>>, DecodeError> {
        let (plan, body) = match &self.bare {
            Some(plan) => (Arc::clone(plan), value),
            None => self.confluent_plan(value)?,
        };
        let mut rest = body;
        let decoded = apache_avro::from_avro_datum(&plan.writer, &mut rest, plan.reader.as_deref())
            .map_err(|e| DecodeError::Avro(one_line(&e.to_string())))?;
        if !rest.is_empty() {
            return Err(DecodeError::Avro(format!(
                "{} bytes left after the datum: the bytes were not written with this schema",
                rest.len()
            )));
        }
        let Value::Record(fields) = decoded else {
            return Err(DecodeError::Avro("the datum is not a record".into()));
        };
        let mut values = Vec::with_capacity(self.inputs.len());
        for (pick, input) in plan.picks.iter().zip(&self.inputs) {
            values.push(read_input(pick, input, &fields)?);
        }
        Ok(values)
    }

    /// The plan for a Confluent value's schema id, and the datum after the frame.
    fn confluent_plan<'v>(&self, value: &'v [u8]) -> Result<(Arc<Plan>, &'v [u8]), DecodeError> {
        let Kind::Confluent { registry, reader } = &self.input.kind else {
            return Err(DecodeError::Avro("no writer schema".into()));
        };
        if value.first() != Some(&CONFLUENT_MAGIC) {
            return Err(DecodeError::Wire(format!(
                "the first byte is 0x{:02x}, not the magic byte 0x00",
                value.first().copied().unwrap_or_default()
            )));
        }
        let id = schema_id(value).ok_or_else(|| {
            DecodeError::Wire(format!(
                "{} bytes is shorter than the 5-byte header",
                value.len()
            ))
        })?;
        if let Some(plan) = lock(&self.plans).get(&id) {
            return plan
                .clone()
                .map(|p| (p, &value[FRAME..]))
                .map_err(|message| DecodeError::Schema { id, message });
        }
        let Some(writer) = registry.cached(id) else {
            let failure = lock(&self.failures).get(&id).cloned();
            return Err(failure.unwrap_or(DecodeError::Schema {
                id,
                message: "not fetched from the schema registry yet".into(),
            }));
        };
        let plan = Plan::new(
            writer,
            reader.clone(),
            &self.inputs,
            self.input.fields.as_deref(),
        )
        .map(Arc::new);
        lock(&self.plans).insert(id, plan.clone());
        plan.map(|p| (p, &value[FRAME..]))
            .map_err(|message| DecodeError::Schema { id, message })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation: a panic cannot leave it half-done.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The schema id of a Confluent wire-format value, if it has the frame.
pub fn schema_id(value: &[u8]) -> Option<u32> {
    match value {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The values of one model input from a decoded record.
fn read_input(
    pick: &Pick,
    input: &InputLayout,
    fields: &[(String, Value)],
) -> Result<Vec<f32>, DecodeError> {
    let field_err = |field: &str, message: String| DecodeError::AvroField {
        field: field.to_string(),
        message,
    };
    match pick {
        Pick::Field(f) => {
            let value = field_value(fields, f)?;
            let mut out = Vec::with_capacity(input.len);
            let flat = matches!(value, Value::Array(items) if items.len() == input.len
                    && items.iter().all(|i| !matches!(i, Value::Array(_))));
            let shape: &[usize] = if flat { &[input.len] } else { &input.shape };
            fill(value, &f.schema, shape, &mut out).map_err(|m| {
                field_err(
                    &f.name,
                    format!(
                        "{m} (input `{}` takes shape {:?}, or {} values in a flat array)",
                        input.name, input.shape, input.len
                    ),
                )
            })?;
            Ok(out)
        }
        Pick::Scalars(refs) => {
            if refs.len() != input.len {
                return Err(DecodeError::Count {
                    what: format!("`{}` {:?} from `fields`", input.name, input.shape),
                    expected: input.len,
                    found: refs.len(),
                });
            }
            let mut out = Vec::with_capacity(input.len);
            for f in refs {
                let value = field_value(fields, f)?;
                out.push(number(value, &f.schema).map_err(|m| field_err(&f.name, m))?);
            }
            Ok(out)
        }
    }
}

/// The field's value: at its planned position (checked by name), else found by name.
fn field_value<'a>(fields: &'a [(String, Value)], f: &FieldRef) -> Result<&'a Value, DecodeError> {
    match fields.get(f.index) {
        Some((name, v)) if *name == f.name => Ok(v),
        _ => fields
            .iter()
            .find(|(name, _)| *name == f.name)
            .map(|(_, v)| v)
            .ok_or_else(|| DecodeError::AvroField {
                field: f.name.clone(),
                message: "missing from the record".into(),
            }),
    }
}

/// Appends the numbers of `value`, nested like `shape`.
fn fill(value: &Value, schema: &Schema, shape: &[usize], out: &mut Vec<f32>) -> Result<(), String> {
    let (value, schema) = unwrap_union(value, schema)?;
    match (shape.split_first(), value) {
        (None, v) => {
            out.push(number(v, schema)?);
            Ok(())
        }
        (Some((&n, rest)), Value::Array(items)) => {
            if items.len() != n {
                return Err(format!(
                    "found an array of {} where {n} were expected",
                    items.len()
                ));
            }
            let items_schema = match schema {
                Schema::Array(a) => a.items.as_ref(),
                other => other,
            };
            items
                .iter()
                .try_for_each(|i| fill(i, items_schema, rest, out))
        }
        (Some((&n, _)), other) => Err(format!(
            "found {} where an array of {n} was expected",
            value_kind(other)
        )),
    }
}

/// A union's chosen branch and its schema; `null` is an error (the model needs a number).
fn unwrap_union<'a>(
    value: &'a Value,
    schema: &'a Schema,
) -> Result<(&'a Value, &'a Schema), String> {
    match (value, schema) {
        (Value::Union(index, inner), Schema::Union(u)) => {
            let branch = u.variants().get(*index as usize).unwrap_or(schema);
            unwrap_union(inner, branch)
        }
        (Value::Union(_, inner), _) => unwrap_union(inner, schema),
        (Value::Null, _) => Err("is null; the model needs a number".into()),
        _ => Ok((value, schema)),
    }
}

/// One number from a scalar Avro value.
fn number(value: &Value, schema: &Schema) -> Result<f32, String> {
    let (value, schema) = unwrap_union(value, schema)?;
    let x: f64 = match value {
        Value::Int(v) | Value::Date(v) | Value::TimeMillis(v) => f64::from(*v),
        Value::Long(v)
        | Value::TimeMicros(v)
        | Value::TimestampMillis(v)
        | Value::TimestampMicros(v)
        | Value::TimestampNanos(v)
        | Value::LocalTimestampMillis(v)
        | Value::LocalTimestampMicros(v)
        | Value::LocalTimestampNanos(v) => *v as f64,
        Value::Float(v) => f64::from(*v),
        Value::Double(v) => *v,
        Value::Boolean(b) => f64::from(u8::from(*b)),
        Value::Enum(index, _) => f64::from(*index),
        Value::Decimal(d) => decimal(d, schema)?,
        Value::BigDecimal(d) => d
            .to_string()
            .parse()
            .map_err(|_| format!("decimal {d} is not a number"))?,
        other => return Err(format!("is {}, not a number", value_kind(other))),
    };
    let v = x as f32;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("is not finite ({x})"))
    }
}

/// A decimal's value: its unscaled two's-complement integer over 10^scale.
fn decimal(d: &apache_avro::Decimal, schema: &Schema) -> Result<f64, String> {
    let Schema::Decimal(s) = schema else {
        return Err("is a decimal whose scale is unknown (a named type reference)".into());
    };
    let bytes: Vec<u8> = d.try_into().map_err(|e| format!("bad decimal: {e}"))?;
    if bytes.len() > 16 {
        return Err(format!(
            "is a decimal of {} bytes (at most 16 are read)",
            bytes.len()
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    buf[16 - bytes.len()..].copy_from_slice(&bytes);
    let unscaled = i128::from_be_bytes(buf);
    Ok(unscaled as f64 / 10f64.powi(s.scale as i32))
}

fn kind_of(schema: &Schema) -> String {
    let kind = apache_avro::schema::SchemaKind::from(schema);
    format!("{kind:?}").to_lowercase()
}

fn value_kind(value: &Value) -> String {
    let kind = apache_avro::schema::SchemaKind::from(value);
    format!("a {}", format!("{kind:?}").to_lowercase())
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The Avro output: a record schema generated from the model's outputs, and the binary
/// encoding of one record's outputs in it (written directly: a record of floats and arrays
/// needs no generic value tree).
#[derive(Debug, Clone)]
pub(super) struct AvroOutput {
    /// The schema as Avro JSON (what is registered and logged).
    schema: String,
    /// Per model output: its field name and row shape.
    outputs: Vec<(String, Vec<usize>)>,
    top_k: bool,
    /// Confluent frame (magic byte and schema id) written before each datum.
    frame: Option<[u8; FRAME]>,
}

/// Field names the generated schema uses besides the outputs.
const KEY_FIELD: &str = "key";
const TOP_K_FIELD: &str = "top_k";

impl AvroOutput {
    /// The schema for these outputs (name and row shape each), with the record key and, when
    /// asked, the top-k classes. Output names that are not Avro names are rewritten
    /// (`dense/Softmax:0` → `dense_Softmax_0`); names that collide are an error.
    pub(super) fn new(outputs: &[(String, Vec<usize>)], top_k: bool) -> Result<AvroOutput, String> {
        let mut fields = vec![serde_json::json!({
            "name": KEY_FIELD, "type": ["null", "bytes"], "default": null,
            "doc": "The key of the input record."
        })];
        let mut seen: BTreeSet<String> = [KEY_FIELD.to_string(), TOP_K_FIELD.to_string()].into();
        let mut named = Vec::with_capacity(outputs.len());
        for (name, shape) in outputs {
            let field = avro_name(name);
            if !seen.insert(field.clone()) {
                return Err(format!(
                    "output `{name}` becomes the Avro field `{field}`, which another field already has"
                ));
            }
            let mut ty = serde_json::json!("float");
            for _ in shape {
                ty = serde_json::json!({"type": "array", "items": ty});
            }
            fields.push(serde_json::json!({"name": field, "type": ty, "doc": format!("Model output `{name}`, shape {shape:?}.")}));
            named.push((field, shape.clone()));
        }
        if top_k {
            fields.push(serde_json::json!({"name": TOP_K_FIELD, "type": {"type": "array", "items": {
                "type": "record", "name": "TopClass",
                "fields": [{"name": "index", "type": "int"}, {"name": "score", "type": "float"}]}}}));
        }
        let schema = serde_json::json!({
            "type": "record", "name": "Prediction", "namespace": "streamtract",
            "fields": fields
        })
        .to_string();
        // The schema is ours, but parse it to be sure it is one every reader accepts.
        Schema::parse_str(&schema).map_err(|e| format!("generated Avro schema is invalid: {e}"))?;
        Ok(AvroOutput {
            schema,
            outputs: named,
            top_k,
            frame: None,
        })
    }

    pub(super) fn schema(&self) -> &str {
        &self.schema
    }

    /// Frames every datum with the Confluent header for schema `id`.
    pub(super) fn set_schema_id(&mut self, id: u32) {
        let mut frame = [CONFLUENT_MAGIC; FRAME];
        frame[1..].copy_from_slice(&id.to_be_bytes());
        self.frame = Some(frame);
    }

    /// One record: frame (if any), key, each output nested like its shape, top-k.
    pub(super) fn encode(
        &self,
        key: Option<&[u8]>,
        outputs: &[&[f32]],
        ranked: &[(usize, f32)],
    ) -> Vec<u8> {
        let values: usize = outputs.iter().map(|o| o.len()).sum();
        let mut out = Vec::with_capacity(FRAME + 16 + key.map_or(0, <[u8]>::len) + 5 * values);
        if let Some(frame) = &self.frame {
            out.extend_from_slice(frame);
        }
        match key {
            None => write_long(&mut out, 0),
            Some(k) => {
                write_long(&mut out, 1);
                write_long(&mut out, k.len() as i64);
                out.extend_from_slice(k);
            }
        }
        for ((_, shape), values) in self.outputs.iter().zip(outputs) {
            let mut it = values.iter();
            write_nested(&mut out, shape, &mut it);
        }
        if self.top_k {
            if !ranked.is_empty() {
                write_long(&mut out, ranked.len() as i64);
                for (index, score) in ranked {
                    write_long(&mut out, *index as i64);
                    out.extend_from_slice(&score.to_le_bytes());
                }
            }
            write_long(&mut out, 0);
        }
        out
    }
}

/// Avro binary: arrays as one block of `n` items and the end marker, floats little-endian.
fn write_nested<'a>(
    out: &mut Vec<u8>,
    shape: &[usize],
    values: &mut impl Iterator<Item = &'a f32>,
) {
    match shape.split_first() {
        None => out.extend_from_slice(&values.next().copied().unwrap_or(f32::NAN).to_le_bytes()),
        Some((&n, rest)) => {
            if n > 0 {
                write_long(out, n as i64);
                for _ in 0..n {
                    write_nested(out, rest, values);
                }
            }
            write_long(out, 0);
        }
    }
}

/// Avro's `long`: zig-zag, then base-128 varint.
fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// `name` as an Avro name: `[A-Za-z_][A-Za-z0-9_]*`.
fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(name: &str, shape: &[usize]) -> InputLayout {
        InputLayout {
            name: name.into(),
            shape: shape.to_vec(),
            len: shape.iter().product(),
        }
    }

    fn datum(schema: &Schema, value: Value) -> Vec<u8> {
        apache_avro::to_avro_datum(schema, value).unwrap()
    }

    #[test]
    fn fields_named_like_inputs_feed_them_and_scalar_types_become_numbers() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[
            {"name":"id","type":"string"},
            {"name":"x","type":{"type":"array","items":{"type":"array","items":"double"}}},
            {"name":"a","type":"int"},{"name":"b","type":["null","long"]},
            {"name":"c","type":"boolean"},
            {"name":"d","type":{"type":"enum","name":"e","symbols":["lo","hi"]}},
            {"name":"m","type":{"type":"bytes","logicalType":"decimal","precision":6,"scale":2}},
            {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        let x = Value::Array(vec![
            Value::Array(vec![Value::Double(1.0), Value::Double(2.0)]),
            Value::Array(vec![Value::Double(3.0), Value::Double(4.5)]),
        ]);
        let record = Value::Record(vec![
            ("id".into(), Value::String("s".into())),
            ("x".into(), x),
            ("a".into(), Value::Int(7)),
            ("b".into(), Value::Union(1, Box::new(Value::Long(-3)))),
            ("c".into(), Value::Boolean(true)),
            ("d".into(), Value::Enum(1, "hi".into())),
            (
                "m".into(),
                Value::Decimal(apache_avro::Decimal::from(vec![0xfbu8, 0x2e])),
            ),
            ("t".into(), Value::TimestampMillis(1000)),
        ]);
        let bytes = datum(&schema, record);
        let by_name =
            AvroDecoder::new(AvroInput::bare(schema.clone()), vec![layout("x", &[2, 2])]).unwrap();
        assert_eq!(
            by_name.decode(&bytes).unwrap(),
            vec![vec![1.0, 2.0, 3.0, 4.5]]
        );
        let picked = AvroInput::bare(schema.clone())
            .fields(["a", "b", "c", "d", "m", "t"].map(String::from).to_vec());
        let picked = AvroDecoder::new(picked, vec![layout("features", &[6])]).unwrap();
        // 0xfb2e is -1234 unscaled: -12.34 at scale 2.
        assert_eq!(
            picked.decode(&bytes).unwrap(),
            vec![vec![7.0, -3.0, 1.0, 1.0, -12.34, 1000.0]]
        );
        // A string field is not a number; a truncated body is invalid Avro.
        let text = AvroInput::bare(schema.clone()).fields(vec!["id".into()]);
        let text = AvroDecoder::new(text, vec![layout("f", &[1])]).unwrap();
        assert!(matches!(
            text.decode(&bytes),
            Err(DecodeError::AvroField { .. })
        ));
        assert!(matches!(
            by_name.decode(&bytes[..bytes.len() - 3]),
            Err(DecodeError::Avro(_))
        ));
    }

    #[test]
    fn without_a_mapping_the_error_lists_inputs_and_fields() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[{"name":"p","type":"float"},{"name":"q","type":"float"}]}"#,
        )
        .unwrap();
        let err = AvroDecoder::new(AvroInput::bare(schema), vec![layout("x", &[2])]).unwrap_err();
        assert!(err.contains("model inputs: x [2]"), "{err}");
        assert!(err.contains("record fields: p, q"), "{err}");
    }

    #[test]
    fn a_null_union_branch_is_a_bad_record() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":["null",{"type":"array","items":"float"}]}]}"#,
        )
        .unwrap();
        let bytes = datum(
            &schema,
            Value::Record(vec![("x".into(), Value::Union(0, Box::new(Value::Null)))]),
        );
        let d = AvroDecoder::new(AvroInput::bare(schema), vec![layout("x", &[2])]).unwrap();
        let err = d.decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("`x` is null"), "{err}");
    }

    #[test]
    fn our_output_encoding_reads_back_with_the_avro_crate() {
        let mut out = AvroOutput::new(
            &[("probs:0".into(), vec![3]), ("grid".into(), vec![2, 2])],
            true,
        )
        .unwrap();
        out.set_schema_id(42);
        let schema = Schema::parse_str(out.schema()).unwrap();
        let bytes = out.encode(
            Some(b"k1"),
            &[&[0.1, 0.7, 0.2], &[1.0, 2.0, 3.0, 4.0]],
            &[(1, 0.7)],
        );
        assert_eq!(schema_id(&bytes), Some(42));
        let value = apache_avro::from_avro_datum(&schema, &mut &bytes[FRAME..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["key", "probs_0", "grid", "top_k"]);
        assert_eq!(
            fields[0].1,
            Value::Union(1, Box::new(Value::Bytes(b"k1".to_vec())))
        );
        assert_eq!(
            fields[2].1,
            Value::Array(vec![
                Value::Array(vec![Value::Float(1.0), Value::Float(2.0)]),
                Value::Array(vec![Value::Float(3.0), Value::Float(4.0)]),
            ])
        );
        assert_eq!(
            fields[3].1,
            Value::Array(vec![Value::Record(vec![
                ("index".into(), Value::Int(1)),
                ("score".into(), Value::Float(0.7)),
            ])])
        );
    }
}
