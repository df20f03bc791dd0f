//! The registry HTTP clients, one per credential, reused across resolutions. Building a client loads the
//! system's root certificates (every file of the trust store, parsed) and starts an empty connection pool;
//! the soak's heap profile showed a client built per resolution as 18% of a replica's allocations, and every
//! resolution paid a new TLS handshake and a new token. One client for all credentials would share its
//! bearer tokens between them (a token got with one pod's pull secret must never read for another), so
//! there is one per credential (anonymous is one too), kept in a [`Cache`] whose TTL starts over at each use:
//! idle ones go first, and at most `capacity` are kept. Pure: the caller passes the time.

use std::time::{Duration, Instant};

use super::cache::Cache;

#[derive(Debug)]
pub struct Clients<C> {
    /// By credential hash ([`super::cache::credential_hash`], 0 for anonymous).
    by_credential: Cache<C, u64>,
}

impl<C: Clone> Clients<C> {
    pub fn new(idle_ttl: Duration, capacity: usize) -> Self {
        Self {
            by_credential: Cache::new(idle_ttl, capacity),
        }
    }

    /// The client for `credential`, built by `build` when there is none (or it idled out).
    pub fn get_or_build<E>(
        &mut self,
        credential: u64,
        now: Instant,
        build: impl FnOnce() -> Result<C, E>,
    ) -> Result<C, E> {
        let client = match self.by_credential.get(&credential, now) {
            Some(client) => client,
            None => build()?,
        };
        // Stored again at each use, so that a client in use never idles out.
        self.by_credential.insert(credential, client.clone(), now);
        Ok(client)
    }

    /// Drops the clients idle for their TTL (with their connections and trust store).
    pub fn drop_idle(&mut self, now: Instant) {
        self.by_credential.drop_expired(now);
    }

    /// Drops every client.
    pub fn clear(&mut self) {
        self.by_credential.clear();
    }

    pub fn len(&self) -> usize {
        self.by_credential.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_credential.is_empty()
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
    fn idle_clients_are_dropped_by_a_sweep() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clients = Clients::new(s(60), 3);
        let mut builds = 0;
        get(&mut clients, 1, t0, &mut builds);
        get(&mut clients, 2, t0 + s(30), &mut builds);
        clients.drop_idle(t0 + s(59));
        assert_eq!(clients.len(), 2, "positive control: none idle yet");
        clients.drop_idle(t0 + s(60));
        assert_eq!(clients.len(), 1);
        clients.clear();
        assert!(clients.is_empty());
    }

    #[test]
    fn a_failed_build_keeps_nothing() {
        let mut clients: Clients<u32> = Clients::new(Duration::from_secs(60), 3);
        let err = clients.get_or_build(1, Instant::now(), || Err("bad CA"));
        assert_eq!(err, Err("bad CA"));
        assert!(clients.is_empty());
    }
}
