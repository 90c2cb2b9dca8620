//! How typed state is stored, as pure functions over bytes: encoding with a
//! TTL timestamp in front, decoding, TTL checks and restamping, handle and
//! namespace checks. The synchronous face ([`crate::KeyedStateBackendExt`])
//! and the asynchronous one ([`crate::asynchronous`]) both call these, so
//! they store, expire and refresh entries identically.

use std::borrow::{Borrow, Cow};

use crate::backend::MapVisit;
use crate::descriptor::{State, StateId, StateRef};
use crate::error::{Error, Result};
use crate::serializer::SharedSerializer;
use crate::ttl::{put_ttl_timestamp, split_ttl_value, SharedClock, StateTtlConfig, TtlStateVisibility, TtlUpdateType};

/// The id of the state behind `slot`, which must belong to backend `backend`.
#[inline]
pub(crate) fn state_id(backend: u64, slot: StateRef, name: &str) -> Result<StateId> {
    if slot.backend == backend {
        Ok(slot.id)
    } else {
        Err(Error::invalid(format!(
            "state {name:?} was registered with another backend"
        )))
    }
}

/// The serialized `ns` of state `h`.
pub(crate) fn namespace_bytes<H: State>(h: &H, ns: &H::Namespace) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    h.namespace_serializer()
        .serialize(ns, &mut buf)
        .map_err(|e| e.context(format!("namespace of state {:?}", h.name())))?;
    Ok(buf)
}

/// The time to stamp a write with, when the state has a TTL.
#[inline]
pub(crate) fn stamp_time(clock: &SharedClock, ttl: Option<&StateTtlConfig>) -> Option<u64> {
    ttl.map(|_| clock.now_millis())
}

/// Appends the encoding of `value` to `buf`, after a TTL timestamp if `stamp`.
#[inline]
pub(crate) fn encode_into<T>(
    buf: &mut Vec<u8>,
    ser: &SharedSerializer<T>,
    value: &T,
    stamp: Option<u64>,
    name: &str,
) -> Result<()> {
    if let Some(now) = stamp {
        put_ttl_timestamp(buf, now);
    }
    ser.serialize(value, buf)
        .map_err(|e| e.context(format!("state {name:?}")))
}

/// Map entries encoded into one buffer: each user key, then its value
/// (after a TTL timestamp if stamped).
pub(crate) struct EncodedEntries {
    buf: Vec<u8>,
    /// Start of the user key, of the value, and end, of each entry.
    bounds: Vec<(usize, usize, usize)>,
}

impl EncodedEntries {
    /// Encodes every entry, in order.
    pub(crate) fn new<UK, UV, K2, V2>(
        user_key: &SharedSerializer<UK>,
        value: &SharedSerializer<UV>,
        entries: impl IntoIterator<Item = (K2, V2)>,
        stamp: Option<u64>,
        name: &str,
    ) -> Result<Self>
    where
        K2: Borrow<UK>,
        V2: Borrow<UV>,
    {
        let mut buf = Vec::new();
        let mut bounds = Vec::new();
        for (k, v) in entries {
            let start = buf.len();
            encode_into(&mut buf, user_key, k.borrow(), None, name)?;
            let split = buf.len();
            encode_into(&mut buf, value, v.borrow(), stamp, name)?;
            bounds.push((start, split, buf.len()));
        }
        Ok(EncodedEntries { buf, bounds })
    }

    /// The (user key, value) pairs.
    pub(crate) fn pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.bounds
            .iter()
            .map(|&(a, b, c)| (&self.buf[a..b], &self.buf[b..c]))
            .collect()
    }
}

/// Encodes each element on its own.
pub(crate) fn encode_all<T, I>(
    ser: &SharedSerializer<T>,
    elements: I,
    stamp: Option<u64>,
    name: &str,
) -> Result<Vec<Vec<u8>>>
where
    I: IntoIterator,
    I::Item: Borrow<T>,
{
    elements
        .into_iter()
        .map(|e| {
            let mut buf = Vec::with_capacity(16);
            encode_into(&mut buf, ser, e.borrow(), stamp, name)?;
            Ok(buf)
        })
        .collect()
}

/// Decodes the user bytes of a value of state `name`.
#[inline]
pub(crate) fn decode<T>(ser: &SharedSerializer<T>, bytes: &[u8], name: &str) -> Result<T> {
    ser.deserialize(bytes).map_err(|e| e.context(format!("state {name:?}")))
}

/// Replaces `buf` with the user bytes `user` stamped at `now`.
pub(crate) fn restamp_into(buf: &mut Vec<u8>, now: u64, user: &[u8]) {
    buf.clear();
    put_ttl_timestamp(buf, now);
    buf.extend_from_slice(user);
}

/// The user bytes `user` stamped at `now`.
pub(crate) fn restamp(now: u64, user: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    restamp_into(&mut v, now, user);
    v
}

/// The outcome of a TTL check on one stored entry.
pub(crate) enum TtlRead<'a> {
    /// Not expired: user bytes, and whether to restamp them.
    Live(&'a [u8], bool),
    /// Expired: user bytes, and whether they may still be returned.
    Expired(&'a [u8], bool),
}

/// Checks the stored entry `raw` of state `name` under `ttl` at `now`;
/// `for_read` when its value is about to be shown (a read may refresh it,
/// or show it expired), not overwritten.
pub(crate) fn check_ttl<'a>(
    ttl: &StateTtlConfig,
    raw: &'a [u8],
    now: u64,
    for_read: bool,
    name: &str,
) -> Result<TtlRead<'a>> {
    let (ts, user) = split_ttl_value(raw).map_err(|e| e.context(format!("state {name:?}")))?;
    if ttl.is_expired(ts, now) {
        let visible = for_read && ttl.visibility() == TtlStateVisibility::ReturnExpiredIfNotCleanedUp;
        Ok(TtlRead::Expired(user, visible))
    } else {
        Ok(TtlRead::Live(
            user,
            for_read && ttl.update_type() == TtlUpdateType::OnReadAndWrite,
        ))
    }
}

/// What a TTL-checked read of one entry found, decoded.
pub(crate) enum Checked<T> {
    Absent,
    /// Live; `restamped` when the refreshed entry is waiting to be written.
    Live {
        value: T,
        restamped: bool,
    },
    /// Expired (to be removed): the value if it may still be returned.
    Expired(Option<T>),
}

/// Checks a stored entry under TTL and decodes what may be returned; a live
/// entry due for a refresh is restamped into `restamped`.
pub(crate) fn check_entry<T>(
    ttl: &StateTtlConfig,
    raw: Option<&[u8]>,
    now: u64,
    for_read: bool,
    name: &str,
    restamped: &mut Vec<u8>,
    decode: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<Checked<T>> {
    let Some(raw) = raw else { return Ok(Checked::Absent) };
    match check_ttl(ttl, raw, now, for_read, name)? {
        TtlRead::Live(user, refresh) => {
            if refresh {
                restamp_into(restamped, now, user);
            }
            Ok(Checked::Live {
                value: decode(user)?,
                restamped: refresh,
            })
        }
        TtlRead::Expired(user, visible) => Ok(Checked::Expired(if visible { Some(decode(user)?) } else { None })),
    }
}

/// Checks the stored elements `raw` of a list under TTL, calling `emit` for
/// each element to pass on: with `for_read`, the user bytes of the elements
/// to show; otherwise the stored elements, stamps included, that are still
/// live (for moving them in a merge). Returns the list to write back when
/// the check changed it (expired elements dropped, refreshed ones
/// restamped).
pub(crate) fn check_list<'r>(
    ttl: &StateTtlConfig,
    raw: &'r [Vec<u8>],
    now: u64,
    for_read: bool,
    name: &str,
    mut emit: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<Vec<Cow<'r, [u8]>>>> {
    let mut keep: Vec<Cow<'r, [u8]>> = Vec::with_capacity(raw.len());
    let mut changed = false;
    for e in raw {
        match check_ttl(ttl, e, now, for_read, name)? {
            TtlRead::Live(user, refresh) => {
                if refresh {
                    changed = true;
                    keep.push(Cow::Owned(restamp(now, user)));
                } else {
                    keep.push(Cow::Borrowed(e));
                }
                emit(if for_read { user } else { e })?;
            }
            TtlRead::Expired(user, visible) => {
                changed = true;
                if visible {
                    emit(user)?;
                }
            }
        }
    }
    Ok(changed.then_some(keep))
}

/// What a map visit needs besides the entry: the state's serializers, TTL,
/// name and the time.
pub(crate) struct MapVisitCtx<'a, UK, UV> {
    pub(crate) user_key: &'a SharedSerializer<UK>,
    pub(crate) value: &'a SharedSerializer<UV>,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) now: u64,
    pub(crate) name: &'a str,
}

/// Visits one stored map entry `(uk, raw)` under TTL: shows `keep` the live
/// entry (or an expired one that may still be returned) and says what to do
/// with it; a live entry to refresh is pushed, restamped, onto `refreshed`.
pub(crate) fn visit_map_entry<UK, UV>(
    v: &MapVisitCtx<'_, UK, UV>,
    uk: &[u8],
    raw: &[u8],
    keep: &mut impl FnMut(&UK, &UV) -> bool,
    refreshed: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<MapVisit> {
    let name = v.name;
    let user = match &v.ttl {
        None => raw,
        Some(ttl) => {
            let (ts, user) = split_ttl_value(raw).map_err(|e| e.context(format!("state {name:?}")))?;
            if ttl.is_expired(ts, v.now) {
                if ttl.visibility() == TtlStateVisibility::ReturnExpiredIfNotCleanedUp {
                    keep(&decode(v.user_key, uk, name)?, &decode(v.value, user, name)?);
                }
                return Ok(MapVisit::Remove);
            }
            user
        }
    };
    let k = decode(v.user_key, uk, name)?;
    let value = decode(v.value, user, name)?;
    if !keep(&k, &value) {
        return Ok(MapVisit::Remove);
    }
    if v.ttl.is_some_and(|t| t.update_type() == TtlUpdateType::OnReadAndWrite) {
        refreshed.push((uk.to_vec(), restamp(v.now, user)));
    }
    Ok(MapVisit::Keep)
}
