//! The master's tables keyed by pid.

/// A map keyed by pid. Pids are not chosen by an adversary, so the keys are hashed with a
/// fixed multiplier instead of std's randomly keyed SipHash, whose keys live in thread-local
/// storage: a page the master would otherwise write on start.
pub(crate) type PidMap<V> =
    std::collections::HashMap<u32, V, std::hash::BuildHasherDefault<PidHasher>>;

/// The hasher of [`PidMap`]: Fibonacci hashing of the pid.
#[derive(Default)]
pub(crate) struct PidHasher(u64);

impl std::hash::Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, pid: u32) {
        self.0 = u64::from(pid).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
