//! Asynchronous submission: one record per SCSI command shared by its
//! librbd completions, and the callback that hands the result over.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use scsi::{CompletionSink, MediaResult, NativeIo, SimpleIo};

use super::conn::Conn;
use super::ffi;
use super::{CAW_SECTOR, ESHUTDOWN};

/// One submission in flight: what librbd's callback hands back.
pub(super) struct Pending {
    pub(super) tag: u32,
    pub(super) sink: Arc<dyn CompletionSink>,
    pub(super) buf: Vec<u8>,
    pub(super) conn: Arc<Conn>,
    /// A read of this many bytes into `buf`'s spare capacity.
    pub(super) read_len: Option<usize>,
    /// COMPARE AND WRITE's range, and where librbd reports the first
    /// difference.
    pub(super) caw: Option<(u64, u64)>,
    pub(super) mismatch: u64,
    /// Completions still to come (several for a multi-range UNMAP).
    pub(super) left: AtomicUsize,
    /// The first error among them (0: none).
    pub(super) err: AtomicI64,
}

impl Pending {
    /// Record one completion; the last hands everything to the loop.
    ///
    /// # Safety
    /// `p` came from `Box::into_raw` and this is one of its `left`
    /// completions.
    pub(super) unsafe fn one_done(p: *mut Pending, r: i64) {
        // SAFETY: live until the last completion frees it below; only
        // these fields are touched while librbd may still use the buffer.
        let (err, left, read_len) = unsafe { (&(*p).err, &(*p).left, (*p).read_len) };
        // A read must bring every byte asked for: librbd trims one past
        // the image's end (shrunk underneath us), and the rest of the
        // buffer would be uninitialised memory. A write reports 0 or its
        // length.
        let r = match read_len {
            Some(n) if r >= 0 && r as usize != n => -i64::from(libc::EIO),
            _ => r,
        };
        if r < 0 {
            let _ = err.compare_exchange(0, r, Ordering::AcqRel, Ordering::Acquire);
        }
        if left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // SAFETY: the last completion owns the box.
        let mut pend = unsafe { Box::from_raw(p) };
        let err = pend.err.load(Ordering::Acquire);
        let result = if err == 0 {
            if let Some(n) = pend.read_len {
                // SAFETY: librbd filled all `n` reserved bytes (it returned
                // no error for the whole read).
                unsafe { pend.buf.set_len(n) };
            }
            MediaResult::Ok
        } else {
            if err == -ESHUTDOWN {
                pend.conn.fenced.store(true, Ordering::Release);
            }
            match pend.caw {
                Some((offset, len)) if err == -i64::from(libc::EILSEQ) => {
                    MediaResult::Miscompare(caw_mismatch(pend.mismatch, offset, len))
                }
                _ => pend.conn.result(err),
            }
        };
        let Pending { tag, sink, buf, .. } = *pend;
        sink.complete(tag, result, buf);
    }
}

/// The first differing byte from the start of a compare-and-write, from
/// librbd's `mismatch_off`. librbd 16 gives the object's start in the
/// image plus the offset within the request (measured: 37 for a
/// difference at byte 37 of a request at 4608, 4 MiB for byte 0 of one at
/// 4 MiB); an image offset, as the header documents, is taken too. The
/// range lies within one sector, so the remainder modulo the sector is
/// the offset either way when the first reading does not apply.
fn caw_mismatch(mismatch: u64, offset: u64, len: u64) -> u64 {
    match mismatch.checked_sub(offset) {
        Some(rel) if rel < len => rel,
        _ => mismatch % CAW_SECTOR,
    }
}

/// librbd's completion callback: take the return value, release the
/// completion, hand over.
unsafe extern "C" fn on_complete(c: ffi::Completion, arg: *mut c_void) {
    let p = arg.cast::<Pending>();
    // SAFETY: `p` is live (its `left` counts this completion), and so is
    // its connection's API table.
    let conn: &Arc<Conn> = unsafe { &(*p).conn };
    let api = conn.api;
    // SAFETY: `c` is the completion librbd calls us for.
    let r = unsafe { (api.rbd_aio_get_return_value)(c) } as i64;
    // SAFETY: we release it exactly once, here.
    unsafe { (api.rbd_aio_release)(c) };
    // SAFETY: as above; this is one of `left`.
    unsafe { Pending::one_done(p, r) };
}

impl Pending {
    /// Issue the librbd calls for `op`, each with its own completion
    /// sharing `p`. Returns how many were issued before one failed to
    /// start (with its error).
    ///
    /// # Safety
    /// `p` is live with `left` at least the number of calls `op` makes.
    pub(super) unsafe fn issue(conn: &Conn, op: NativeIo<'_>, p: *mut Pending) -> (usize, i64) {
        let api = conn.api;
        let img = conn.image;
        let mut issued = 0;
        let arg: *mut c_void = p.cast();
        // SAFETY: `p` is live; these point into it.
        let (buf, mis) = unsafe { (&mut (*p).buf, &raw mut (*p).mismatch) };
        let mut failed = 0i64;
        let mut call = |f: &mut dyn FnMut(ffi::Completion) -> i64| -> bool {
            let mut c: ffi::Completion = std::ptr::null_mut();
            // SAFETY: `p` outlives the completion (see `Pending::one_done`).
            let r = unsafe { (api.rbd_aio_create_completion)(arg, on_complete, &mut c) };
            if r < 0 {
                failed = r.into();
                return false;
            }
            let r = f(c);
            if r < 0 {
                // SAFETY: never handed to librbd's queue.
                unsafe { (api.rbd_aio_release)(c) };
                failed = r;
                return false;
            }
            issued += 1;
            true
        };
        // SAFETY (each call below): an open image; buffers inside the
        // pending record, which lives until the completion.
        let ok = unsafe {
            match op {
                NativeIo::Simple(SimpleIo::Read { offset, len }) => {
                    buf.clear();
                    buf.reserve(len);
                    let ptr = buf.as_mut_ptr().cast::<c_char>();
                    call(&mut |c| (api.rbd_aio_read)(img, offset, len, ptr, c).into())
                }
                NativeIo::Simple(SimpleIo::Write { offset, len, .. }) => {
                    let ptr = buf.as_ptr().cast::<c_char>();
                    call(&mut |c| (api.rbd_aio_write)(img, offset, len, ptr, c).into())
                }
                NativeIo::Simple(SimpleIo::Flush) => {
                    call(&mut |c| (api.rbd_aio_flush)(img, c).into())
                }
                NativeIo::Discard { ranges } => ranges.iter().all(|&(off, len)| {
                    call(&mut |c| (api.rbd_aio_discard)(img, off, len, c).into())
                }),
                NativeIo::WriteSame {
                    offset,
                    len,
                    block,
                    zeros,
                    unmap,
                } => {
                    let n = len as usize;
                    if unmap {
                        call(&mut |c| (api.rbd_aio_discard)(img, offset, len, c).into())
                    } else if zeros {
                        call(&mut |c| (api.rbd_aio_write_zeroes)(img, offset, n, c, 0, 0).into())
                    } else {
                        let ptr = buf.as_ptr().cast::<c_char>();
                        call(&mut |c| {
                            (api.rbd_aio_writesame)(img, offset, n, ptr, block, c, 0).into()
                        })
                    }
                }
                NativeIo::CompareAndWrite { offset, len } => {
                    let cmp = buf.as_ptr().cast::<c_char>();
                    let data = buf.as_ptr().add(len).cast::<c_char>();
                    call(&mut |c| {
                        (api.rbd_aio_compare_and_write)(img, offset, len, cmp, data, c, mis, 0)
                            as i64
                    })
                }
            }
        };
        (issued, if ok { 0 } else { failed.min(-1) })
    }

    /// How many librbd calls `op` takes.
    pub(super) fn calls(op: NativeIo<'_>) -> usize {
        match op {
            NativeIo::Discard { ranges } => ranges.len(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_write_mismatch_offsets() {
        // librbd 16's form: object start + offset in the request.
        assert_eq!(caw_mismatch(37, 4608, 512), 37);
        assert_eq!(caw_mismatch(4 << 20, 4 << 20, 512), 0);
        assert_eq!(caw_mismatch((4 << 20) + 5, (4 << 20) + 1024, 512), 5);
        // An image offset.
        assert_eq!(caw_mismatch(4608 + 37, 4608, 512), 37);
    }
}
