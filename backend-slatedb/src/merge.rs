//! The merge operator behind list appends.

use bytes::{Bytes, BytesMut};
use slatedb::{MergeOperator, MergeOperatorError};

/// Concatenates packed lists (`varint(len) | bytes` per element): an append
/// is a merge of the new elements, and reading the key gives the whole
/// list. Associative, as SlateDB requires; it never decodes anything.
///
/// Every SlateDB client that reads or compacts a backend's database (the
/// database itself, an admin, a reader, a compactor) must be configured
/// with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListConcat;

impl MergeOperator for ListConcat {
    fn merge(&self, _key: &Bytes, existing: Option<Bytes>, operand: Bytes) -> Result<Bytes, MergeOperatorError> {
        match existing {
            None => Ok(operand),
            Some(existing) if existing.is_empty() => Ok(operand),
            Some(existing) => {
                let mut out = BytesMut::with_capacity(existing.len() + operand.len());
                out.extend_from_slice(&existing);
                out.extend_from_slice(&operand);
                Ok(out.freeze())
            }
        }
    }

    fn merge_batch(
        &self,
        _key: &Bytes,
        existing: Option<Bytes>,
        operands: &[Bytes],
    ) -> Result<Bytes, MergeOperatorError> {
        if existing.is_none() && operands.is_empty() {
            return Err(MergeOperatorError::EmptyBatch);
        }
        let len = existing.as_ref().map_or(0, Bytes::len) + operands.iter().map(Bytes::len).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        if let Some(existing) = &existing {
            out.extend_from_slice(existing);
        }
        for operand in operands {
            out.extend_from_slice(operand);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_concatenates_and_is_associative() {
        let k = Bytes::new();
        let (a, b, c) = (
            Bytes::from_static(b"\x01a"),
            Bytes::from_static(b"\x01b"),
            Bytes::from_static(b"\x01c"),
        );
        let ab = ListConcat.merge(&k, Some(a.clone()), b.clone()).unwrap();
        let left = ListConcat.merge(&k, Some(ab), c.clone()).unwrap();
        let bc = ListConcat.merge(&k, Some(b.clone()), c.clone()).unwrap();
        let right = ListConcat.merge(&k, Some(a.clone()), bc).unwrap();
        assert_eq!(left, right);
        assert_eq!(&left[..], b"\x01a\x01b\x01c");
        let batch = ListConcat.merge_batch(&k, None, &[a, b, c]).unwrap();
        assert_eq!(batch, left);
        assert!(ListConcat.merge_batch(&k, None, &[]).is_err());
    }
}
