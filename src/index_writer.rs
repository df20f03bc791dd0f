//! How the Node index takes watch events in. kube-runtime's reflector builds every (re-)list in a second
//! map and swaps it in when the list is whole, so for the time of a re-list the index is held twice: ~1.1
//! MiB at 1,000 nodes, 5 times that at 5,000. The soak saw it as a step in a follower's memory that never
//! went away, at the first re-list of its life (after the API server restarted): the allocator keeps what a
//! peak took. So only the first list goes through kube's buffer (the index is empty then, nothing is held
//! twice); a re-list updates the index in place: each listed node replaces its entry as it arrives, and
//! the nodes the list did not bring are deleted once it is whole. Meanwhile readers see each node either
//! as it was or as listed, never a node missing that exists.

use std::collections::HashSet;

use kube::Resource;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// What one watch event does to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// kube-runtime's own handling: everything before the first list is whole, and live changes after.
    AsKube,
    /// A re-list begins: nothing changes yet.
    StartRelist,
    /// A node of a re-list: it replaces its entry now.
    Upsert,
    /// The re-list is whole: the nodes it did not bring are deleted.
    FinishRelist,
}

/// The step for an event of kind `event`, once the first list is whole (`listed`) or not. Pure.
pub fn step<K>(listed: bool, event: &Event<K>) -> Step {
    match (listed, event) {
        (false, _) | (true, Event::Apply(_) | Event::Delete(_)) => Step::AsKube,
        (true, Event::Init) => Step::StartRelist,
        (true, Event::InitApply(_)) => Step::Upsert,
        (true, Event::InitDone) => Step::FinishRelist,
    }
}

/// The index's writer: kube's [`Writer`] for the first list and live changes, in place for re-lists.
pub struct IndexWriter<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer: Writer<K>,
    reader: Store<K>,
    listed: bool,
    /// The nodes a re-list in progress has brought.
    relisted: HashSet<ObjectRef<K>>,
}

impl<K> IndexWriter<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub fn new(writer: Writer<K>) -> Self {
        Self {
            reader: writer.as_reader(),
            writer,
            listed: false,
            relisted: HashSet::new(),
        }
    }

    /// Takes `event` into the index and hands it back unchanged, for the rest of the stream.
    pub fn take(&mut self, event: Event<K>) -> Event<K> {
        match step(self.listed, &event) {
            Step::AsKube => {
                self.writer.apply_watcher_event(&event);
                if matches!(event, Event::InitDone) {
                    self.listed = true;
                }
                event
            }
            Step::StartRelist => {
                self.relisted.clear();
                event
            }
            Step::Upsert => {
                let Event::InitApply(object) = event else {
                    return event;
                };
                self.relisted.insert(ObjectRef::from_obj(&object));
                // Moved into an Apply and back: the writer stores its own copy, as for any change.
                let applied = Event::Apply(object);
                self.writer.apply_watcher_event(&applied);
                let Event::Apply(object) = applied else {
                    unreachable!("built as an Apply just above")
                };
                Event::InitApply(object)
            }
            Step::FinishRelist => {
                for gone in self.reader.state() {
                    if !self.relisted.contains(&ObjectRef::from_obj(&*gone)) {
                        self.writer
                            .apply_watcher_event(&Event::Delete((*gone).clone()));
                    }
                }
                self.relisted = HashSet::new();
                event
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    fn object(name: &str, version: &str) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.name = Some(name.into());
        o.metadata.namespace = Some("ns".into());
        o.metadata.resource_version = Some(version.into());
        o
    }

    /// name=resourceVersion of every object in the store, sorted.
    fn contents(store: &Store<ConfigMap>) -> Vec<String> {
        let mut v: Vec<String> = store
            .state()
            .iter()
            .map(|o| {
                format!(
                    "{}={}",
                    o.metadata.name.as_deref().unwrap_or_default(),
                    o.metadata.resource_version.as_deref().unwrap_or_default()
                )
            })
            .collect();
        v.sort();
        v
    }

    fn listed(index: &mut IndexWriter<ConfigMap>, objects: &[ConfigMap]) {
        index.take(Event::Init);
        for o in objects {
            index.take(Event::InitApply(o.clone()));
        }
        index.take(Event::InitDone);
    }

    #[test]
    fn steps_follow_the_first_list() {
        let apply = Event::Apply(object("a", "1"));
        for event in [
            Event::Init,
            Event::InitApply(object("a", "1")),
            Event::InitDone,
        ] {
            assert_eq!(step(false, &event), Step::AsKube);
        }
        assert_eq!(step(true, &Event::<ConfigMap>::Init), Step::StartRelist);
        assert_eq!(
            step(true, &Event::InitApply(object("a", "1"))),
            Step::Upsert
        );
        assert_eq!(
            step(true, &Event::<ConfigMap>::InitDone),
            Step::FinishRelist
        );
        assert_eq!(step(true, &apply), Step::AsKube);
        assert_eq!(step(true, &Event::Delete(object("a", "1"))), Step::AsKube);
    }

    #[test]
    fn the_first_list_is_whole_before_it_is_seen() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let mut index = IndexWriter::new(writer);
        index.take(Event::Init);
        index.take(Event::InitApply(object("a", "1")));
        assert!(
            contents(&reader).is_empty(),
            "kube's buffer until the list is whole"
        );
        index.take(Event::InitDone);
        assert_eq!(contents(&reader), ["a=1"]);
    }

    #[test]
    fn a_relist_updates_the_index_in_place_and_deletes_what_it_did_not_bring() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let mut index = IndexWriter::new(writer);
        listed(&mut index, &[object("a", "1"), object("b", "1")]);
        assert_eq!(contents(&reader), ["a=1", "b=1"]);

        index.take(Event::Init);
        assert_eq!(
            contents(&reader),
            ["a=1", "b=1"],
            "a re-list starting changes nothing"
        );
        let handed_on = index.take(Event::InitApply(object("a", "2")));
        assert!(
            matches!(handed_on, Event::InitApply(ref o) if o.metadata.resource_version.as_deref() == Some("2"))
        );
        assert_eq!(
            contents(&reader),
            ["a=2", "b=1"],
            "a listed node replaces its entry at once"
        );
        index.take(Event::InitApply(object("c", "2")));
        index.take(Event::InitDone);
        assert_eq!(
            contents(&reader),
            ["a=2", "c=2"],
            "b was not listed: deleted"
        );

        // Live changes after it, as kube applies them.
        index.take(Event::Delete(object("a", "2")));
        index.take(Event::Apply(object("d", "3")));
        assert_eq!(contents(&reader), ["c=2", "d=3"]);
    }

    #[test]
    fn an_interrupted_relist_is_judged_by_the_list_that_completes() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let mut index = IndexWriter::new(writer);
        listed(&mut index, &[object("a", "1"), object("b", "1")]);
        // The first attempt brings a, then fails; the watcher lists again from the start.
        index.take(Event::Init);
        index.take(Event::InitApply(object("a", "2")));
        listed(&mut index, &[object("b", "2")]);
        assert_eq!(
            contents(&reader),
            ["b=2"],
            "a was in the failed attempt only"
        );
    }
}
