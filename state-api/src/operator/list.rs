//! Operator list state (split and union): the typed handle.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::store::*;
use crate::checkpoint::DistributionMode;
use crate::descriptor::{ListStateDescriptor, StateDescriptor};
use crate::error::Result;
use crate::serializer::SharedSerializer;

pub(super) struct ListInner<T> {
    pub(super) at: StateRef,
    pub(super) mode: DistributionMode,
    pub(super) element: SharedSerializer<T>,
}

/// A registered operator list state (split or union): a cheap, clonable
/// handle whose operations take the store.
pub struct OperatorListState<T>(Arc<ListInner<T>>);

impl<T> Clone for OperatorListState<T> {
    fn clone(&self) -> Self {
        OperatorListState(Arc::clone(&self.0))
    }
}

impl<T> fmt::Debug for OperatorListState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorListState")
            .field("name", &self.0.at.name)
            .field("mode", &self.0.mode)
            .finish()
    }
}

impl<T> OperatorListState<T> {
    /// The state's name.
    pub fn name(&self) -> &str {
        &self.0.at.name
    }

    /// How its elements are distributed on restore: split or union.
    pub fn mode(&self) -> DistributionMode {
        self.0.mode
    }

    pub(super) fn encode(&self, element: &T) -> Result<Bytes> {
        let mut buf = Vec::new();
        self.0
            .element
            .serialize(element, &mut buf)
            .map_err(|e| e.context(format!("operator state {:?}", self.name())))?;
        Ok(Bytes::from(buf))
    }

    pub(super) fn encode_all<I>(&self, elements: I) -> Result<Vec<Bytes>>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        elements.into_iter().map(|e| self.encode(e.borrow())).collect()
    }

    /// Every element, in order.
    pub fn get(&self, store: &OperatorStateStore) -> Result<Vec<T>> {
        store
            .list(&self.0.at)?
            .iter()
            .map(|b| {
                self.0
                    .element
                    .deserialize(b)
                    .map_err(|e| e.context(format!("operator state {:?}", self.name())))
            })
            .collect()
    }

    /// Appends `element`.
    pub fn add(&self, store: &mut OperatorStateStore, element: impl Borrow<T>) -> Result<()> {
        let bytes = self.encode(element.borrow())?;
        Arc::make_mut(store.list_mut(&self.0.at)?).push(bytes);
        Ok(())
    }

    /// Appends every element of `elements`; none if one fails to serialize.
    pub fn add_all<I>(&self, store: &mut OperatorStateStore, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        let encoded = self.encode_all(elements)?;
        let list = store.list_mut(&self.0.at)?;
        if !encoded.is_empty() {
            Arc::make_mut(list).extend(encoded);
        }
        Ok(())
    }

    /// Replaces the elements with `elements`; nothing changes if one fails
    /// to serialize.
    pub fn update<I>(&self, store: &mut OperatorStateStore, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        let encoded = self.encode_all(elements)?;
        *store.list_mut(&self.0.at)? = Arc::new(encoded);
        Ok(())
    }

    /// Removes every element.
    pub fn clear(&self, store: &mut OperatorStateStore) -> Result<()> {
        *store.list_mut(&self.0.at)? = Arc::default();
        Ok(())
    }

    /// The number of elements.
    pub fn len(&self, store: &OperatorStateStore) -> Result<usize> {
        Ok(store.list(&self.0.at)?.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self, store: &OperatorStateStore) -> Result<bool> {
        Ok(self.len(store)? == 0)
    }
}

impl OperatorStateStore {
    /// Registers list state whose elements are split over the subtasks on
    /// restore (Flink's `getListState`).
    pub fn list_state<T>(&mut self, descriptor: &ListStateDescriptor<T>) -> Result<OperatorListState<T>> {
        self.register_list(descriptor, DistributionMode::Split)
    }

    /// Registers list state of which every subtask gets every element on
    /// restore (Flink's `getUnionListState`).
    pub fn union_list_state<T>(&mut self, descriptor: &ListStateDescriptor<T>) -> Result<OperatorListState<T>> {
        self.register_list(descriptor, DistributionMode::Union)
    }

    pub(super) fn register_list<T>(
        &mut self,
        descriptor: &ListStateDescriptor<T>,
        mode: DistributionMode,
    ) -> Result<OperatorListState<T>> {
        let element = Arc::clone(descriptor.element_serializer());
        let index = self.register(
            descriptor.name(),
            StateDescriptor::ttl(descriptor).is_some(),
            mode,
            element.id(),
            None,
        )?;
        Ok(OperatorListState(Arc::new(ListInner {
            at: self.state_ref(index),
            mode,
            element,
        })))
    }
}
