//! Rows → batch tensors, and batch outputs → per-record slices.

use tract_onnx::prelude::Tensor;

use super::Row;
use crate::model::ModelError;

/// Rows waiting to become one batch, plus whatever the caller keeps per row.
#[derive(Debug)]
pub struct Batch<M> {
    rows: Vec<Row>,
    meta: Vec<M>,
}

impl<M> Default for Batch<M> {
    fn default() -> Self {
        Batch {
            rows: Vec::new(),
            meta: Vec::new(),
        }
    }
}

impl<M> Batch<M> {
    /// Adds a row and its metadata.
    pub fn push(&mut self, row: Row, meta: M) {
        self.rows.push(row);
        self.meta.push(meta);
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Builds one tensor per model input, shaped `[rows, row_shape...]`, and hands back the
    /// metadata in row order.
    pub fn into_tensors(
        self,
        row_shapes: &[Vec<usize>],
    ) -> Result<(Vec<Tensor>, Vec<M>), ModelError> {
        let n = self.rows.len();
        let mut tensors = Vec::with_capacity(row_shapes.len());
        for (i, shape) in row_shapes.iter().enumerate() {
            let len: usize = shape.iter().product();
            let mut data = Vec::with_capacity(n * len);
            for row in &self.rows {
                data.extend_from_slice(&row.values[i]);
            }
            let mut full = Vec::with_capacity(shape.len() + 1);
            full.push(n);
            full.extend_from_slice(shape);
            let t =
                Tensor::from_shape(&full, &data).map_err(|e| ModelError::Run(format!("{e:#}")))?;
            tensors.push(t);
        }
        Ok((tensors, self.meta))
    }
}

/// Splits batch outputs back into per-record slices: `result[r][o]` is record `r`'s part of
/// output `o`.
pub fn split_outputs(outputs: &[Tensor], rows: usize) -> Result<Vec<Vec<&[f32]>>, ModelError> {
    let mut per_output = Vec::with_capacity(outputs.len());
    for (o, t) in outputs.iter().enumerate() {
        let values = t
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(|e| ModelError::Run(format!("output {o}: {e:#}")))?;
        if t.shape().first() != Some(&rows) || rows == 0 || values.len() % rows != 0 {
            return Err(ModelError::Run(format!(
                "output {o} has shape {:?}, expected {rows} rows along the first dimension",
                t.shape()
            )));
        }
        per_output.push(values.chunks_exact(values.len() / rows).collect::<Vec<_>>());
    }
    Ok((0..rows)
        .map(|r| per_output.iter().map(|chunks| chunks[r]).collect())
        .collect())
}
