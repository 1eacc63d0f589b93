//! Reusable command buffers for one loop: a read's Data-In buffer or a
//! write's Data-Out buffer returns here when its response has been sent,
//! so the steady state allocates no data buffers at all.

use std::cell::RefCell;
use std::ops::Deref;
use std::rc::Rc;

/// Largest buffer kept (a bigger one is freed: rare and large).
const MAX_POOLED_CAPACITY: usize = 1 << 20;
/// Most buffers kept idle per loop.
const MAX_IDLE: usize = 256;

#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn new() -> Rc<BufPool> {
        Rc::new(BufPool::default())
    }

    /// An empty buffer, with capacity from an earlier command when one is idle.
    pub fn take(&self) -> Vec<u8> {
        self.free.borrow_mut().pop().unwrap_or_default()
    }

    /// Keep `b` for a later command (or free it when too big or too many).
    pub fn give(&self, mut b: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if b.capacity() > 0 && b.capacity() <= MAX_POOLED_CAPACITY && free.len() < MAX_IDLE {
            b.clear();
            free.push(b);
        }
    }

    /// Buffers idle now.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

/// A buffer on loan from a pool, handed back when dropped (after the
/// writer has sent the last PDU that points into it).
pub struct Pooled {
    buf: Vec<u8>,
    pool: Rc<BufPool>,
}

impl Pooled {
    pub fn new(buf: Vec<u8>, pool: Rc<BufPool>) -> Pooled {
        Pooled { buf, pool }
    }
}

impl Deref for Pooled {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_keep_their_capacity() {
        let pool = BufPool::new();
        let mut b = pool.take();
        b.resize(4096, 7);
        let p = Pooled::new(b, pool.clone());
        assert_eq!(p.len(), 4096);
        drop(p);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert!(again.is_empty() && again.capacity() >= 4096);
        pool.give(vec![0; MAX_POOLED_CAPACITY + 1]);
        assert_eq!(pool.idle(), 0, "oversized buffers are not kept");
    }
}
