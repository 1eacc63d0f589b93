//! Regular files and block devices through pread/pwrite (tgt's `rdwr`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use scsi::BlockDevice;

use super::OpenFlags;

#[derive(Debug)]
pub struct FileDevice {
    file: File,
    is_block: bool,
    /// The file lives in memory (tmpfs, ramfs): a read or write is a
    /// memcpy that never waits on a disk, so it may run on the event loop
    /// itself. (tmpfs supports neither RWF_NOWAIT nor io_uring's inline
    /// path, so the ring would hand every I/O to a kernel worker thread.)
    in_memory: bool,
    /// Opened with O_DIRECT: transfers must be aligned, so they go through
    /// an aligned bounce buffer, and not through io_uring with the
    /// caller's (unaligned) buffers.
    direct: bool,
    /// Plain reads, writes and flushes may go through the loop's io_uring
    /// (`-E aio`); otherwise every operation runs on the worker pool
    /// (`-E rdwr`, as tgt's names say, unless `--rdwr-engine uring`).
    uring: bool,
}

/// O_DIRECT alignment that satisfies every common device (4 KiB sectors).
const DIRECT_ALIGN: usize = 4096;

/// A heap block aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> io::Result<Aligned> {
        let size = len.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
        let layout = std::alloc::Layout::from_size_align(size, DIRECT_ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Aligned { ptr, layout })
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// O_DIRECT needs offset and length aligned too; LUN block sizes of 512
/// on a 4K device are not, so such transfers fail cleanly (EINVAL) and
/// become medium errors rather than silently buffered I/O.
fn direct_read(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut b = Aligned::new(buf.len())?;
    let n = buf.len();
    file.read_exact_at(&mut b.as_mut()[..n.div_ceil(512) * 512], offset)?;
    buf.copy_from_slice(&b.as_mut()[..n]);
    Ok(())
}

fn direct_write(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut b = Aligned::new(buf.len())?;
    b.as_mut()[..buf.len()].copy_from_slice(buf);
    file.write_all_at(&b.as_mut()[..buf.len()], offset)
}

impl FileDevice {
    /// Send every operation to the worker pool, never to io_uring.
    pub fn without_uring(mut self) -> FileDevice {
        self.uring = false;
        self
    }

    pub fn open(path: &Path, flags: OpenFlags) -> io::Result<FileDevice> {
        let mut custom = 0;
        if flags.direct {
            custom |= libc::O_DIRECT;
        }
        if flags.sync {
            custom |= libc::O_SYNC;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!flags.readonly)
            .custom_flags(custom)
            .open(path)?;
        let meta = file.metadata()?;
        let is_block = meta.file_type().is_block_device();
        if !is_block && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let in_memory = !is_block && !flags.direct && !flags.sync && on_memory_fs(&file);
        Ok(FileDevice {
            file,
            is_block,
            direct: flags.direct,
            in_memory,
            uring: true,
        })
    }
}

/// Whether the file lives on tmpfs or ramfs.
fn on_memory_fs(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: fstatfs fills a zeroed local struct for an owned fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl BlockDevice for FileDevice {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        (!self.direct && self.uring).then(|| self.file.as_raw_fd())
    }

    fn is_nonblocking(&self) -> bool {
        self.in_memory
    }

    fn size(&self) -> u64 {
        if self.is_block {
            let mut size: u64 = 0;
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
            // SAFETY: the ioctl writes one u64 into `size`, which outlives the call.
            let r =
                unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
            if r == 0 {
                return size;
            }
        }
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // A read past the end of a regular file is a medium error, not zeros:
        // the LUN's capacity came from the file's size.
        if self.direct {
            return direct_read(&self.file, buf, offset);
        }
        self.file.read_exact_at(buf, offset)
    }

    fn read_into(&self, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
        if self.direct {
            buf.clear();
            buf.resize(len, 0);
            return direct_read(&self.file, buf, offset);
        }
        // pread straight into the spare capacity: no zero-fill first.
        buf.clear();
        buf.reserve(len);
        let mut at = 0usize;
        while at < len {
            // SAFETY: `buf` has capacity for `len` bytes, so `at..len` of
            // its spare capacity is valid for writes; pread writes at most
            // `len - at` bytes there and nothing reads them before it does.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().add(at).cast(),
                    len - at,
                    (offset + at as u64) as libc::off_t,
                )
            };
            match n {
                n if n > 0 => at += n as usize,
                // A read past the end of a regular file is a medium error.
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        // SAFETY: pread initialised all `len` bytes above.
        unsafe { buf.set_len(len) };
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            return direct_write(&self.file, buf, offset);
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.is_block {
            // BLKDISCARD = _IO(0x12, 119); zeroing is not guaranteed by every
            // device, so write zeros after a discard only when asked for LBPRZ.
            const BLKDISCARD: libc::c_ulong = 0x1277;
            let range = [offset, len];
            // SAFETY: the ioctl reads two u64s from `range`.
            let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKDISCARD, range.as_ptr()) };
            return cvt(r).map(|_| ());
        }
        // SAFETY: plain syscall on an owned fd.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        match cvt(r) {
            Ok(_) => Ok(()),
            // Filesystems without hole punching still must read back zeros.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let zeros = vec![0u8; len.min(1 << 20) as usize];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn physical_block_size(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        if self.is_block {
            // BLKPBSZGET = _IO(0x12, 123)
            const BLKPBSZGET: libc::c_ulong = 0x127b;
            let mut pbs: libc::c_uint = 0;
            // SAFETY: the ioctl writes one unsigned int into `pbs`, which
            // outlives the call.
            let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKPBSZGET, &mut pbs) };
            return if r == 0 { pbs } else { 0 };
        }
        self.file
            .metadata()
            .map_or(0, |m| u32::try_from(m.blksize()).unwrap_or(0))
    }

    fn allocated_bytes(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        // st_blocks counts 512-byte units whatever the file system's block.
        (!self.is_block)
            .then(|| self.file.metadata().ok().map(|m| m.blocks() * 512))
            .flatten()
    }

    fn map_status(&self, offset: u64) -> io::Result<(bool, u64)> {
        let size = self.size();
        if offset >= size {
            return Ok((true, 0));
        }
        if self.is_block {
            return Ok((true, size - offset));
        }
        let fd = self.file.as_raw_fd();
        // SEEK_DATA from offset: if it lands past offset, offset sits in a hole.
        // SAFETY: lseek on an owned fd; pread/pwrite use explicit offsets so
        // moving the file position is harmless.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                // No data after offset: a hole to the end.
                return Ok((false, size - offset));
            }
            return Ok((true, size - offset));
        }
        let data = data as u64;
        if data > offset {
            return Ok((false, data.min(size) - offset));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        Ok((true, hole - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str, size: u64) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("rtgt-file-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    #[test]
    fn read_write_and_holes() {
        let p = tmpfile("rw", 1 << 20);
        let d = FileDevice::open(&p, OpenFlags::default()).unwrap();
        assert_eq!(d.size(), 1 << 20);
        d.write_at(&[7u8; 8192], 65536).unwrap();
        let mut b = [0u8; 8192];
        d.read_at(&mut b, 65536).unwrap();
        assert!(b.iter().all(|&x| x == 7));
        let (mapped, _) = d.map_status(65536).unwrap();
        assert!(mapped);
        d.punch_hole(65536, 8192).unwrap();
        d.read_at(&mut b, 65536).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert!(d.read_at(&mut b, (1 << 20) - 10).is_err());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn direct_io_uses_aligned_buffers() {
        let p = std::env::temp_dir().join(format!("rtgt-file-{}-direct", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        // tmpfs has no O_DIRECT: skip where the open is refused.
        let Ok(d) = FileDevice::open(
            &p,
            OpenFlags {
                direct: true,
                ..OpenFlags::default()
            },
        ) else {
            eprintln!("skipped: O_DIRECT unsupported here");
            return;
        };
        assert!(d.raw_fd().is_none());
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        d.write_at(&data, 4096).unwrap();
        let mut back = vec![0u8; 8192];
        d.read_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        std::fs::remove_file(p).unwrap();
    }
}
