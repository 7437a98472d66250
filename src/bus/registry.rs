//! The allow-list: every registered topic, by type and by name, with the
//! hooks stored for its type when it was registered.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::TopicConfig;
use crate::errors::BuildError;
use crate::event::Event;
use crate::id::BusId;
use crate::name::{Pattern, Topic};
use crate::pool::PoolSlot;
use crate::subscribe::{self, PartFn};
use crate::topic::{ErasedTopic, TopicState};
use crate::watch::WatchSlot;

pub(crate) struct Entry {
    pub(crate) name: &'static str,
    pub(crate) type_name: &'static str,
    pub(crate) config: TopicConfig,
    /// The `TopicState<E>` of the topic's type, for typed access.
    pub(crate) state: Arc<dyn Any + Send + Sync>,
    pub(crate) erased: Arc<dyn ErasedTopic>,
    /// Makes one topic's part of a wildcard subscription: `E`'s hook,
    /// stored when `E` was registered.
    pub(crate) part: PartFn,
}

/// The allow-list: every registered topic, by type and by name. Fixed once
/// the bus is built, so look-ups take no lock.
pub(crate) struct Registry {
    /// The bus the topics belong to.
    pub(crate) bus: BusId,
    by_type: HashMap<TypeId, Entry>,
    by_name: BTreeMap<&'static str, TypeId>,
    /// The bus's watch configuration, set when the bus is built.
    pub(crate) watch: WatchSlot,
    /// The bus's worker pools, made when the bus is built.
    pub(crate) pools: PoolSlot,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            bus: BusId::next(),
            by_type: HashMap::new(),
            by_name: BTreeMap::new(),
            watch: WatchSlot::default(),
            pools: PoolSlot::default(),
        }
    }

    pub(crate) fn register<E: Event>(&mut self, config: TopicConfig) -> Result<(), BuildError> {
        let name = E::TOPIC;
        let type_name = std::any::type_name::<E>();
        Topic::validate(name).map_err(|source| BuildError::InvalidTopic { type_name, source })?;
        if config.default_capacity() == 0 {
            return Err(BuildError::ZeroCapacity { topic: name });
        }
        if let Some(&other) = self.by_name.get(name) {
            let existing = &self.by_type[&other];
            if other != TypeId::of::<E>() {
                return Err(BuildError::TopicConflict {
                    topic: name,
                    first: existing.type_name,
                    second: type_name,
                });
            }
            if existing.config != config {
                return Err(BuildError::ConfigConflict { topic: name });
            }
            return Ok(());
        }
        let state = Arc::new(TopicState::<E>::new(
            config.clone(),
            Arc::clone(&self.watch),
            Arc::clone(&self.pools),
            self.bus,
        ));
        self.by_name.insert(name, TypeId::of::<E>());
        self.by_type.insert(
            TypeId::of::<E>(),
            Entry {
                name,
                type_name,
                config,
                state: state.clone(),
                erased: state,
                part: subscribe::part::<E>,
            },
        );
        Ok(())
    }

    pub(crate) fn state<E: Event>(&self) -> Option<&TopicState<E>> {
        self.by_type
            .get(&TypeId::of::<E>())
            .and_then(|entry| entry.state.downcast_ref())
    }

    pub(crate) fn state_arc<E: Event>(&self) -> Option<Arc<TopicState<E>>> {
        self.by_type
            .get(&TypeId::of::<E>())
            .and_then(|entry| Arc::clone(&entry.state).downcast().ok())
    }

    /// The topic registered under `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|t| &self.by_type[t])
    }

    /// The registered topics `pattern` matches, in name order.
    pub(crate) fn matching<'a>(
        &'a self,
        pattern: &'a Pattern,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries().filter(|e| pattern.matches(e.name))
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_name.values().map(|t| &self.by_type[t])
    }
}
