//! The journal's wire codec: a [`JournalBatch`] as postcard bytes, the body of
//! `POST /v1/journal` (docs/JOURNAL.md draws the bytes; the JSON acknowledgement is
//! `net::peer::JournalAck`).

use crate::model::{BatchError, JournalBatch, JOURNAL_WIRE_VERSION};
use thiserror::Error;

/// Why a batch could not be decoded. The receiver answers 400 and stores nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JournalWireError {
    #[error("malformed journal batch: {0}")]
    Malformed(String),
    #[error("journal wire version {0} is not supported (this merkmail speaks version {JOURNAL_WIRE_VERSION})")]
    Version(u8),
    #[error("too many items in a journal batch: {0}")]
    TooMany(String),
    #[error("invalid journal batch: {0}")]
    Invalid(String),
}

impl From<BatchError> for JournalWireError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Version(v) => JournalWireError::Version(v),
            BatchError::TooMany(m) => JournalWireError::TooMany(m),
            BatchError::Invalid(m) => JournalWireError::Invalid(m),
        }
    }
}

pub fn encode_batch(batch: &JournalBatch) -> Vec<u8> {
    // Serialising plain data cannot fail; an empty body would be refused loudly.
    postcard::to_allocvec(batch).unwrap_or_default()
}

/// Decodes and checks a batch: version, sizes, seq order, names. Never panics on any input;
/// allocation follows the bytes actually present (postcard reads lengths cautiously).
pub fn decode_batch(bytes: &[u8]) -> Result<JournalBatch, JournalWireError> {
    match bytes.first() {
        None => return Err(JournalWireError::Malformed("empty body".into())),
        Some(&v) if v != JOURNAL_WIRE_VERSION => return Err(JournalWireError::Version(v)),
        Some(_) => {}
    }
    let (batch, rest): (JournalBatch, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| JournalWireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(JournalWireError::Malformed(format!(
            "{} bytes after the batch",
            rest.len()
        )));
    }
    batch.check()?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_check_reads_the_same_as_the_wire_error_it_becomes() {
        for e in [
            BatchError::Version(9),
            BatchError::TooMany("x".into()),
            BatchError::Invalid("y".into()),
        ] {
            assert_eq!(e.to_string(), JournalWireError::from(e.clone()).to_string());
        }
    }
}
