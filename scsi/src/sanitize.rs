//! SANITIZE (SBC-4 §5.30, §4.11): OVERWRITE writes an initialization
//! pattern over every block, COUNT times (inverted on alternate passes
//! with INVERT); BLOCK ERASE, on thin LUs, deallocates every block (reads
//! then return zeros, LBPRZ); EXIT FAILURE MODE leaves the failure mode a
//! failed sanitize leaves behind. CRYPTOGRAPHIC ERASE is not offered: the
//! stores do not encrypt. While a sanitize runs the LU answers NOT READY,
//! SANITIZE IN PROGRESS to all but INQUIRY, REPORT LUNS and REQUEST SENSE;
//! it runs on as a media task whatever happens to the command (aborts,
//! resets, the session ending), as SBC-4 §4.11.2 requires.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::cdb::{be16, byte};
use crate::device::BlockDevice;
use crate::io::IoOp;
use crate::lu::{
    sanitizing, Ctx, HandlerResult, Lun, Reply, SANITIZE_FAILED, SANITIZE_IDLE, SANITIZE_RUNNING,
};
use crate::sense::{asc, key, Sense};

/// Service actions (SBC-4 table 113).
pub(crate) const OVERWRITE: u16 = 0x01;
pub(crate) const BLOCK_ERASE: u16 = 0x02;
pub(crate) const EXIT_FAILURE_MODE: u16 = 0x1f;

/// What a sanitize writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    /// OVERWRITE: `pattern` (at most one block) repeated over each block,
    /// `passes` times, inverted on every other pass when `invert`.
    Overwrite {
        pattern: Vec<u8>,
        passes: u8,
        invert: bool,
    },
    /// BLOCK ERASE on a thin LU: every block deallocated.
    Deallocate,
}

/// The LU's sanitize state, held by the task that runs the sanitize: a
/// task dropped without running (its LU removed first) leaves the LU as
/// it found it rather than sanitizing for ever.
#[derive(Debug)]
pub(crate) struct Running {
    state: Arc<AtomicU8>,
    /// 0 not started, 1 running, 2 done (the state already final).
    stage: AtomicU8,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Done: the state is the task's (and perhaps already a newer
        // sanitize's). Never run: the LU is as it was. Started and not
        // done: the store panicked mid-way; failure mode.
        let to = match self.stage.load(Ordering::Acquire) {
            0 => SANITIZE_IDLE,
            1 => SANITIZE_FAILED,
            _ => return,
        };
        let _ =
            self.state
                .compare_exchange(SANITIZE_RUNNING, to, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A sanitize ready to run over the `len` bytes of the medium.
#[derive(Debug, Clone)]
pub(crate) struct SanitizeJob {
    pub method: Method,
    pub len: u64,
    pub block: u64,
    /// IMMED: GOOD goes back before the sanitize runs.
    pub immed: bool,
    running: Arc<Running>,
}

impl PartialEq for SanitizeJob {
    fn eq(&self, o: &SanitizeJob) -> bool {
        self.method == o.method && self.len == o.len && Arc::ptr_eq(&self.running, &o.running)
    }
}

impl Eq for SanitizeJob {}

impl SanitizeJob {
    /// Sanitize the medium; the LU leaves the sanitize state, or enters
    /// its failure mode if the store failed.
    pub(crate) fn run(&self, dev: &dyn BlockDevice, buf: &mut Vec<u8>) -> Result<(), Sense> {
        self.running.stage.store(1, Ordering::Release);
        let r = match &self.method {
            Method::Deallocate => dev.punch_hole(0, self.len).and_then(|()| dev.flush()),
            Method::Overwrite {
                pattern,
                passes,
                invert,
            } => (0..*passes).try_for_each(|pass| {
                self.overwrite_pass(dev, pattern, *invert && pass % 2 == 1, buf)
            }),
        };
        buf.clear();
        let state = if r.is_ok() {
            SANITIZE_IDLE
        } else {
            SANITIZE_FAILED
        };
        self.running.state.store(state, Ordering::Release);
        self.running.stage.store(2, Ordering::Release);
        r.map_err(|_| Sense::new(key::MEDIUM_ERROR, asc::SANITIZE_COMMAND_FAILED))
    }

    /// One pass: every block gets the pattern, repeated to fill it (SBC-4
    /// §5.30.2.2), a MiB at a time, each made durable before the next: a
    /// sanitize moves at the medium's pace and leaves no gigabytes of
    /// dirty cache for other LUs to wait behind, and what it reports done
    /// is on the medium.
    fn overwrite_pass(
        &self,
        dev: &dyn BlockDevice,
        pattern: &[u8],
        inverted: bool,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let chunk = (1u64 << 20).max(self.block) / self.block * self.block;
        buf.clear();
        buf.extend(
            (0..chunk as usize)
                .map(|i| pattern[(i % self.block as usize) % pattern.len()])
                .map(|b| if inverted { !b } else { b }),
        );
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(chunk) as usize;
            dev.write_at(&buf[..n], at)?;
            dev.flush()?;
            at += n as u64;
        }
        Ok(())
    }
}

pub(crate) fn execute(lun: &Lun, ctx: &Ctx<'_>, dout: &[u8]) -> HandlerResult {
    let cdb = ctx.cdb;
    if byte(cdb, 1) & 0x40 != 0 {
        return Err(Sense::invalid_cdb(1, Some(6)));
    }
    if let Some(i) = (2..=6).find(|&i| byte(cdb, i) != 0) {
        return Err(Sense::invalid_cdb(i as u16, None));
    }
    if let Some(s) = sanitizing(lun) {
        return Err(s);
    }
    let immed = byte(cdb, 1) & 0x80 != 0;
    let plen = usize::from(be16(cdb, 7));
    let sa = u16::from(byte(cdb, 1) & 0x1f);
    let bs = lun.cfg.bs();
    if sa == EXIT_FAILURE_MODE {
        if plen != 0 {
            return Err(Sense::invalid_cdb(7, None));
        }
        // Never in failure mode, or leaving it: the medium is usable as
        // the failed sanitize left it (SBC-4 §4.11.4).
        let _ = lun.sanitize.compare_exchange(
            SANITIZE_FAILED,
            SANITIZE_IDLE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        return Ok(Reply::Good { wanted: 0 });
    }
    let method = match sa {
        OVERWRITE => {
            // A parameter list of 5 up to a block and 4 bytes.
            if plen <= 4 || plen as u64 > bs + 4 {
                return Err(Sense::invalid_cdb(7, None));
            }
            if dout.len() < plen {
                return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let p = &dout[..plen];
            let passes = p[0] & 0x1f;
            if passes == 0 || p[0] & 0x60 != 0 {
                // OVERWRITE COUNT 0 is invalid; TEST is vendor specific.
                return Err(Sense::invalid_param(0));
            }
            let ipl = usize::from(be16(p, 2));
            if ipl == 0 || ipl as u64 > bs || ipl + 4 > plen {
                return Err(Sense::invalid_param(2));
            }
            Method::Overwrite {
                pattern: p[4..4 + ipl].to_vec(),
                passes,
                invert: p[0] & 0x80 != 0,
            }
        }
        BLOCK_ERASE => {
            if plen != 0 {
                return Err(Sense::invalid_cdb(7, None));
            }
            Method::Deallocate
        }
        _ => return Err(Sense::invalid_cdb(1, Some(4))),
    };
    if !lun.cfg.online {
        return Err(crate::lu::not_ready(lun)
            .unwrap_or(Sense::new(key::NOT_READY, asc::LUN_BECOMING_READY)));
    }
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    // From here on the LU is being sanitized (a failed one too: a new
    // sanitize is how it leaves its failure mode).
    lun.sanitize.store(SANITIZE_RUNNING, Ordering::Release);
    Ok(Reply::Io {
        op: IoOp::Sanitize(Box::new(SanitizeJob {
            method,
            len: lun.cfg.blocks() * bs,
            block: bs,
            immed,
            running: Arc::new(Running {
                state: lun.sanitize.clone(),
                stage: AtomicU8::new(0),
            }),
        })),
        wanted: plen as u64,
    })
}
