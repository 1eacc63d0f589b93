//! The backing store seen by SCSI emulation: a few verbs, as LIO's backend
//! interface has them. Implementations live in the daemon (files, block
//! devices, null); [`MemDevice`] serves tests.

use std::io;
use std::sync::Arc;

use crate::io::{MediaResult, NativeIo};

/// Where an asynchronous store reports a finished [`BlockDevice::submit`]:
/// called once per submission, from any thread (librbd's callback
/// thread); it only hands the result over.
pub trait CompletionSink: Send + Sync {
    fn complete(&self, tag: u32, result: MediaResult, buf: Vec<u8>);
}

/// A byte-addressed store behind a LUN. Methods block; the daemon calls them
/// off its event loops.
pub trait BlockDevice: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Replace `buf`'s contents with the `len` bytes at `offset`. The
    /// default zero-fills the buffer first for [`read_at`]; stores that can
    /// read into a buffer's spare capacity skip that fill (on a 256 KiB
    /// read it was an eighth of the target's CPU).
    ///
    /// [`read_at`]: BlockDevice::read_at
    fn read_into(&self, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
        buf.clear();
        buf.resize(len, 0);
        self.read_at(buf, offset)
    }
    /// Write `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make everything written so far durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocate a range (thin provisioning); it reads back as zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
    /// The medium's physical block size in bytes (0: unknown): a file's
    /// preferred I/O size (`st_blksize`, the file system's block), a
    /// block device's physical sector. tgt derives READ CAPACITY (16)'s
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT from it, and so do we.
    fn physical_block_size(&self) -> u32 {
        0
    }
    /// Bytes of the medium the store has allocated (the used LBA mapping
    /// resources of a thin LU, SBC-4 §4.7.3.8), found without waiting on
    /// the medium; `None` for stores that cannot tell.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
    /// A file descriptor an asynchronous engine may read and write
    /// directly (at the same offsets as `read_at`/`write_at`, and
    /// `fdatasync` for `flush`); `None` for stores without one.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// A name for the medium that is the same wherever it is opened, by
    /// any gateway (an RBD image: cluster fsid, pool id, image id and
    /// snapshot); `None` for media known only by a local path.
    fn identity(&self) -> Option<String> {
        None
    }
    /// True for stores that refuse writes whatever was asked (an RBD
    /// snapshot): the LU is then write-protected.
    fn read_only(&self) -> bool {
        false
    }
    /// True for stores with an asynchronous interface of their own
    /// ([`submit`](BlockDevice::submit)).
    fn is_async(&self) -> bool {
        false
    }
    /// Start `op` and return at once; `sink` gets `tag`, the result and
    /// `buf` back when it is done. `buf` holds the Data-Out, and on a
    /// successful read the Data-In. A store that cannot run this `op`
    /// natively (now, or ever) gives `buf` back, and the caller runs the
    /// task through the blocking methods instead.
    fn submit(
        &self,
        tag: u32,
        op: NativeIo<'_>,
        buf: Vec<u8>,
        sink: &Arc<dyn CompletionSink>,
    ) -> Result<(), Vec<u8>> {
        let _ = (tag, op, sink);
        Err(buf)
    }
    /// True when no call can block (null and memory stores): the daemon may
    /// then run I/O on its event loop instead of handing it to a worker.
    fn is_nonblocking(&self) -> bool {
        false
    }
    /// Whether `offset` is mapped, and how many bytes from `offset` share that
    /// state (GET LBA STATUS). Stores without holes are mapped throughout.
    fn map_status(&self, offset: u64) -> io::Result<(bool, u64)> {
        Ok((true, self.size().saturating_sub(offset)))
    }
    /// The SCSI state this store keeps for every gateway serving its
    /// medium; `None` when it keeps none (the state then lives only in
    /// this process).
    fn shared_state(&self) -> Option<&dyn SharedState> {
        None
    }
    /// Every target port group serving the medium and its access state,
    /// as this gateway (group `group`, relative port `rel`) finds them now
    /// (blocking); `None` when the store knows of no other gateway.
    fn port_groups(&self, group: u16, rel: u16) -> Option<Result<Vec<PortGroup>, MediaResult>> {
        let _ = (group, rel);
        None
    }
    /// Run `f`, a read-modify-write (a COMPARE AND WRITE the store cannot
    /// do natively, ORWRITE), on a view of this store through which no
    /// other writer of the medium, in this process or another gateway,
    /// writes between its read and its write. `None` when the store needs
    /// none: the LU's media lock already orders this process's I/O, and
    /// nothing else writes the medium; the caller then runs `f` itself.
    fn exclusive_view(
        &self,
        f: &mut dyn FnMut(&dyn BlockDevice),
    ) -> Option<Result<(), MediaResult>> {
        let _ = f;
        None
    }
    /// Make port group `group` the active/optimized one for every gateway
    /// (SET TARGET PORT GROUPS): `Ok(false)` when no live gateway serves
    /// the medium as that group; `None` when the store knows of no other
    /// gateway.
    fn prefer_port_group(&self, group: u16) -> Option<Result<bool, MediaResult>> {
        let _ = group;
        None
    }
    /// The medium is served here through relative target port `rel` of
    /// target port group `group`: a store shared by several gateways
    /// makes that known to the others (without blocking).
    fn serve_port(&self, group: u16, rel: u16) {
        let _ = (group, rel);
    }
}

/// Asymmetric access states (SPC-4 §6.36.2 table 185).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xf,
}

/// One target port group: a gateway serving the medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    pub id: u16,
    pub state: AccessState,
    /// Made the preferred group by SET TARGET PORT GROUPS (PREF bit).
    pub preferred: bool,
    /// Relative target port identifiers in the group.
    pub ports: Vec<u16>,
}

/// SCSI state a store keeps for every gateway that serves its medium (an
/// RBD image: an object beside it), as opaque bytes that change only by
/// compare-and-set, so that gateways agree on it (persistent
/// reservations, SPC-4 §5.13).
pub trait SharedState: Send + Sync {
    /// Read the state, let `f` compute its successor (`None`: leave it as
    /// it is) and store that unless someone changed the state meanwhile,
    /// in which case `f` runs again on the newer state. Blocks (a worker
    /// thread's call) until the change is stored, delivered to this
    /// process's subscribers, and seen by the other gateways (or they
    /// failed to answer in time).
    fn update(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Result<(), MediaResult>;
    /// Have `f` called with the state now and then with every state that
    /// may be newer, whoever changed it, from a thread of the store's.
    fn subscribe(&self, f: StateSubscriber);
}

/// What [`SharedState::subscribe`] calls with each state.
pub type StateSubscriber = Box<dyn Fn(&[u8]) + Send + Sync>;

/// [`SharedState`] in memory, for tests: stores built on one share it as
/// gateways share an image.
#[derive(Default)]
pub struct MemSharedState {
    data: std::sync::Mutex<Vec<u8>>,
    subs: std::sync::Mutex<Vec<StateSubscriber>>,
}

impl std::fmt::Debug for MemSharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSharedState").finish_non_exhaustive()
    }
}

impl SharedState for MemSharedState {
    fn update(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Result<(), MediaResult> {
        let now = {
            let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
            match f(&d) {
                Some(new) => {
                    *d = new;
                    d.clone()
                }
                None => return Ok(()),
            }
        };
        for s in self.subs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s(&now);
        }
        Ok(())
    }
    fn subscribe(&self, f: StateSubscriber) {
        let now = self.data.lock().unwrap_or_else(|p| p.into_inner()).clone();
        f(&now);
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }
}

/// A [`MemDevice`] whose SCSI state is shared (tests of several gateways).
#[derive(Debug)]
pub struct SharedMemDevice {
    pub mem: Arc<MemDevice>,
    pub state: Arc<MemSharedState>,
}

impl BlockDevice for SharedMemDevice {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn shared_state(&self) -> Option<&dyn SharedState> {
        Some(&*self.state)
    }
}

/// An in-memory store for tests.
#[derive(Debug)]
pub struct MemDevice {
    data: std::sync::Mutex<Vec<u8>>,
}

impl MemDevice {
    pub fn new(size: usize) -> MemDevice {
        MemDevice {
            data: std::sync::Mutex::new(vec![0; size]),
        }
    }
    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start =
        usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(start..end),
        _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
    }
}

impl BlockDevice for MemDevice {
    fn is_nonblocking(&self) -> bool {
        true
    }
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[range(d.len(), offset, buf.len())?]);
        Ok(())
    }
    fn read_into(&self, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        buf.clear();
        buf.extend_from_slice(&d[range(d.len(), offset, len)?]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        let r = range(d.len(), offset, buf.len())?;
        d[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
