//! Serializers turn user keys, namespaces and values into bytes and back.
//!
//! Every serializer has an identity ([`SerializerId`]: a name and a version)
//! that is written into snapshots. Restoring state with a serializer whose
//! identity differs fails with [`ErrorKind::Incompatible`](crate::ErrorKind)
//! instead of decoding garbage, unless the new serializer declares that it
//! reads the old one ([`Serializer::compatibility`]; [`Versioned`] is the
//! usual way): then the state's values are migrated when it is registered,
//! as Flink's `TypeSerializerSnapshot#resolveSchemaCompatibility` allows.
//!
//! ```
//! use flowstate_api::serializer::{Bincode, SchemaCompatibility, Serializer, Versioned};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct UserV1 { name: String }
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct UserV2 { name: String, visits: u64 }
//!
//! // Version 2 of the state's type, which reads values written by version 1.
//! let v2 = Versioned::new(Bincode::<UserV2>::named("user", 2))
//!     .migrates_from(Bincode::<UserV1>::named("user", 1), |old: UserV1| UserV2 { name: old.name, visits: 0 });
//! let v1 = Bincode::<UserV1>::named("user", 1).id();
//! assert_eq!(v2.compatibility(&v1), SchemaCompatibility::AfterMigration);
//! ```

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The identity of a serializer: what wrote some bytes, and in which version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SerializerId {
    /// A stable name of the format and type, e.g. `bincode2:u64`.
    pub name: String,
    /// The version of that format; bump it when the encoding changes.
    pub version: u32,
}

impl SerializerId {
    /// A serializer identity.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        SerializerId {
            name: name.into(),
            version,
        }
    }
}

impl fmt::Display for SerializerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// Turns values of `T` into bytes and back.
///
/// Implementations must be deterministic: equal values give equal bytes
/// (keys are hashed and compared by their bytes).
pub trait Serializer<T>: Send + Sync {
    /// Appends the encoding of `value` to `out`.
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<()>;
    /// Decodes a value that fills `bytes` exactly.
    fn deserialize(&self, bytes: &[u8]) -> Result<T>;
    /// The identity written into snapshots and checked on restore.
    fn id(&self) -> SerializerId;

    /// How this serializer reads values written by the serializer
    /// `written` (the identity a snapshot recorded). By default only its
    /// own identity is read, as is.
    fn compatibility(&self, written: &SerializerId) -> SchemaCompatibility {
        if *written == self.id() {
            SchemaCompatibility::AsIs
        } else {
            SchemaCompatibility::Incompatible
        }
    }

    /// Decodes `bytes` written by the serializer `written`: one this
    /// serializer reads as is, or migrates from. By default only its own.
    fn deserialize_written_by(&self, written: &SerializerId, bytes: &[u8]) -> Result<T> {
        if *written == self.id() {
            self.deserialize(bytes)
        } else {
            Err(Error::incompatible(format!(
                "serializer {} cannot read values written by {written}",
                self.id()
            )))
        }
    }
}

/// Whether a serializer reads what another one wrote (see
/// [`Serializer::compatibility`]), as Flink's schema compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaCompatibility {
    /// The bytes are read as they are.
    AsIs,
    /// The bytes are read with
    /// [`deserialize_written_by`](Serializer::deserialize_written_by) and
    /// written again in this serializer's encoding: a restored state is
    /// migrated when it is registered.
    AfterMigration,
    /// The bytes cannot be read: restoring fails with `Incompatible`.
    Incompatible,
}

/// Decodes bytes of an older serializer into the current type.
type Reader<T> = Box<dyn Fn(&[u8]) -> Result<T> + Send + Sync>;

/// A serializer that writes with `current` and also reads what older
/// serializers wrote, converting their values: how a state's type gains a
/// field between releases of a job (see the [module docs](self)).
pub struct Versioned<T> {
    current: Box<dyn Serializer<T>>,
    older: Vec<(SerializerId, Reader<T>)>,
}

impl<T> Versioned<T> {
    /// Writes and reads with `current`.
    pub fn new(current: impl Serializer<T> + 'static) -> Self {
        Versioned {
            current: Box::new(current),
            older: Vec::new(),
        }
    }

    /// Also reads values written by `old`, converted with `convert`.
    pub fn migrates_from<O: 'static>(
        mut self,
        old: impl Serializer<O> + 'static,
        convert: impl Fn(O) -> T + Send + Sync + 'static,
    ) -> Self {
        let id = old.id();
        self.older
            .push((id, Box::new(move |bytes: &[u8]| old.deserialize(bytes).map(&convert))));
        self
    }

    /// Shared, as descriptors take it.
    pub fn shared(self) -> SharedSerializer<T>
    where
        T: 'static,
    {
        Arc::new(self)
    }
}

impl<T> Serializer<T> for Versioned<T> {
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        self.current.serialize(value, out)
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<T> {
        self.current.deserialize(bytes)
    }

    fn id(&self) -> SerializerId {
        self.current.id()
    }

    fn compatibility(&self, written: &SerializerId) -> SchemaCompatibility {
        match self.current.compatibility(written) {
            SchemaCompatibility::Incompatible if self.older.iter().any(|(id, _)| id == written) => {
                SchemaCompatibility::AfterMigration
            }
            c => c,
        }
    }

    fn deserialize_written_by(&self, written: &SerializerId, bytes: &[u8]) -> Result<T> {
        match self.older.iter().find(|(id, _)| id == written) {
            Some((_, read)) => read(bytes).map_err(|e| e.context(format!("migrating a value written by {written}"))),
            None => self.current.deserialize_written_by(written, bytes),
        }
    }
}

/// A shared serializer.
pub type SharedSerializer<T> = Arc<dyn Serializer<T>>;

/// Largest allocation one decode may claim (256 MiB): hostile length
/// prefixes fail instead of exhausting memory.
const DECODE_LIMIT: usize = 256 << 20;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// The default serializer: serde + bincode 2 with its standard configuration
/// (little-endian, variable-length integers).
///
/// Its identity is `bincode2:<type name>` unless set with [`Bincode::named`];
/// give types whose Rust path may change a stable name.
pub struct Bincode<T> {
    name: Option<String>,
    version: u32,
    _type: PhantomData<fn() -> T>,
}

impl<T> Bincode<T> {
    /// The default bincode serializer for `T`.
    pub fn new() -> Self {
        Bincode {
            name: None,
            version: 1,
            _type: PhantomData,
        }
    }

    /// A bincode serializer with an explicit, stable identity.
    pub fn named(name: impl Into<String>, version: u32) -> Self {
        Bincode {
            name: Some(name.into()),
            version,
            _type: PhantomData,
        }
    }
}

impl<T> Default for Bincode<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Serializer<T> for Bincode<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    #[inline]
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        if varint::encode(value, out) {
            return Ok(());
        }
        bincode::serde::encode_into_std_write(value, out, bincode_config())
            .map(|_| ())
            .map_err(|e| Error::invalid(format!("cannot encode {}: {e}", type_name::<T>())).with_source(e))
    }

    #[inline]
    fn deserialize(&self, bytes: &[u8]) -> Result<T> {
        if let Some(value) = varint::decode(bytes) {
            return Ok(value);
        }
        let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| {
            Error::corrupted(format!(
                "cannot decode {} from {} bytes: {e}",
                type_name::<T>(),
                bytes.len()
            ))
            .with_source(e)
        })?;
        if used != bytes.len() {
            return Err(Error::corrupted(format!(
                "decoding {} used {used} of {} bytes",
                type_name::<T>(),
                bytes.len()
            )));
        }
        Ok(value)
    }

    fn id(&self) -> SerializerId {
        match &self.name {
            Some(name) => SerializerId::new(name.clone(), self.version),
            None => SerializerId::new(format!("bincode2:{}", type_name::<T>()), self.version),
        }
    }
}

/// The bytes bincode's standard configuration gives `u64` and `i64` (one
/// variable-length integer; `i64` zigzag-encoded), written and read without
/// going through serde: the most common keys and values, on every access.
/// Anything else, and any input these do not read exactly as bincode
/// would, goes through bincode.
mod varint {
    use std::any::Any;

    /// `bytes` as a `T` if `T` is `u64` or `i64` and `bytes` is exactly one
    /// varint that bincode reads as one.
    #[inline]
    pub(super) fn decode<T: 'static>(bytes: &[u8]) -> Option<T> {
        let mut out: Option<T> = None;
        let slot = &mut out as &mut dyn Any;
        if let Some(s) = slot.downcast_mut::<Option<u64>>() {
            *s = Some(read(bytes)?);
        } else if let Some(s) = slot.downcast_mut::<Option<i64>>() {
            *s = Some(unzigzag(read(bytes)?));
        }
        out
    }

    /// Appends `value`'s encoding if `T` is `u64` or `i64`; false otherwise.
    #[inline]
    pub(super) fn encode<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
        let any = value as &dyn Any;
        let n = if let Some(v) = any.downcast_ref::<u64>() {
            *v
        } else if let Some(v) = any.downcast_ref::<i64>() {
            zigzag(*v)
        } else {
            return false;
        };
        write(n, out);
        true
    }

    fn zigzag(v: i64) -> u64 {
        if v < 0 {
            !(v as u64) * 2 + 1
        } else {
            (v as u64) * 2
        }
    }

    fn unzigzag(n: u64) -> i64 {
        if n.is_multiple_of(2) {
            (n / 2) as i64
        } else {
            !(n / 2) as i64
        }
    }

    /// bincode's varint: below 251 one byte; else 251, 252 or 253 and the
    /// value as a little-endian u16, u32 or u64.
    #[inline]
    fn write(n: u64, out: &mut Vec<u8>) {
        if n < 251 {
            out.push(n as u8);
        } else if n <= u64::from(u16::MAX) {
            out.push(251);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        } else if n <= u64::from(u32::MAX) {
            out.push(252);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        } else {
            out.push(253);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    #[inline]
    fn read(bytes: &[u8]) -> Option<u64> {
        match *bytes {
            [b] if b < 251 => Some(u64::from(b)),
            [251, a, b] => Some(u64::from(u16::from_le_bytes([a, b]))),
            [252, a, b, c, d] => Some(u64::from(u32::from_le_bytes([a, b, c, d]))),
            [253, a, b, c, d, e, f, g, h] => Some(u64::from_le_bytes([a, b, c, d, e, f, g, h])),
            _ => None,
        }
    }
}

/// Byte vectors stored as they are, with no length prefix.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawBytes;

impl Serializer<Vec<u8>> for RawBytes {
    #[inline]
    fn serialize(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(value);
        Ok(())
    }

    #[inline]
    fn deserialize(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }

    fn id(&self) -> SerializerId {
        SerializerId::new("raw-bytes", 1)
    }
}

/// The namespace of state that is not scoped to a window or other namespace.
/// It serializes to zero bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VoidNamespace;

/// The serializer of [`VoidNamespace`].
#[derive(Debug, Default, Clone, Copy)]
pub struct VoidNamespaceSerializer;

impl Serializer<VoidNamespace> for VoidNamespaceSerializer {
    #[inline]
    fn serialize(&self, _: &VoidNamespace, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn deserialize(&self, bytes: &[u8]) -> Result<VoidNamespace> {
        if bytes.is_empty() {
            Ok(VoidNamespace)
        } else {
            Err(Error::corrupted(format!(
                "void namespace has {} bytes, expected 0",
                bytes.len()
            )))
        }
    }

    fn id(&self) -> SerializerId {
        SerializerId::new("void-namespace", 1)
    }
}

/// The serializer a type gets when none is given: bincode for serde types.
pub fn default_serializer<T>() -> SharedSerializer<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    Arc::new(Bincode::<T>::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `u64`/`i64` fast paths write exactly bincode's bytes and read
    /// exactly what bincode reads, with the same values, for every length
    /// class and its edges, and for arbitrary short byte strings.
    #[test]
    fn integer_fast_paths_match_bincode() {
        fn through_bincode<T: Serialize>(v: &T) -> Vec<u8> {
            bincode::serde::encode_to_vec(v, bincode_config()).unwrap()
        }
        fn read_bincode<T: DeserializeOwned>(b: &[u8]) -> Option<T> {
            match bincode::serde::decode_from_slice::<T, _>(b, bincode_config()) {
                Ok((v, used)) if used == b.len() => Some(v),
                _ => None,
            }
        }
        let mut edges: Vec<u64> = vec![0, 1, 250, 251, 252, 253, 255, 256, u64::MAX];
        for bits in [16u32, 32, 63, 64] {
            let top = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
            edges.extend([top - 1, top, top.wrapping_add(1)]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            edges.push(x >> (x % 64));
        }
        let (u, i) = (Bincode::<u64>::new(), Bincode::<i64>::new());
        for &n in &edges {
            let mut buf = Vec::new();
            u.serialize(&n, &mut buf).unwrap();
            assert_eq!(buf, through_bincode(&n), "u64 {n}");
            assert_eq!(u.deserialize(&buf).unwrap(), n);
            let v = n as i64;
            buf.clear();
            i.serialize(&v, &mut buf).unwrap();
            assert_eq!(buf, through_bincode(&v), "i64 {v}");
            assert_eq!(i.deserialize(&buf).unwrap(), v);
        }
        // Arbitrary inputs: accepted exactly when bincode accepts them.
        for len in 0..=10usize {
            for round in 0..2_000u64 {
                let mut b = Vec::with_capacity(len);
                for j in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b.push(if j == 0 && round % 2 == 0 {
                        248 + (x % 8) as u8
                    } else {
                        x as u8
                    });
                }
                assert_eq!(u.deserialize(&b).ok(), read_bincode::<u64>(&b), "u64 from {b:?}");
                assert_eq!(i.deserialize(&b).ok(), read_bincode::<i64>(&b), "i64 from {b:?}");
            }
        }
    }

    #[test]
    fn bincode_round_trips_and_names_type() {
        let s = Bincode::<(u64, String)>::new();
        let mut buf = Vec::new();
        s.serialize(&(7, "x".into()), &mut buf).unwrap();
        assert_eq!(s.deserialize(&buf).unwrap(), (7, "x".to_string()));
        assert_eq!(s.id().name, "bincode2:(u64, alloc::string::String)");
    }

    #[test]
    fn bincode_u64_encoding_is_fixed() {
        // Key bytes feed the key-group hash, so their encoding is part of the format.
        let s = Bincode::<u64>::new();
        let mut buf = Vec::new();
        s.serialize(&42, &mut buf).unwrap();
        assert_eq!(buf, [42]);
        buf.clear();
        s.serialize(&300, &mut buf).unwrap();
        assert_eq!(buf, [251, 44, 1]);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let s = Bincode::<u8>::new();
        assert_eq!(s.deserialize(&[1, 2]).unwrap_err().kind(), crate::ErrorKind::Corrupted);
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A Vec<u64> claiming u64::MAX elements in 9 bytes.
        let s = Bincode::<Vec<u64>>::new();
        let bytes = [253, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(s.deserialize(&bytes).is_err());
    }
}
