//! Soft thresholds of thin LUs (SBC-4 §4.7.3.8): when the store behind a
//! LU has allocated more than its threshold, every nexus gets THIN
//! PROVISIONING SOFT THRESHOLD REACHED, once per crossing; the threshold
//! re-arms when UNMAP brings the allocation back under it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use scsi::{BlockDevice, LunConfig, LunId};

/// One LU's soft threshold and whether it is armed; shared by every
/// loop's copy of the LU's store (see `LunIo`).
#[derive(Debug)]
pub struct ThinWatch {
    pub lun: LunId,
    /// Bytes allocated beyond which the threshold is crossed; 0 for none.
    threshold: AtomicU64,
    armed: AtomicBool,
}

impl ThinWatch {
    pub fn new(lun: LunId, cfg: &LunConfig) -> ThinWatch {
        let w = ThinWatch {
            lun,
            threshold: AtomicU64::new(0),
            armed: AtomicBool::new(true),
        };
        w.configure(cfg);
        w
    }

    /// Take a (possibly) new threshold from the LU's settings; a new one
    /// is armed afresh.
    pub fn configure(&self, cfg: &LunConfig) {
        let t = cfg.soft_threshold_bytes().unwrap_or(0);
        if self.threshold.swap(t, Ordering::Relaxed) != t {
            self.armed.store(true, Ordering::Relaxed);
        }
    }

    /// After a command that sent Data-Out to the LU (a write, WRITE SAME,
    /// UNMAP): whether the store's allocation has just crossed the
    /// threshold. With a threshold set this costs one `fstat` per such
    /// command (the inode's block count, never a wait on the medium);
    /// without one, one atomic load.
    pub fn crossed(&self, dev: &dyn BlockDevice) -> bool {
        let t = self.threshold.load(Ordering::Relaxed);
        if t == 0 {
            return false;
        }
        let Some(used) = dev.allocated_bytes() else {
            return false;
        };
        if used > t {
            self.armed.swap(false, Ordering::Relaxed)
        } else {
            self.armed.store(true, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A store that reports whatever allocation the test sets.
    struct Alloc(Mutex<Option<u64>>);

    impl BlockDevice for Alloc {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn allocated_bytes(&self) -> Option<u64> {
            *self.0.lock().unwrap()
        }
    }

    fn cfg(pct: u8) -> LunConfig {
        let mut c = LunConfig::tgt_defaults(1, LunId(1));
        c.size_bytes = 1 << 20;
        c.thin = true;
        c.soft_threshold_pct = pct;
        c
    }

    #[test]
    fn crossing_fires_once_and_rearms_below() {
        let dev = Alloc(Mutex::new(Some(0)));
        let set = |b: u64| *dev.0.lock().unwrap() = Some(b);
        let w = ThinWatch::new(LunId(1), &cfg(50));
        assert!(!w.crossed(&dev));
        set(512 << 10);
        assert!(!w.crossed(&dev), "at the threshold is not beyond it");
        set((512 << 10) + 4096);
        assert!(w.crossed(&dev));
        set(900 << 10);
        assert!(!w.crossed(&dev), "once per crossing");
        set(100 << 10);
        assert!(!w.crossed(&dev));
        set(600 << 10);
        assert!(w.crossed(&dev), "re-armed by going under");
        // A new threshold arms afresh; none, or a store that cannot
        // tell, never fires.
        w.configure(&cfg(40));
        assert!(w.crossed(&dev));
        w.configure(&cfg(0));
        set(1 << 20);
        assert!(!w.crossed(&dev));
        w.configure(&cfg(10));
        *dev.0.lock().unwrap() = None;
        assert!(!w.crossed(&dev));
    }
}
