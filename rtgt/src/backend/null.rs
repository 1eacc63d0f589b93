//! tgt's `null` store: reads return zeros, writes vanish.

use std::io;

use scsi::BlockDevice;

#[derive(Debug)]
pub struct NullDevice {
    size: u64,
}

impl NullDevice {
    pub fn new(size: u64) -> NullDevice {
        NullDevice { size }
    }
}

impl BlockDevice for NullDevice {
    fn is_nonblocking(&self) -> bool {
        true
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}
