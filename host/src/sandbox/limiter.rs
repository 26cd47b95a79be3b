//! The per-execution memory limiter: refuses growth past the step's memory limit,
//! remembers that it did (so that the trap which usually follows is classified as
//! `memory_limit`, not as a plain trap) and tracks peak memory.
//!
//! Growth is refused (`Ok(false)`) rather than turned into a trap, so that a guest that
//! handles allocation failure can carry on; one that does not aborts, and the flag tells why.

use wasmtime::ResourceLimiter;

/// Instance, table and memory counts a well-formed agent stays far below.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 8;
/// Table elements per table (function references, mostly).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

pub(crate) struct MemoryLimiter {
    limit_bytes: usize,
    /// Bytes of linear memory currently held, over all memories of the instance.
    current_bytes: usize,
    peak_bytes: usize,
    /// The total size a refused growth asked for, if any growth was refused.
    refused_bytes: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit_bytes: usize) -> Self {
        MemoryLimiter { limit_bytes, current_bytes: 0, peak_bytes: 0, refused_bytes: None }
    }

    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    pub(crate) fn refused_bytes(&self) -> Option<usize> {
        self.refused_bytes
    }

    pub(crate) fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.current_bytes - current.min(self.current_bytes) + desired;
        if total > self.limit_bytes {
            self.refused_bytes = Some(total);
            return Ok(false);
        }
        self.current_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Growth we allowed failed further down (the pool's own maximum): the guest sees
        // the usual -1. Undo nothing: `memory_growing` already counted it, and the peak
        // stays an upper bound.
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_growth_past_the_limit_and_remembers_it() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(60, 90, None).unwrap());
        assert!(!limiter.memory_growing(90, 120, None).unwrap());
        assert_eq!(limiter.peak_bytes(), 90);
        assert_eq!(limiter.refused_bytes(), Some(120));
    }

    #[test]
    fn counts_every_memory_of_the_instance() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(!limiter.memory_growing(0, 50, None).unwrap(), "a second memory shares the limit");
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert_eq!(limiter.peak_bytes(), 100);
    }
}
