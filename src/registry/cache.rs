//! The resolution cache: by digest (content never changes under a digest), and by reference + credential
//! for tags (a tag moves, and what one credential may read another may not). Entries live for a TTL; the
//! cache holds at most `capacity` entries, dropping expired ones first and then the oldest. Pure: the
//! caller passes the time, so tests need no clock.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use super::credentials::Credential;

/// What a cached answer is filed under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// `registry/repository@sha256:...`: the same for every credential.
    Digest(String),
    /// `registry/repository:tag` and a hash of the credentials used (0 for anonymous).
    Tag { reference: String, credential: u64 },
}

impl CacheKey {
    /// The key for a canonical reference (`registry/repo:tag` or `registry/repo@digest`).
    pub fn for_reference(reference: &str, credentials: &[Credential]) -> Self {
        if reference.contains('@') {
            return Self::Digest(reference.to_owned());
        }
        Self::Tag {
            reference: reference.to_owned(),
            credential: credential_hash(credentials),
        }
    }
}

/// A hash of the credentials tried, so the key never holds a password. 0 means anonymous.
pub fn credential_hash(credentials: &[Credential]) -> u64 {
    if credentials.is_empty() {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    credentials.hash(&mut hasher);
    hasher.finish().max(1)
}

/// A bounded map whose entries live for a TTL from their last insert: the answers by [`CacheKey`], and
/// the registry clients by credential ([`super::clients`]).
#[derive(Debug)]
pub struct Cache<V, K = CacheKey> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<K, (Instant, V)>,
}

impl<V: Clone, K: Clone + Eq + Hash> Cache<V, K> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The live answer for `key`, if any.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let (stored, value) = self.entries.get(key)?;
        (now.saturating_duration_since(*stored) < self.ttl).then(|| value.clone())
    }

    /// Stores `value` as of `now` (again, for a key already there: its TTL starts over).
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.retain_live(now);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (stored, _))| *stored)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (now, value));
    }

    /// Drops the entries whose TTL has run out: without it they would stay in memory until the cache is
    /// full, long after they may be used.
    /// Its table shrinks too, which an insert into a full cache (`insert`) must not pay each time.
    pub fn drop_expired(&mut self, now: Instant) {
        self.retain_live(now);
        self.entries.shrink_to_fit();
    }

    fn retain_live(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (stored, _)| now.saturating_duration_since(*stored) < ttl);
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries = HashMap::new();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(u: &str) -> Credential {
        Credential {
            username: u.into(),
            password: "p".into(),
        }
    }

    #[test]
    fn tags_are_per_credential_digests_are_not() {
        let anon = CacheKey::for_reference("r:5000/a:1", &[]);
        let alice = CacheKey::for_reference("r:5000/a:1", &[cred("alice")]);
        let bob = CacheKey::for_reference("r:5000/a:1", &[cred("bob")]);
        assert!(anon != alice && alice != bob);
        assert_eq!(
            alice,
            CacheKey::for_reference("r:5000/a:1", &[cred("alice")])
        );
        assert_eq!(
            CacheKey::for_reference("r:5000/a@sha256:00", &[cred("alice")]),
            CacheKey::for_reference("r:5000/a@sha256:00", &[])
        );
        assert!(!format!("{alice:?}").contains("alice"));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut cache = Cache::new(Duration::from_secs(60), 10);
        let key = CacheKey::Digest("r/a@sha256:00".into());
        assert_eq!(cache.get(&key, t0), None);
        cache.insert(key.clone(), 7, t0);
        assert_eq!(cache.get(&key, t0 + Duration::from_secs(59)), Some(7));
        assert_eq!(cache.get(&key, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn size_is_bounded_expired_then_oldest_go_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut cache = Cache::new(s(100), 3);
        let k = |i: u32| CacheKey::Digest(format!("r/a@sha256:{i}"));
        cache.insert(k(1), 1, t0);
        cache.insert(k(2), 2, t0 + s(50));
        cache.insert(k(3), 3, t0 + s(60));
        // k(1) has expired at t0+120: it goes, the others stay.
        cache.insert(k(4), 4, t0 + s(120));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&k(1), t0 + s(120)), None);
        assert_eq!(cache.get(&k(2), t0 + s(120)), Some(2));
        // Nothing expired: the oldest (k(2)) goes.
        cache.insert(k(5), 5, t0 + s(121));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&k(2), t0 + s(121)), None);
        assert_eq!(cache.get(&k(3), t0 + s(121)), Some(3));
        // Replacing a key never evicts another.
        cache.insert(k(5), 50, t0 + s(122));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&k(5), t0 + s(122)), Some(50));
    }

    #[test]
    fn expired_entries_are_dropped_without_waiting_for_a_full_cache() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut cache = Cache::new(s(100), 10);
        let k = |i: u32| CacheKey::Digest(format!("r/a@sha256:{i}"));
        cache.insert(k(1), 1, t0);
        cache.insert(k(2), 2, t0 + s(50));
        // Positive control: not expired yet, nothing goes.
        cache.drop_expired(t0 + s(99));
        assert_eq!(cache.len(), 2);
        cache.drop_expired(t0 + s(100));
        assert_eq!(cache.len(), 1, "k(1) expired at t0+100 s");
        assert_eq!(cache.get(&k(2), t0 + s(100)), Some(2));
        cache.clear();
        assert!(cache.is_empty());
    }
}
