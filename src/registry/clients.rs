//! The registry HTTP clients, one per credential, reused across resolutions. Building a client loads the
//! system's root certificates (every file of the trust store, parsed) and starts an empty connection pool;
//! the soak's heap profile showed a client built per resolution as one allocation in nine of a leader's,
//! and every resolution paid a new TLS handshake and a new token. One client for all credentials would
//! share its bearer tokens between them (a token got with one pod's pull secret must never read for
//! another), so there is one per credential (anonymous is one too). Clients idle for a TTL are dropped,
//! and at most `capacity` are kept, the least recently used going first. Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Clients<C> {
    idle_ttl: Duration,
    capacity: usize,
    /// By credential hash ([`super::cache::credential_hash`], 0 for anonymous): last use and client.
    entries: HashMap<u64, (Instant, C)>,
}

impl<C: Clone> Clients<C> {
    pub fn new(idle_ttl: Duration, capacity: usize) -> Self {
        Self {
            idle_ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The client for `credential`, built by `build` when there is none (or it idled out).
    pub fn get_or_build<E>(
        &mut self,
        credential: u64,
        now: Instant,
        build: impl FnOnce() -> Result<C, E>,
    ) -> Result<C, E> {
        let ttl = self.idle_ttl;
        self.entries
            .retain(|_, (used, _)| now.saturating_duration_since(*used) < ttl);
        if let Some((used, client)) = self.entries.get_mut(&credential) {
            *used = now;
            return Ok(client.clone());
        }
        let client = build()?;
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(credential, (now, client.clone()));
        Ok(client)
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

    /// A client is its build number: which build a caller got shows whether it was reused.
    fn get(clients: &mut Clients<u32>, credential: u64, now: Instant, builds: &mut u32) -> u32 {
        clients
            .get_or_build(credential, now, || {
                *builds += 1;
                Ok::<_, ()>(*builds)
            })
            .unwrap()
    }

    #[test]
    fn one_client_per_credential_reused_across_resolutions() {
        let t0 = Instant::now();
        let mut clients = Clients::new(Duration::from_secs(300), 8);
        let mut builds = 0;
        let anonymous = get(&mut clients, 0, t0, &mut builds);
        let alice = get(&mut clients, 7, t0, &mut builds);
        assert_ne!(
            anonymous, alice,
            "positive control: credentials never share a client"
        );
        for i in 1..100 {
            let now = t0 + Duration::from_secs(i);
            assert_eq!(get(&mut clients, 0, now, &mut builds), anonymous);
            assert_eq!(get(&mut clients, 7, now, &mut builds), alice);
        }
        assert_eq!(builds, 2);
    }

    #[test]
    fn idle_clients_are_dropped_and_the_count_is_bounded() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clients = Clients::new(s(60), 3);
        let mut builds = 0;
        let first = get(&mut clients, 1, t0, &mut builds);
        assert_eq!(get(&mut clients, 1, t0 + s(59), &mut builds), first);
        // Idle 60 s from its last use: built again.
        assert_ne!(get(&mut clients, 1, t0 + s(119), &mut builds), first);
        // Capacity 3: a fourth credential evicts the least recently used (2).
        let now = t0 + s(120);
        let two = get(&mut clients, 2, now, &mut builds);
        let three = get(&mut clients, 3, now + s(1), &mut builds);
        get(&mut clients, 1, now + s(2), &mut builds);
        get(&mut clients, 4, now + s(3), &mut builds);
        assert_eq!(clients.len(), 3);
        assert_eq!(get(&mut clients, 3, now + s(4), &mut builds), three);
        assert_ne!(get(&mut clients, 2, now + s(5), &mut builds), two);
    }

    #[test]
    fn a_failed_build_keeps_nothing() {
        let mut clients: Clients<u32> = Clients::new(Duration::from_secs(60), 3);
        let err = clients.get_or_build(1, Instant::now(), || Err("bad CA"));
        assert_eq!(err, Err("bad CA"));
        assert!(clients.is_empty());
    }
}
