//! Whole-command tests: CDB bytes in, status/sense/data out, in memory.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sense::{asc, key};
use crate::*;

const A: NexusId = NexusId(1);
const B: NexusId = NexusId(2);
const L1: LunId = LunId(1);
const BLOCKS: u64 = 1024;

/// A thin store that tracks which 512-byte blocks are mapped, counts
/// flushes, and can be told to fail.
#[derive(Debug)]
struct TestDev {
    data: Mutex<Vec<u8>>,
    mapped: Mutex<Vec<bool>>,
    flushes: AtomicUsize,
    fail: bool,
}

impl TestDev {
    fn new(size: usize) -> TestDev {
        TestDev {
            data: Mutex::new(vec![0; size]),
            mapped: Mutex::new(vec![true; size / 512]),
            flushes: AtomicUsize::new(0),
            fail: false,
        }
    }
    fn failing(size: usize) -> TestDev {
        TestDev {
            fail: true,
            ..TestDev::new(size)
        }
    }
}

impl BlockDevice for TestDev {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected"));
        }
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(
            d.get(o..o + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?,
        );
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected"));
        }
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d.get_mut(o..o + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?
            .copy_from_slice(buf);
        let mut m = self.mapped.lock().unwrap();
        for b in o / 512..(o + buf.len()).div_ceil(512) {
            m[b] = true;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (o, n) = (offset as usize, len as usize);
        self.data.lock().unwrap()[o..o + n].fill(0);
        let mut m = self.mapped.lock().unwrap();
        for b in o / 512..(o + n) / 512 {
            m[b] = false;
        }
        Ok(())
    }
    fn map_status(&self, offset: u64) -> io::Result<(bool, u64)> {
        let m = self.mapped.lock().unwrap();
        let first = (offset / 512) as usize;
        let state = m[first];
        let run = m[first..].iter().take_while(|s| **s == state).count();
        Ok((state, run as u64 * 512))
    }
}

struct H {
    set: LunSet,
    dev: TestDev,
}

struct Out {
    status: Status,
    sense: Vec<u8>,
    data: Vec<u8>,
    wanted: u64,
}

impl Out {
    fn good(&self) -> &Self {
        assert_eq!(self.status, Status::Good, "sense {:02x?}", self.sense);
        self
    }
    /// (key, asc, ascq) from fixed or descriptor sense.
    fn kcq(&self) -> (u8, u8, u8) {
        assert_eq!(self.status, Status::CheckCondition);
        match self.sense[0] & 0x7f {
            0x70 => (self.sense[2] & 0x0f, self.sense[12], self.sense[13]),
            0x72 => (self.sense[1], self.sense[2], self.sense[3]),
            f => panic!("sense format {f:#x}"),
        }
    }
    fn check(&self, k: u8, code: (u8, u8)) {
        assert_eq!(self.kcq(), (k, code.0, code.1), "sense {:02x?}", self.sense);
    }
}

fn port() -> TargetPort {
    TargetPort {
        target_name: "iqn.2001-04.com.example:t1".into(),
        tpgt: 1,
        relative_port: 1,
    }
}

fn disk(thin: bool) -> LunConfig {
    let mut c = LunConfig::tgt_defaults(1, L1);
    c.size_bytes = BLOCKS * 512;
    c.thin = thin;
    c
}

impl H {
    fn with(cfg: LunConfig) -> H {
        let mut set = LunSet::new(1, port());
        set.insert(LunId(0), LunConfig::tgt_controller(1));
        set.insert(L1, cfg);
        set.add_nexus(A);
        let mut h = H {
            set,
            dev: TestDev::new((BLOCKS * 512) as usize),
        };
        // Consume the POWER ON unit attention.
        h.cmd(&[0; 6])
            .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
        h.cmd(&[0; 6]).good();
        h
    }
    fn new() -> H {
        H::with(disk(false))
    }
    fn thin() -> H {
        H::with(disk(true))
    }
    fn run(&mut self, n: NexusId, lun: LunId, cdb: &[u8], dout: &[u8]) -> Out {
        let mut buf = dout.to_vec();
        let req = Request {
            cdb,
            nexus: n,
            lun,
            expected_len: dout.len() as u32,
        };
        // As the daemon does: the shared path first, `execute` when it
        // declines, so every test here checks that both agree.
        let outcome = match self.set.execute_shared(&req, &mut buf) {
            Some(o) => o,
            None => {
                assert_eq!(
                    buf, dout,
                    "execute_shared declined after touching the buffer"
                );
                self.set.execute(&req, &mut buf)
            }
        };
        let resp = match outcome {
            Outcome::Done(r) => r,
            Outcome::Io(t) => {
                assert_eq!(t.lun(), lun);
                t.run(&self.dev, &mut buf)
            }
        };
        assert_eq!(resp.data_len, buf.len());
        if resp.status != Status::CheckCondition {
            assert!(resp.sense.is_empty());
        }
        Out {
            status: resp.status,
            sense: resp.sense,
            data: buf,
            wanted: resp.wanted,
        }
    }
    fn cmd(&mut self, cdb: &[u8]) -> Out {
        self.run(A, L1, cdb, &[])
    }
    fn cmd_out(&mut self, cdb: &[u8], dout: &[u8]) -> Out {
        self.run(A, L1, cdb, dout)
    }
}

fn rw10(opcode: u8, flags: u8, lba: u32, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn rw16(opcode: u8, flags: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

fn rw12(opcode: u8, flags: u8, lba: u32, n: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opcode;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&n.to_be_bytes());
    c
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, u8::from(evpd), page, a[0], a[1], 0]
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------- INQUIRY

#[test]
fn inquiry_standard() {
    let mut h = H::new();
    let o = h.cmd(&inquiry(false, 0, 255));
    o.good();
    let d = &o.data;
    assert_eq!(d.len(), 66);
    assert_eq!(o.wanted, 255);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    assert_eq!(d[3] & 0x0f, 2);
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(&d[8..16], b"IET     ");
    assert_eq!(&d[16..32], b"VIRTUAL-DISK    ");
    assert_eq!(&d[32..36], b"0001");
    let descs: Vec<u16> = (0..4)
        .map(|i| u16::from_be_bytes([d[58 + 2 * i], d[59 + 2 * i]]))
        .collect();
    assert!(descs.contains(&0x0460) && descs.contains(&0x04c0));
    // Truncated to the allocation length.
    let o = h.cmd(&inquiry(false, 0, 5));
    assert_eq!(o.good().data.len(), 5);
    // EVPD=0 with a page code, CMDDT: INVALID FIELD IN CDB.
    h.cmd(&inquiry(false, 0x80, 255))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&[0x12, 2, 0, 0, 255, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&inquiry(true, 0x42, 255))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn inquiry_vpd_pages() {
    let mut h = H::thin();
    let o = h.cmd(&inquiry(true, 0, 255));
    assert_eq!(
        &o.good().data[..],
        &[0, 0, 0, 7, 0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2]
    );
    for &p in &o.data[4..] {
        let v = h.cmd(&inquiry(true, p, 255));
        v.good();
        assert_eq!(v.data[1], p);
        assert_eq!(
            u16::from_be_bytes([v.data[2], v.data[3]]) as usize,
            v.data.len() - 4
        );
    }
    // Unit serial: tgt's right-adjusted "beaf11".
    let sn = h.cmd(&inquiry(true, 0x80, 255)).data;
    assert_eq!(sn.len(), 40);
    assert!(sn[4..].ends_with(b" beaf11"));
    // Block limits.
    let b0 = h.cmd(&inquiry(true, 0xb0, 255)).data;
    assert_eq!(b0[3], 0x3c);
    assert_eq!(
        u32::from_be_bytes(b0[8..12].try_into().unwrap()) as u64,
        MAX_TRANSFER_BYTES / 512
    );
    assert_eq!(
        u32::from_be_bytes(b0[20..24].try_into().unwrap()),
        0xffff_ffff
    );
    assert!(u32::from_be_bytes(b0[24..28].try_into().unwrap()) > 0);
    let b2 = h.cmd(&inquiry(true, 0xb2, 255)).data;
    assert_eq!(b2[5] & 0xe0, 0xe0);
    assert_eq!(b2[6] & 7, 2);
    // Not thin: no B2.
    let mut h = H::new();
    let o = h.cmd(&inquiry(true, 0, 255));
    assert!(!o.data[4..].contains(&0xb2));
    h.cmd(&inquiry(true, 0xb2, 255))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let b0 = h.cmd(&inquiry(true, 0xb0, 255)).data;
    assert_eq!(&b0[20..28], &[0; 8]);
}

#[test]
fn inquiry_device_identification() {
    let mut h = H::new();
    let d = h.cmd(&inquiry(true, 0x83, 512)).data;
    // T10 vendor id designator holding tgt's scsi_id.
    assert_eq!(&d[4..8], &[0x02, 0x01, 0, 36]);
    assert_eq!(&d[8..24], b"IET     00010001");
    // NAA 3 local: tid << 32 | lun.
    assert_eq!(&d[44..48], &[0x01, 0x03, 0, 8]);
    assert_eq!(&d[48..56], &[0x30, 0, 0, 1, 0, 0, 0, 1]);
    // NAA 6 from the hex digits of scsi_id ("E" of "IET" counts).
    assert_eq!(&d[56..60], &[0x01, 0x03, 0, 16]);
    let mut want = [0u8; 16];
    want[0] = 0x60;
    want[8..16].copy_from_slice(&[0x0e, 0, 0, 0, 0, 0x01, 0, 0x01]);
    assert_eq!(&d[60..76], &want);
    // Relative target port, target port group, SCSI name strings.
    assert_eq!(&d[76..84], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    assert_eq!(&d[84..92], &[0x51, 0x95, 0, 4, 0, 0, 0, 1]);
    assert_eq!(&d[92..94], &[0x53, 0x98]);
    let len = d[95] as usize;
    assert_eq!(len % 4, 0);
    let name = std::str::from_utf8(&d[96..96 + len])
        .unwrap()
        .trim_end_matches('\0');
    assert_eq!(name, "iqn.2001-04.com.example:t1,t,0x0001");
}

#[test]
fn controller_lun0_and_missing_lun() {
    let mut h = H::new();
    let o = h.run(A, LunId(0), &inquiry(false, 0, 96), &[]);
    assert_eq!(o.data[0], 0x0c);
    assert_eq!(&o.data[16..26], b"Controller");
    h.run(A, LunId(0), &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
    h.run(A, LunId(0), &[0; 6], &[]).good();
    h.run(A, LunId(0), &rw10(0x28, 0, 0, 1), &[])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE);
    let o = h.run(A, LunId(7), &inquiry(false, 0, 96), &[]);
    assert_eq!(o.good().data[0], 0x7f);
    h.run(A, LunId(7), &[0; 6], &[])
        .check(key::ILLEGAL_REQUEST, asc::LOGICAL_UNIT_NOT_SUPPORTED);
    let o = h.run(A, LunId(7), &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(
        (o.good().data[12], o.data[13]),
        asc::LOGICAL_UNIT_NOT_SUPPORTED
    );
    // LUN 0 answers even when never configured.
    let mut set = LunSet::new(5, port());
    set.add_nexus(A);
    let mut buf = Vec::new();
    let req = Request {
        cdb: &inquiry(false, 0, 96),
        nexus: A,
        lun: LunId(0),
        expected_len: 96,
    };
    match set.execute(&req, &mut buf) {
        Outcome::Done(r) => assert_eq!((r.status, buf[0]), (Status::Good, 0x0c)),
        Outcome::Io(_) => panic!(),
    }
    assert_eq!(set.ids(), vec![LunId(0)]);
    assert!(!set.remove(LunId(0)));
}

// ------------------------------------------------------------ REPORT LUNS

#[test]
fn report_luns() {
    let mut h = H::new();
    h.set.insert(LunId(300), disk(false));
    let o = h.cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    o.good();
    assert_eq!(&o.data[0..4], &24u32.to_be_bytes());
    assert_eq!(&o.data[8..10], &[0, 0]);
    assert_eq!(&o.data[16..18], &[0, 1]);
    assert_eq!(&o.data[24..26], &[0x41, 0x2c]);
    // The new LUN raised REPORTED LUNS DATA HAS CHANGED, which REPORT LUNS cleared.
    h.cmd(&[0; 6]).good();
    // Truncation, allocation < 16, SELECT REPORT.
    assert_eq!(
        h.cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0])
            .good()
            .data
            .len(),
        16
    );
    h.cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&[0xa0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let o = h.cmd(&[0xa0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&o.good().data[..], &[0; 8]);
    // Works on a LUN that does not exist.
    h.run(A, LunId(9), &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[])
        .good();
}

#[test]
fn luns_changed_ua_without_report_luns() {
    let mut h = H::new();
    h.set.insert(LunId(2), disk(false));
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    h.cmd(&[0; 6]).good();
    h.run(A, LunId(2), &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
    assert!(h.set.remove(LunId(2)));
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    assert!(!h.set.remove(LunId(2)));
}

// ------------------------------------------------------ unit attentions

#[test]
fn unit_attention_rules() {
    let mut h = H::new();
    h.set.add_nexus(B);
    // INQUIRY does not report or clear it.
    h.run(B, L1, &inquiry(false, 0, 36), &[]).good();
    // REQUEST SENSE reports and clears it, in the DESC format asked.
    let o = h.run(B, L1, &[0x03, 1, 0, 0, 252, 0], &[]);
    assert_eq!(&o.good().data[..4], &[0x72, key::UNIT_ATTENTION, 0x29, 0]);
    let o = h.run(B, L1, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!((o.good().data[2], o.data[12]), (0, 0));
    assert_eq!(o.data.len(), 18);
    h.run(B, L1, &[0; 6], &[]).good();
    // Capacity and mode changes through update().
    assert!(h.set.update(L1, |c| c.size_bytes *= 2));
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::CAPACITY_DATA_HAS_CHANGED);
    h.run(B, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::CAPACITY_DATA_HAS_CHANGED);
    assert!(h.set.update(L1, |c| c.write_cache = false));
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED);
    assert!(!h.set.update(LunId(77), |_| {}));
    // A nexus that goes away takes its UAs with it.
    h.set.remove_nexus(B);
    h.set.add_nexus(B);
    h.run(B, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
}

#[test]
fn resets() {
    let mut h = H::new();
    h.set.add_nexus(B);
    h.run(B, L1, &[0; 6], &[]);
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
    h.set.lun_reset(L1, A);
    // SAM-5 §6.3.3: the nexus that asked for the reset gets the UA too.
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
    h.cmd(&[0; 6]).good();
    h.run(B, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
    // The reservation is gone.
    h.run(B, L1, &[0x16, 0, 0, 0, 0, 0], &[]).good();
    h.set.target_reset(B);
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
    h.cmd(&[0; 6]).good();
    h.run(A, LunId(0), &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
    h.run(A, LunId(0), &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
}

// ---------------------------------------------------------- reservations

#[test]
fn reserve_release() {
    let mut h = H::new();
    h.set.add_nexus(B);
    h.run(B, L1, &[0; 6], &[]);
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
    let o = h.run(B, L1, &[0x16, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o.status, Status::ReservationConflict);
    assert_eq!(
        h.run(B, L1, &[0x1a, 0, 0x3f, 0, 255, 0], &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(
        h.run(B, L1, &rw10(0x28, 0, 0, 1), &[]).status,
        Status::ReservationConflict
    );
    h.run(B, L1, &inquiry(false, 0, 36), &[]).good();
    h.run(B, L1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good();
    // RELEASE from the other nexus: GOOD, no effect.
    h.run(B, L1, &[0x17, 0, 0, 0, 0, 0], &[]).good();
    assert_eq!(
        h.run(B, L1, &[0; 6], &[]).status,
        Status::ReservationConflict
    );
    h.cmd(&[0x1a, 0, 0x3f, 0, 255, 0]).good();
    h.cmd(&[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]).good();
    h.run(B, L1, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good();
    h.set.remove_nexus(B);
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
    h.cmd(&[0x16, 1, 0, 0, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

// ------------------------------------------------------------ capacity

#[test]
fn read_capacity() {
    let mut h = H::thin();
    let o = h.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&o.good().data[..], &[0, 0, 0x03, 0xff, 0, 0, 2, 0]);
    h.cmd(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]).good();
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    let o = h.cmd(&c);
    let d = &o.good().data;
    assert_eq!(d.len(), 32);
    assert_eq!(&d[0..8], &1023u64.to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[14] & 0xc0, 0xc0);
    for alloc in 0..16u8 {
        c[13] = alloc;
        assert_eq!(h.cmd(&c).good().data.len(), alloc as usize);
    }
    // Huge LU: READ CAPACITY (10) saturates.
    let mut big = disk(false);
    big.size_bytes = 1 << 45;
    big.block_size = 4096;
    let mut h = H::with(big);
    let o = h.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&o.good().data[..], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0x10, 0]);
    c[13] = 32;
    assert_eq!(
        &h.cmd(&c).good().data[0..8],
        &((1u64 << 33) - 1).to_be_bytes()
    );
}

// -------------------------------------------------------- read / write

#[test]
fn read_write_all_sizes() {
    let mut h = H::new();
    let data = pattern(2048, 1);
    h.cmd_out(&rw10(0x2a, 0, 10, 4), &data).good();
    assert_eq!(h.cmd(&rw10(0x28, 0, 10, 4)).good().data, data);
    let o = h.cmd(&rw16(0x88, 0, 10, 4));
    assert_eq!(o.good().data, data);
    assert_eq!(o.wanted, 2048);
    assert_eq!(h.cmd(&rw12(0xa8, 0, 10, 4)).good().data, data);
    assert_eq!(h.cmd(&[0x08, 0, 0, 10, 4, 0]).good().data, data);
    let d2 = pattern(512, 9);
    h.cmd_out(&[0x0a, 0, 0, 20, 1, 0], &d2).good();
    h.cmd_out(&rw12(0xaa, 0, 21, 1), &d2).good();
    h.cmd_out(&rw16(0x8a, 0, 22, 1), &d2).good();
    let back = h.cmd(&rw10(0x28, 0, 20, 3)).data;
    assert_eq!(&back[..512], &d2[..]);
    assert_eq!(&back[512..1024], &d2[..]);
    assert_eq!(&back[1024..], &d2[..]);
    // READ(6) length 0 means 256 blocks.
    assert_eq!(h.cmd(&[0x08, 0, 0, 0, 0, 0]).good().data.len(), 256 * 512);
    // DPO/FUA accepted; FUA flushes.
    let before = h.dev.flushes.load(Ordering::SeqCst);
    h.cmd(&rw10(0x28, 0x18, 0, 1)).good();
    h.cmd_out(&rw10(0x2a, 0x08, 0, 1), &d2).good();
    assert_eq!(h.dev.flushes.load(Ordering::SeqCst), before + 1);
    h.cmd_out(&rw10(0x2a, 0x10, 0, 1), &d2).good();
    assert_eq!(h.dev.flushes.load(Ordering::SeqCst), before + 1);
}

#[test]
fn write_cache_off_flushes() {
    let mut cfg = disk(false);
    cfg.write_cache = false;
    let mut h = H::with(cfg);
    h.cmd_out(&rw10(0x2a, 0, 0, 1), &[7; 512]).good();
    assert_eq!(h.dev.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn read_write_errors() {
    let mut h = H::new();
    for c in [
        rw10(0x28, 0, 1023, 2),
        rw10(0x28, 0, 1025, 0),
        rw10(0x28, 0, u32::MAX, 1),
        rw10(0x2a, 0, 1024, 1),
    ] {
        h.cmd(&c).check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    }
    h.cmd(&rw16(0x88, 0, u64::MAX, 1))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&rw16(0x88, 0, u64::MAX - 1, u32::MAX))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&[0x08, 0, 0x03, 0xff, 1, 0]).good();
    h.cmd(&[0x08, 0, 0x04, 0x00, 1, 0])
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    // 0 blocks: GOOD, no data, but the LBA is still checked.
    let o = h.cmd(&rw10(0x28, 0, 0, 0));
    assert!(o.good().data.is_empty());
    h.cmd(&rw10(0x2a, 0, 0, 0)).good();
    // RDPROTECT / WRPROTECT.
    for p in 1..8u8 {
        h.cmd(&rw10(0x28, p << 5, 0, 1))
            .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
        h.cmd_out(&rw10(0x2a, p << 5, 0, 1), &[0; 512])
            .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    }
    // Over the transfer limit.
    let mut big = disk(false);
    big.size_bytes = 1 << 30;
    let mut h = H::with(big);
    let n = (MAX_TRANSFER_BYTES / 512) as u32;
    h.cmd(&rw16(0x88, 0, 0, n + 1))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let o = h.cmd(&rw16(0x88, 0, 0, n));
    assert!(o.status == Status::CheckCondition || o.data.len() as u64 == MAX_TRANSFER_BYTES);
}

#[test]
fn short_data_out_writes_what_arrived() {
    let mut h = H::new();
    h.cmd_out(&rw10(0x2a, 0, 0, 2), &[b'a'; 1024]).good();
    let o = h.cmd_out(&rw10(0x2a, 0, 0, 2), &[b'b'; 200]);
    assert_eq!(o.good().wanted, 1024);
    let d = h.cmd(&rw10(0x28, 0, 0, 2)).data;
    assert!(d[..200].iter().all(|b| *b == b'b'));
    assert!(d[200..].iter().all(|b| *b == b'a'));
    h.cmd_out(&rw10(0x2a, 0, 0, 1), &[]).good();
}

#[test]
fn medium_errors() {
    let mut h = H::new();
    h.dev = TestDev::failing((BLOCKS * 512) as usize);
    h.cmd(&rw10(0x28, 0, 0, 1))
        .check(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR);
    h.cmd_out(&rw10(0x2a, 0, 0, 1), &[0; 512])
        .check(key::MEDIUM_ERROR, asc::WRITE_ERROR);
    h.cmd(&rw10(0x2f, 0, 0, 1))
        .check(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR);
}

#[test]
fn readonly_and_write_protect() {
    let mut cfg = disk(true);
    cfg.readonly = true;
    let mut h = H::with(cfg);
    h.cmd(&rw10(0x28, 0, 0, 1)).good();
    h.cmd_out(&rw10(0x2a, 0, 0, 1), &[0; 512])
        .check(key::DATA_PROTECT, asc::WRITE_PROTECTED);
    h.cmd_out(&rw10(0x2e, 0x02, 0, 1), &[0; 512])
        .check(key::DATA_PROTECT, asc::WRITE_PROTECTED);
    h.cmd_out(&rw10(0x41, 0, 0, 1), &[0; 512])
        .check(key::DATA_PROTECT, asc::WRITE_PROTECTED);
    h.cmd(&rw10(0x41, 0x08, 0, 1))
        .check(key::DATA_PROTECT, asc::WRITE_PROTECTED);
    h.cmd_out(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(&[(0, 1)]))
        .check(key::DATA_PROTECT, asc::WRITE_PROTECTED);
    let ms = h.cmd(&[0x1a, 0, 0x3f, 0, 255, 0]).data;
    assert_eq!(ms[2] & 0x90, 0x90);
}

// --------------------------------------------------------------- verify

#[test]
fn verify_and_write_verify() {
    let mut h = H::new();
    let data = pattern(1024, 3);
    h.cmd_out(&rw10(0x2e, 0x02, 5, 2), &data).good();
    h.cmd(&rw10(0x2f, 0, 5, 2)).good();
    h.cmd(&rw10(0x2f, 0x10, 5, 2)).good();
    h.cmd_out(&rw10(0x2f, 0x02, 5, 2), &data).good();
    h.cmd_out(&rw12(0xaf, 0x02, 5, 2), &data).good();
    h.cmd_out(&rw16(0x8f, 0x02, 5, 2), &data).good();
    let mut bad = data.clone();
    bad[700] ^= 0xff;
    let o = h.cmd_out(&rw10(0x2f, 0x02, 5, 2), &bad);
    o.check(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(o.sense[0], 0xf0);
    assert_eq!(&o.sense[3..7], &700u32.to_be_bytes());
    // BYTCHK 11b: one block against each.
    h.cmd_out(&rw10(0x2a, 0, 100, 3), &[9; 1536]).good();
    h.cmd_out(&rw10(0x2f, 0x06, 100, 3), &[9; 512]).good();
    let o = h.cmd_out(&rw10(0x2f, 0x06, 99, 3), &[9; 512]);
    o.check(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
    h.cmd(&rw10(0x2f, 0x04, 0, 1))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&rw10(0x2f, 0x20, 0, 1))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&rw10(0x2f, 0, 1024, 1))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&rw10(0x2f, 0, 0, 0)).good();
    h.cmd_out(&rw16(0x8e, 0x12, 7, 1), &data[..512]).good();
    h.cmd_out(&rw12(0xae, 0, 8, 1), &data[..512]).good();
    assert_eq!(h.cmd(&rw10(0x28, 0, 7, 2)).data, data);
}

// ------------------------------------------------------ sync / prefetch

#[test]
fn sync_cache_and_prefetch() {
    let mut h = H::new();
    h.cmd(&rw10(0x35, 0, 0, 0)).good();
    h.cmd(&rw16(0x91, 0x02, 1000, 24)).good();
    assert_eq!(h.dev.flushes.load(Ordering::SeqCst), 2);
    h.cmd(&rw10(0x35, 0, 1000, 25))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&rw10(0x34, 0, 0, 1)).good();
    h.cmd(&rw16(0x90, 0x02, 1023, 1)).good();
    h.cmd(&rw10(0x34, 0, 0, 0)).good();
    h.cmd(&rw10(0x34, 0, 1025, 0))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&rw16(0x90, 0, u64::MAX, 0))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
}

// ------------------------------------------------------------- no media

#[test]
fn removable_medium() {
    let mut cfg = disk(false);
    cfg.removable = true;
    let mut h = H::with(cfg);
    assert_eq!(h.cmd(&inquiry(false, 0, 36)).data[1], 0x80);
    h.cmd(&[0x1b, 1, 0, 0, 0x02, 0]).good();
    h.cmd(&[0; 6])
        .check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT);
    h.cmd(&rw10(0x28, 0, 0, 1))
        .check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT);
    h.cmd(&rw10(0x35, 0, 0, 1))
        .check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT);
    h.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT);
    h.cmd(&[0x1b, 1, 0, 0, 0x03, 0]).good();
    h.cmd(&[0; 6]).good();
    // Power condition changes are ignored.
    h.cmd(&[0x1b, 1, 0, 0, 0x12, 0]).good();
    h.cmd(&[0; 6]).good();
    // PREVENT blocks eject.
    h.cmd(&[0x1e, 0, 0, 0, 1, 0]).good();
    h.cmd(&[0x1b, 0, 0, 0, 0x02, 0])
        .check(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED);
    h.cmd(&[0; 6]).good();
    h.cmd(&[0x1e, 0, 0, 0, 0, 0]).good();
    h.cmd(&[0x1b, 0, 0, 0, 0x02, 0]).good();
    h.cmd(&[0; 6])
        .check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT);
    let o = h.cmd(&[0x03, 0, 0, 0, 18, 0]);
    assert_eq!((o.good().data[2], o.data[12]), (key::NOT_READY, 0x3a));
    // PREVENT blocks loading too (libiscsi's PreventAllow.Eject).
    h.cmd(&[0x1e, 0, 0, 0, 1, 0]).good();
    h.cmd(&[0x1b, 0, 0, 0, 0x03, 0])
        .check(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED);
    h.cmd(&[0x1e, 0, 0, 0, 0, 0]).good();
    h.cmd(&[0x1b, 0, 0, 0, 0x03, 0]).good();
    h.cmd(&[0; 6]).good();
}

/// EXTENDED COPY (LID1) with a parameter list of `len` bytes.
fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn write_atomic16(lba: u64, blocks: u16, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9c;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn write_atomic_writes_alone_within_its_limit() {
    let mut h = H::new();
    // VPD B0 announces the limit; alignment and granularity are free.
    let b0 = h.cmd(&inquiry(true, 0xb0, 255)).data;
    let max = u32::from_be_bytes(b0[44..48].try_into().unwrap());
    assert_eq!(u64::from(max), (1 << 20) / 512);
    assert_eq!(&b0[48..56], &[0; 8]);
    let data = pattern(8 * 512, 3);
    let mut buf = data.clone();
    let req = Request {
        cdb: &write_atomic16(8, 8, 0x18),
        nexus: A,
        lun: L1,
        expected_len: buf.len() as u32,
    };
    match h.set.execute(&req, &mut buf) {
        Outcome::Io(t) => {
            assert!(t.is_exclusive(), "runs alone on its LU");
            assert_eq!(t.simple(&buf), None, "not a plain engine write");
            t.run(&h.dev, &mut buf);
        }
        Outcome::Done(r) => panic!("{r:?}"),
    }
    assert_eq!(h.cmd(&rw10(0x28, 0, 8, 8)).good().data, data);
    // Zero blocks, the edges, the limits.
    h.cmd(&write_atomic16(0, 0, 0)).good();
    h.cmd(&write_atomic16(BLOCKS + 1, 0, 0))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&write_atomic16(1 << 63, 0, 0))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&write_atomic16(BLOCKS - 1, 2, 0), &[0; 1024])
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&write_atomic16(0, 1, 0x20), &[0; 512])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let mut c = write_atomic16(0, 1, 0);
    c[11] = 1; // an atomic boundary
    h.cmd_out(&c, &[0; 512])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let mut cfg = disk(false);
    cfg.size_bytes = 8 << 20;
    let mut h = H::with(cfg);
    h.cmd_out(&write_atomic16(0, 2049, 0), &vec![0; 2049 * 512])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

/// EXTENDED COPY across two LUs of a set: resolved by VPD 83h NAA
/// designators, run as one media task over both stores, refused with
/// RESERVATION CONFLICT when another nexus holds the destination.
#[test]
fn extended_copy_between_lus_and_its_refusals() {
    let l2 = LunId(2);
    let mut set = LunSet::new(1, port());
    set.insert(L1, disk(false));
    let mut c2 = LunConfig::tgt_defaults(1, l2);
    c2.size_bytes = BLOCKS * 512;
    set.insert(l2, c2);
    set.add_nexus(A);
    set.add_nexus(B);
    let devs: Vec<std::sync::Arc<dyn BlockDevice>> = vec![
        std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize)),
        std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize)),
    ];
    let data = pattern(64 * 512, 9);
    devs[0].write_at(&data, 0).unwrap();
    let run = |set: &mut LunSet, n: NexusId, lun: LunId, cdb: &[u8], dout: &[u8]| {
        let mut buf = dout.to_vec();
        let req = Request {
            cdb,
            nexus: n,
            lun,
            expected_len: dout.len() as u32,
        };
        match set.execute(&req, &mut buf) {
            Outcome::Done(r) => (r, buf),
            Outcome::Io(mut t) => {
                t.attach_copy_stores(|id| Some(devs[(id.0 - 1) as usize].clone()));
                let r = t.run(&*devs[0], &mut buf);
                (r, buf)
            }
        }
    };
    for n in [A, B] {
        for l in [L1, l2] {
            run(&mut set, n, l, &[0; 6], &[]);
        }
    }
    let naa = |set: &mut LunSet, lun: LunId| {
        let (_, page) = run(set, A, lun, &inquiry(true, 0x83, 255), &[]);
        let at = 4 + 4 + 36; // after the T10 vendor id designator
        assert_eq!(page[at + 1], 0x03);
        let mut d = page[at..at + 12].to_vec();
        d.resize(20, 0);
        d
    };
    let (d1, d2) = (naa(&mut set, L1), naa(&mut set, l2));
    let list = |segs: &[(u16, u16, u16)], tgts: &[&[u8]]| {
        let mut p = vec![0u8; 16];
        p[2..4].copy_from_slice(&((tgts.len() * 32) as u16).to_be_bytes());
        p[8..12].copy_from_slice(&((segs.len() * 28) as u32).to_be_bytes());
        for t in tgts {
            let mut d = vec![0xe4, 0, 0, 0];
            d.extend_from_slice(t);
            d.resize(32, 0);
            p.extend_from_slice(&d);
        }
        for &(src, dst, blocks) in segs {
            let mut d = vec![0x02, 0, 0, 0x18];
            d.extend_from_slice(&src.to_be_bytes());
            d.extend_from_slice(&dst.to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&blocks.to_be_bytes());
            d.extend_from_slice(&0u64.to_be_bytes());
            d.extend_from_slice(&16u64.to_be_bytes());
            p.extend_from_slice(&d);
        }
        p
    };
    let cdb = xcopy_cdb;
    let p = list(&[(0, 1, 64)], &[&d1, &d2]);
    let (r, _) = run(&mut set, A, L1, &cdb(p.len()), &p);
    assert_eq!(r.status, Status::Good, "{r:?}");
    let mut back = vec![0u8; 64 * 512];
    devs[1].read_at(&mut back, 16 * 512).unwrap();
    assert!(back == data);
    // An index past the target descriptors: COPY ABORTED.
    let p = list(&[(0, 2, 8)], &[&d1, &d2]);
    let (r, _) = run(&mut set, A, L1, &cdb(p.len()), &p);
    assert_eq!(
        (r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
        (0x0a, 0x0d, 0x02)
    );
    // A designator nobody has: unreachable.
    let p = list(
        &[(0, 1, 8)],
        &[&d1, &[0x01, 0x03, 0, 8, 9, 9, 9, 9, 9, 9, 9, 9]],
    );
    let (r, _) = run(&mut set, A, L1, &cdb(p.len()), &p);
    assert_eq!(r.sense[2] & 0x0f, 0x0a);
    // Nine segments: more than the copy manager takes.
    let p = list(&[(0, 1, 1); 9], &[&d1, &d2]);
    let (r, _) = run(&mut set, A, L1, &cdb(p.len()), &p);
    assert_eq!((r.sense[12], r.sense[13]), (0x26, 0x08));
    // A parameter list shorter than its header says.
    let p = list(&[(0, 1, 8)], &[&d1, &d2]);
    let (r, _) = run(&mut set, A, L1, &cdb(p.len() - 1), &p[..p.len() - 1]);
    assert_eq!((r.sense[12], r.sense[13]), (0x1a, 0x00));
    // Another nexus reserves the destination: the copy conflicts.
    let (r, _) = run(&mut set, B, l2, &[0x16, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.status, Status::Good);
    let p = list(&[(0, 1, 8)], &[&d1, &d2]);
    let (r, _) = run(&mut set, A, L1, &cdb(p.len()), &p);
    assert_eq!(r.status, Status::ReservationConflict);
}

fn sanitize_cdb(sa: u8, immed: bool, plen: u16) -> [u8; 10] {
    let mut c = [
        0x48,
        sa | if immed { 0x80 } else { 0 },
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    c[7..9].copy_from_slice(&plen.to_be_bytes());
    c
}

/// SANITIZE (SBC-4 §5.30): the LU answers SANITIZE IN PROGRESS from the
/// moment the command is accepted until its task has run, INQUIRY and
/// REQUEST SENSE excepted; OVERWRITE fills every block with the pattern,
/// inverted on alternate passes; BLOCK ERASE deallocates; a failed
/// sanitize leaves the LU in failure mode until EXIT FAILURE MODE; a task
/// dropped unrun leaves the LU as it was.
#[test]
fn sanitize_overwrite_block_erase_and_failure_mode() {
    let mut h = H::thin();
    h.cmd_out(&rw10(0x2a, 0, 0, 2), &pattern(1024, 1)).good();
    // OVERWRITE, 2 passes with INVERT, a 3-byte pattern.
    let p = [0x80 | 2, 0, 0, 3, 0x11, 0x22, 0x33];
    let mut buf = p.to_vec();
    let req = Request {
        cdb: &sanitize_cdb(1, false, p.len() as u16),
        nexus: A,
        lun: L1,
        expected_len: p.len() as u32,
    };
    let task = match h.set.execute(&req, &mut buf) {
        Outcome::Io(t) => t,
        Outcome::Done(r) => panic!("{r:?}"),
    };
    assert!(task.is_exclusive() && !task.is_immediate());
    // Accepted, not yet run: every other command waits it out.
    h.cmd(&[0; 6])
        .check(key::NOT_READY, asc::SANITIZE_IN_PROGRESS);
    h.cmd(&rw10(0x28, 0, 0, 1))
        .check(key::NOT_READY, asc::SANITIZE_IN_PROGRESS);
    h.cmd(&inquiry(false, 0, 36)).good();
    let rs = h.cmd(&[0x03, 0, 0, 0, 18, 0]);
    assert_eq!(
        (rs.good().data[2], rs.data[12], rs.data[13]),
        (0x02, 0x04, 0x1b)
    );
    h.cmd_out(&sanitize_cdb(2, false, 0), &[])
        .check(key::NOT_READY, asc::SANITIZE_IN_PROGRESS);
    let r = task.run(&h.dev, &mut buf);
    assert_eq!(r.status, Status::Good);
    // Two passes, the second inverted: each block holds the pattern
    // repeated from its first byte.
    let back = h
        .cmd(&rw10(0x28, 0, BLOCKS as u32 - 1, 1))
        .good()
        .data
        .clone();
    let want: Vec<u8> = (0..512)
        .map(|i| ![0x11u8, 0x22, 0x33][(i % 512) % 3])
        .collect();
    assert_eq!(back, want);
    // Bad parameter lists.
    for plen in [0u16, 4, 517] {
        h.cmd_out(&sanitize_cdb(1, false, plen), &vec![1; plen as usize])
            .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    }
    h.cmd_out(&sanitize_cdb(1, false, 8), &[0, 0, 0, 4, 1, 2, 3, 4])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    h.cmd_out(&sanitize_cdb(1, false, 8), &[1, 0, 0, 5, 1, 2, 3, 4])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    h.cmd_out(&sanitize_cdb(3, false, 0), &[])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let mut c = sanitize_cdb(2, false, 0);
    c[4] = 1;
    h.cmd_out(&c, &[])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    // BLOCK ERASE deallocates everything; reads give zeros.
    h.cmd_out(&sanitize_cdb(2, false, 0), &[]).good();
    assert_eq!(h.cmd(&rw10(0x28, 0, 0, 1)).good().data, vec![0; 512]);
    assert!(h.dev.mapped.lock().unwrap().iter().all(|m| !m));
    // IMMED: the task says so; dropped unrun, the LU is usable again.
    let mut buf = Vec::new();
    let req = Request {
        cdb: &sanitize_cdb(2, true, 0),
        nexus: A,
        lun: L1,
        expected_len: 0,
    };
    match h.set.execute(&req, &mut buf) {
        Outcome::Io(t) => assert!(t.is_immediate()),
        Outcome::Done(r) => panic!("{r:?}"),
    }
    h.cmd(&[0; 6]).good();
    // A store that fails: failure mode, media access refused, EXIT
    // FAILURE MODE leaves it.
    let mut buf = p.to_vec();
    let req = Request {
        cdb: &sanitize_cdb(1, false, p.len() as u16),
        nexus: A,
        lun: L1,
        expected_len: p.len() as u32,
    };
    let Outcome::Io(task) = h.set.execute(&req, &mut buf) else {
        panic!()
    };
    let mut failing = TestDev::new(512 * BLOCKS as usize);
    failing.fail = true;
    let r = task.run(&failing, &mut buf);
    assert_eq!(r.status, Status::CheckCondition);
    h.cmd(&rw10(0x28, 0, 0, 1))
        .check(key::MEDIUM_ERROR, asc::SANITIZE_COMMAND_FAILED);
    h.cmd_out(&sanitize_cdb(0x1f, false, 0), &[]).good();
    h.cmd(&rw10(0x28, 0, 0, 1)).good();
}

#[test]
fn read_defect_data_reports_no_defects() {
    let mut h = H::new();
    // (10): PLIST and GLIST asked in long block format; header only.
    let o = h.cmd(&[0x37, 0, 0x18 | 0x03, 0, 0, 0, 0, 0, 32, 0]);
    assert_eq!(o.good().data, [0, 0x1b, 0, 0]);
    // (12): an 8-byte header, truncated to the allocation length.
    let o = h.cmd(&[0xb7, 0x08, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
    assert_eq!(o.good().data, [0, 0x08, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        h.cmd(&[0xb7, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0])
            .good()
            .data
            .len(),
        2
    );
    // A reserved format is an invalid field.
    h.cmd(&[0x37, 0, 0x07, 0, 0, 0, 0, 0, 32, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

// ----------------------------------------------------------- mode pages

fn mode_sense6(page: u8, pc: u8, alloc: u8) -> [u8; 6] {
    [0x1a, 0, (pc << 6) | page, 0, alloc, 0]
}

fn find_page(ms: &[u8], header: usize, code: u8) -> Option<Vec<u8>> {
    let bd = if header == 4 {
        ms[3] as usize
    } else {
        u16::from_be_bytes([ms[6], ms[7]]) as usize
    };
    let mut off = header + bd;
    while off + 2 <= ms.len() {
        let len = ms[off + 1] as usize + 2;
        if ms[off] & 0x3f == code {
            return Some(ms[off..off + len].to_vec());
        }
        off += len;
    }
    None
}

#[test]
fn mode_sense() {
    let mut h = H::new();
    let o = h.cmd(&mode_sense6(0x3f, 0, 255));
    let ms = o.good().data.clone();
    assert_eq!(ms[0] as usize, ms.len() - 1);
    assert_eq!(ms[2], 0x10); // DPOFUA, not WP
    assert_eq!(ms[3], 8);
    assert_eq!(&ms[4..8], &1024u32.to_be_bytes());
    assert_eq!(&ms[9..12], &[0, 2, 0]);
    for code in [1, 2, 3, 4, 8, 0x0a, 0x1c] {
        let p = find_page(&ms, 4, code).unwrap();
        let single = h.cmd(&mode_sense6(code, 0, 255)).data;
        assert_eq!(find_page(&single, 4, code).unwrap(), p);
    }
    assert_eq!(find_page(&ms, 4, 8).unwrap()[2] & 0x04, 0x04);
    // Changeable values.
    let ch = h.cmd(&mode_sense6(0x3f, 1, 255)).data;
    assert_eq!(find_page(&ch, 4, 8).unwrap()[2], 0x04);
    assert_eq!(find_page(&ch, 4, 0x0a).unwrap()[2..5], [0x04, 0, 0x08]);
    h.cmd(&mode_sense6(0x3f, 2, 255)).good();
    h.cmd(&mode_sense6(0x3f, 3, 255))
        .check(key::ILLEGAL_REQUEST, asc::SAVING_PARAMETERS_NOT_SUPPORTED);
    h.cmd(&mode_sense6(0x05, 0, 255))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&[0x1a, 0, 0x08, 1, 255, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&[0x1a, 0, 0x3f, 0xff, 255, 0]).good();
    // Truncation and DBD.
    assert_eq!(h.cmd(&mode_sense6(0x3f, 0, 4)).good().data.len(), 4);
    let o = h.cmd(&[0x1a, 0x08, 0x0a, 0, 255, 0]);
    assert_eq!(o.good().data[3], 0);
    assert_eq!(o.data.len(), 4 + 12);
    // MODE SENSE (10) with LLBAA.
    let o = h.cmd(&[0x5a, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0]);
    let d = &o.good().data;
    assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
    assert_eq!(d[4] & 1, 1);
    assert_eq!(&d[6..8], &[0, 16]);
    assert_eq!(&d[8..16], &1024u64.to_be_bytes());
    assert_eq!(d[24], 0x08);
}

#[test]
fn soft_threshold_shows_in_vpd_and_mode_page_and_raises_its_unit_attention() {
    let mut cfg = disk(true);
    cfg.soft_threshold_pct = 75;
    let mut h = H::with(cfg);
    // 1024 blocks fit a 32-bit count: exponent 0, threshold 768 blocks.
    assert_eq!(h.cmd(&inquiry(true, 0xb2, 255)).good().data[4], 0);
    let lbp = h.cmd(&[0x5a, 0x08, 0x1c, 0x02, 0, 0, 0, 0, 255, 0]);
    let d = lbp.good().data.clone();
    assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
    let pg = &d[8..];
    assert_eq!(&pg[..4], &[0x5c, 0x02, 0, 20]);
    assert_eq!(pg[4] & 1, 0, "SITUA 0: every nexus is told");
    assert_eq!(&pg[16..24], &[0x81, 0x02, 0, 0, 0, 0, 0x03, 0x00]);
    // All subpages of 1Ch: the page_0 page, then the LBP subpage.
    let all = h.cmd(&[0x5a, 0x08, 0x1c, 0xff, 0, 0, 0, 0, 255, 0]).data;
    assert_eq!(all[8], 0x1c);
    assert_eq!(&all[8 + 12..8 + 12 + 2], &[0x5c, 0x02]);
    let every = h.cmd(&[0x5a, 0x08, 0x3f, 0xff, 0, 0, 0, 0, 255, 0]).data;
    assert!(every.windows(4).any(|w| w == [0x5c, 0x02, 0, 20]));
    // Not among the page_0 pages, nor a subpage another page has.
    let page0 = h.cmd(&[0x5a, 0x08, 0x3f, 0x00, 0, 0, 0, 0, 255, 0]).data;
    assert!(!page0.windows(2).any(|w| w == [0x5c, 0x02]));
    h.cmd(&[0x1a, 0, 0x08, 0x02, 255, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    // MODE SELECT may restate the subpage, not change it.
    let mut p = vec![0u8; 8];
    p.extend_from_slice(pg);
    let sel = [0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0];
    h.cmd_out(&sel, &p).good();
    p[8 + 20 + 3] = 0x01;
    h.cmd_out(&sel, &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // Crossing the threshold tells every nexus, once.
    h.set.add_nexus(B);
    h.run(B, L1, &[0; 6], &[]);
    assert!(h.set.soft_threshold_reached(L1));
    for n in [A, B] {
        h.run(n, L1, &[0; 6], &[]).check(
            key::UNIT_ATTENTION,
            asc::THIN_PROVISIONING_SOFT_THRESHOLD_REACHED,
        );
        h.run(n, L1, &[0; 6], &[]).good();
    }
    // No threshold, or not thin: nothing to reach, and no descriptor.
    let mut h = H::thin();
    assert!(!h.set.soft_threshold_reached(L1));
    h.cmd(&[0; 6]).good();
    let d = h.cmd(&[0x5a, 0x08, 0x1c, 0x02, 0, 0, 0, 0, 255, 0]).data;
    assert_eq!(&d[8..12], &[0x5c, 0x02, 0, 12]);
    let mut h = H::new();
    h.cmd(&[0x5a, 0x08, 0x1c, 0x02, 0, 0, 0, 0, 255, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn threshold_sets_span_large_lus() {
    let mut c = disk(true);
    // 2^40 blocks of 512 bytes: 2^31 sets of 2^9 blocks fit 32 bits,
    // sets of 2^8 would not.
    c.size_bytes = 512 << 40;
    c.soft_threshold_pct = 50;
    assert_eq!(c.threshold_exponent(), 9);
    assert_eq!(c.soft_threshold_sets(), Some(1 << 30));
    assert_eq!(c.soft_threshold_bytes(), Some(512 << 39));
    c.thin = false;
    assert_eq!(c.soft_threshold_sets(), None);
}

fn mode_select6(page: &[u8]) -> ([u8; 6], Vec<u8>) {
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(page);
    ([0x15, 0x10, 0, 0, p.len() as u8, 0], p)
}

#[test]
fn mode_select_round_trips() {
    let mut h = H::new();
    h.set.add_nexus(B);
    h.run(B, L1, &[0; 6], &[]);
    // WCE off.
    let mut caching = find_page(&h.cmd(&mode_sense6(8, 0, 255)).data, 4, 8).unwrap();
    caching[2] &= !0x04;
    let (c, p) = mode_select6(&caching);
    h.cmd_out(&c, &p).good();
    assert!(!h.set.config(L1).unwrap().write_cache);
    assert_eq!(
        find_page(&h.cmd(&mode_sense6(8, 0, 255)).data, 4, 8).unwrap()[2] & 0x04,
        0
    );
    h.run(B, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED);
    h.cmd(&[0; 6]).good();
    // D_SENSE on: sense switches to descriptor format.
    let mut control = find_page(&h.cmd(&mode_sense6(0x0a, 0, 255)).data, 4, 0x0a).unwrap();
    control[2] |= 0x04;
    let (c, p) = mode_select6(&control);
    h.cmd_out(&c, &p).good();
    let o = h.cmd(&rw16(0x88, 0, u64::MAX, 1));
    assert_eq!(o.sense[0], 0x72);
    o.check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    assert_eq!(
        h.set.config(L1).unwrap().sense_format,
        SenseFormat::Descriptor
    );
    // SWP on: writes are refused, reads work, WP shows.
    control[2] &= !0x04;
    control[4] |= 0x08;
    let (c, p) = mode_select6(&control);
    h.cmd_out(&c, &p).good();
    h.cmd(&rw10(0x28, 0, 0, 1)).good();
    h.cmd_out(&rw10(0x2a, 0, 0, 1), &[0; 512])
        .check(key::DATA_PROTECT, asc::SOFTWARE_WRITE_PROTECTED);
    assert_eq!(h.cmd(&mode_sense6(0x0a, 0, 255)).data[2] & 0x80, 0x80);
    control[4] &= !0x08;
    let (c, p) = mode_select6(&control);
    h.cmd_out(&c, &p).good();
    h.cmd_out(&rw10(0x2a, 0, 0, 1), &[0; 512]).good();
    // MODE SELECT (10) with a block descriptor restating the block length.
    let mut p10 = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    p10.extend_from_slice(&caching);
    h.cmd_out(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, p10.len() as u8, 0], &p10)
        .good();
    p10[14] = 0x10;
    h.cmd_out(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, p10.len() as u8, 0], &p10)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
}

#[test]
fn mode_select_errors() {
    let mut h = H::new();
    let caching = find_page(&h.cmd(&mode_sense6(8, 0, 255)).data, 4, 8).unwrap();
    let (mut c, p) = mode_select6(&caching);
    // Non-changeable field changed.
    let mut bad = p.clone();
    bad[4 + 3] ^= 1;
    h.cmd_out(&c, &bad)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // Wrong page length, unknown page, subpage format.
    let mut bad = p.clone();
    bad[5] += 1;
    h.cmd_out(&c, &bad)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    let mut bad = p.clone();
    bad[4] = 0x05;
    h.cmd_out(&c, &bad)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    let mut bad = p.clone();
    bad[4] |= 0x40;
    h.cmd_out(&c, &bad)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // Truncated parameter list.
    h.cmd_out(&c, &p[..10])
        .check(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR);
    c[4] = 2;
    h.cmd_out(&c, &p[..2])
        .check(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR);
    c[4] = 0;
    h.cmd_out(&c, &[]).good();
    // PF=0, SP=1.
    h.cmd_out(&[0x15, 0, 0, 0, p.len() as u8, 0], &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&[0x15, 0x11, 0, 0, p.len() as u8, 0], &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

// ------------------------------------------------ supported operations

fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa3;
    c[1] = 0x0c;
    c[2] = options | if rctd { 0x80 } else { 0 };
    c[3] = opcode;
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn report_supported_opcodes() {
    let mut h = H::thin();
    let all = h.cmd(&rsoc(false, 0, 0, 0, 65535)).data;
    let len = u32::from_be_bytes(all[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, all.len() - 4);
    assert_eq!(len % 8, 0);
    let descs: Vec<&[u8]> = all[4..].chunks(8).collect();
    assert!(descs.iter().any(|d| d[0] == 0x42));
    for d in &descs {
        let servactv = d[5] & 1 != 0;
        let sa = u16::from_be_bytes([d[2], d[3]]);
        assert!(servactv || sa == 0);
        let one = h.cmd(&rsoc(false, if servactv { 2 } else { 1 }, d[0], sa, 65535));
        one.good();
        assert_eq!(one.data[1] & 7, 3);
        assert_eq!(one.data[4], d[0]);
        assert_eq!(
            u16::from_be_bytes([one.data[2], one.data[3]]) as usize,
            one.data.len() - 4
        );
        let wrong = h.cmd(&rsoc(false, if servactv { 1 } else { 2 }, d[0], sa, 65535));
        wrong.check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    }
    // RCTD: 20-byte descriptors with timeouts.
    let all = h.cmd(&rsoc(true, 0, 0, 0, 65535)).data;
    assert_eq!((all.len() - 4) % 20, 0);
    assert!(all[4..].chunks(20).all(|d| d[5] & 2 != 0 && d[9] == 0x0a));
    let one = h.cmd(&rsoc(true, 1, 0x28, 0, 65535)).data;
    assert_eq!(one[1] & 0x80, 0x80);
    assert_eq!(one[5] & 0x18, 0x18);
    assert_eq!(one.len(), 4 + 10 + 12);
    // Unsupported opcode: SUPPORT 001b.
    let one = h.cmd(&rsoc(false, 1, 0x3b, 0, 65535)).data;
    assert_eq!(one[1] & 7, 1);
    h.cmd(&rsoc(false, 5, 0, 0, 65535))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(h.cmd(&rsoc(false, 0, 0, 0, 10)).good().data.len(), 10);
    // UNMAP is listed only when thin.
    let mut h = H::new();
    let all = h.cmd(&rsoc(false, 0, 0, 0, 65535)).data;
    assert!(!all[4..].chunks(8).any(|d| d[0] == 0x42));
    // Task management functions.
    let o = h.cmd(&[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]);
    assert_eq!(o.good().data[0] & 0x08, 0x08);
}

// ------------------------------------------- WRITE SAME / UNMAP / GLS

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for &(lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let len = p.len();
    p[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
    p
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let l = (len as u16).to_be_bytes();
    [0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

fn gls(lba: u64, alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn write_same() {
    let mut h = H::new();
    let block = pattern(512, 5);
    h.cmd_out(&rw10(0x41, 0, 10, 3), &block).good();
    let d = h.cmd(&rw10(0x28, 0, 10, 3)).data;
    assert!(d.chunks(512).all(|c| c == &block[..]));
    h.cmd_out(&rw16(0x93, 0, 1020, 4), &block).good();
    // 0 blocks: to the end of the medium.
    h.cmd_out(&rw10(0x41, 0, 1000, 0), &[1; 512]).good();
    assert!(h.cmd(&rw10(0x28, 0, 1000, 24)).data.iter().all(|b| *b == 1));
    // NDOB writes zeros.
    h.cmd(&rw16(0x93, 0x01, 1000, 2)).good();
    assert!(h.cmd(&rw10(0x28, 0, 1000, 2)).data.iter().all(|b| *b == 0));
    // Errors.
    h.cmd_out(&rw10(0x41, 0, 1023, 2), &block)
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&rw10(0x41, 0, 1025, 0), &block)
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&rw16(0x93, 0, u64::MAX, 1), &block)
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&rw10(0x41, 0, 0, 1), &block[..256])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw10(0x41, 0, 0, 1), &[0; 1024])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw10(0x41, 0x08, 0, 1), &block)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw10(0x41, 0x10, 0, 1), &block)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw10(0x41, 0x20, 0, 1), &block)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw10(0x41, 0x02, 0, 1), &block)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn write_same_limit_and_unmap() {
    let mut big = disk(true);
    big.size_bytes = 4 << 30;
    let mut h = H::with(big);
    let max = (1u64 << 30) / 512;
    h.cmd_out(&rw16(0x93, 0, 0, (max + 1) as u32), &[0; 512])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw10(0x41, 0, 0, 0), &[0; 512])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);

    let mut h = H::thin();
    h.cmd_out(&rw10(0x2a, 0, 0, 8), &[0xff; 4096]).good();
    h.cmd_out(&rw10(0x41, 0x08, 2, 4), &[0; 512]).good();
    assert!(h.cmd(&rw10(0x28, 0, 2, 4)).data.iter().all(|b| *b == 0));
    let o = h.cmd(&gls(0, 1024));
    let d = o.good().data.clone();
    assert_eq!(&d[8..16], &0u64.to_be_bytes());
    assert_eq!(&d[16..20], &2u32.to_be_bytes());
    assert_eq!(d[20], 0);
    assert_eq!(&d[24..32], &2u64.to_be_bytes());
    assert_eq!(&d[32..36], &4u32.to_be_bytes());
    assert_eq!(d[36], 1);
    // UNMAP deallocates whatever the Data-Out holds (as LIO and tgt do;
    // libiscsi's WriteSame*.UnmapUntilEnd expects zeros back).
    h.cmd_out(&rw10(0x2a, 0, 2, 1), &[7; 512]).good();
    h.cmd_out(&rw10(0x41, 0x08, 2, 1), &[5; 512]).good();
    assert!(h.cmd(&rw10(0x28, 0, 2, 1)).data.iter().all(|b| *b == 0));
    // NDOB + UNMAP deallocates.
    h.cmd(&rw16(0x93, 0x09, 2, 1)).good();
    assert_eq!(h.cmd(&gls(2, 24)).data[20], 1);
}

#[test]
fn unmap_and_lba_status() {
    let mut h = H::thin();
    h.cmd_out(&rw10(0x2a, 0, 0, 16), &[0xaa; 8192]).good();
    let p = unmap_list(&[(1, 2), (10, 1), (12, 0)]);
    let o = h.cmd_out(&unmap_cdb(p.len()), &p);
    assert_eq!(o.good().wanted, p.len() as u64);
    let d = h.cmd(&rw10(0x28, 0, 0, 16)).data;
    assert!(d[512..1536].iter().all(|b| *b == 0));
    assert!(d[..512].iter().all(|b| *b == 0xaa));
    assert!(d[5120..5632].iter().all(|b| *b == 0));
    let s = h.cmd(&gls(1, 24)).data;
    assert_eq!(s.len(), 24);
    assert_eq!(&s[0..4], &20u32.to_be_bytes());
    assert_eq!(
        (&s[8..16], &s[16..20], s[20]),
        (&1u64.to_be_bytes()[..], &2u32.to_be_bytes()[..], 1)
    );
    let s = h.cmd(&gls(3, 24)).data;
    assert_eq!((s[20], &s[16..20]), (0, &7u32.to_be_bytes()[..]));
    // Last block; beyond the end.
    h.cmd(&gls(1023, 24)).good();
    h.cmd(&gls(1024, 24))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd(&gls(u64::MAX, 24))
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    // Empty lists and zero-length descriptors (also at the end of the medium).
    h.cmd(&unmap_cdb(0)).good();
    let p = unmap_list(&[(1024, 0)]);
    h.cmd_out(&unmap_cdb(p.len()), &p).good();
    let p = unmap_list(&[]);
    h.cmd_out(&unmap_cdb(p.len()), &p).good();
    // Errors.
    let p = unmap_list(&[(1020, 5)]);
    h.cmd_out(&unmap_cdb(p.len()), &p)
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    let p = unmap_list(&[(u64::MAX, 1)]);
    h.cmd_out(&unmap_cdb(p.len()), &p)
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&unmap_cdb(4), &[0; 4])
        .check(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR);
    let many: Vec<(u64, u32)> = (0..2049).map(|i| (i % 1000, 0)).collect();
    let p = unmap_list(&many);
    h.cmd_out(&unmap_cdb(p.len()), &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    let mut c = unmap_cdb(24);
    c[1] = 1;
    h.cmd_out(&c, &unmap_list(&[(0, 1)]))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    // Not thin: UNMAP is not a command of this LU; GET LBA STATUS says mapped.
    let mut h = H::new();
    let p = unmap_list(&[(0, 1)]);
    h.cmd_out(&unmap_cdb(p.len()), &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE);
    let set_dev = MemDevice::new(512 * BLOCKS as usize);
    let mut buf = Vec::new();
    let req = Request {
        cdb: &gls(0, 64),
        nexus: A,
        lun: L1,
        expected_len: 64,
    };
    match h.set.execute(&req, &mut buf) {
        Outcome::Io(t) => {
            let r = t.run(&set_dev, &mut buf);
            assert_eq!(r.status, Status::Good);
            assert_eq!(&buf[16..20], &1024u32.to_be_bytes());
            assert_eq!(buf[20], 0);
        }
        Outcome::Done(r) => panic!("{r:?}"),
    }
}

// ------------------------------------------------------ generic checks

#[test]
fn io_task_is_send_static() {
    fn check<T: Send + 'static + std::fmt::Debug>() {}
    check::<IoTask>();
    check::<LunSet>();
}

#[test]
fn verify_one_block_needs_a_block() {
    let mut h = H::new();
    h.cmd_out(&rw10(0x2f, 0x06, 0, 2), &[0; 100])
        .check(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR);
}

#[test]
fn generic_cdb_checks() {
    let mut h = H::new();
    h.cmd(&[0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE);
    h.cmd(&[0x04, 0, 0, 0, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE);
    h.cmd(&[0x7f, 0, 0, 0, 0, 0, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE);
    h.cmd(&[])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE);
    h.cmd(&[0x28, 0, 0])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    let o = h.cmd(&[0, 0, 0, 0, 0, 0x04]);
    o.check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(&o.sense[15..18], &[0xca, 0, 5]);
    // A UA wins over an unsupported opcode.
    h.set.add_nexus(B);
    h.run(B, L1, &[0x04, 0, 0, 0, 0, 0], &[])
        .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
}

/// Random CDBs and Data-Out must never panic, and every answer must be
/// self-consistent.
#[test]
fn fuzz_random_cdbs() {
    let mut h = H::thin();
    h.set.insert(LunId(2), {
        let mut c = disk(false);
        c.removable = true;
        c
    });
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let opcodes: Vec<u8> = vec![
        0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2e,
        0x2f, 0x34, 0x35, 0x37, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5a, 0x88, 0x8a, 0x8e, 0x8f, 0x90,
        0x91, 0x93, 0x9c, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa, 0xae, 0xaf, 0xb7,
    ];
    for i in 0..30_000u32 {
        let r = next();
        let len = [6usize, 10, 12, 16, 3, 0][(r % 6) as usize];
        let mut cdb: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(b) = cdb.first_mut() {
            if r & 0x100 != 0 {
                *b = opcodes[(next() as usize) % opcodes.len()];
            }
        }
        // Keep lengths small often enough to reach the I/O paths.
        if r & 0x200 != 0 && cdb.len() >= 10 {
            for b in &mut cdb[2..] {
                *b &= 0x03;
            }
        }
        let dlen = (next() % 1100) as usize;
        let dout: Vec<u8> = (0..dlen).map(|_| next() as u8).collect();
        let nexus = if i % 7 == 0 { B } else { A };
        if i % 1000 == 0 {
            h.set.add_nexus(B);
        }
        let lun = LunId(next() % 4);
        let o = h.run(nexus, lun, &cdb, &dout);
        if o.status == Status::CheckCondition {
            assert!(o.data.is_empty());
            assert!(!o.sense.is_empty());
        }
        assert!(o.data.len() as u64 <= MAX_TRANSFER_BYTES);
        if o.status == Status::Good && !o.data.is_empty() {
            assert!(o.data.len() as u64 <= o.wanted.max(o.data.len() as u64));
        }
    }
}

// ------------------------------------------------- persistent reservations

const C: NexusId = NexusId(3);

fn prin(sa: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

fn prout(sa: u8, typ: u8) -> [u8; 10] {
    [0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0]
}

fn prout_params(key: u64, sark: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p
}

/// Three named nexuses on L1, their POWER ON UAs consumed.
fn pr_h() -> H {
    let mut h = H::new();
    h.set.add_nexus_named(B, "iqn.b,i,0x000000000002");
    h.set.add_nexus_named(C, "iqn.c,i,0x000000000003");
    for n in [B, C] {
        h.run(n, L1, &[0; 6], &[]);
        h.run(n, L1, &[0; 6], &[]).good();
    }
    h
}

impl H {
    fn register(&mut self, n: NexusId, key: u64) {
        self.run(n, L1, &prout(6, 0), &prout_params(0, key)).good();
    }
    fn pr_out(&mut self, n: NexusId, sa: u8, typ: u8, key: u64, sark: u64) -> Out {
        self.run(n, L1, &prout(sa, typ), &prout_params(key, sark))
    }
    fn keys(&mut self, n: NexusId) -> (u32, Vec<u64>) {
        let o = self.run(n, L1, &prin(0, 1024), &[]);
        let d = &o.good().data;
        let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        let keys = d[8..8 + len]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (gen, keys)
    }
    /// (key, type) of the reservation, if any.
    fn reservation(&mut self, n: NexusId) -> Option<(u64, u8)> {
        let o = self.run(n, L1, &prin(1, 1024), &[]);
        let d = &o.good().data;
        if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
            return None;
        }
        Some((
            u64::from_be_bytes(d[8..16].try_into().unwrap()),
            d[21] & 0x0f,
        ))
    }
    /// TEST UNIT READY until no unit attention is left; how many there were.
    fn settle(&mut self, n: NexusId) -> usize {
        (0..10)
            .find(|_| self.run(n, L1, &[0; 6], &[]).status == Status::Good)
            .unwrap()
    }
    fn status(&mut self, n: NexusId, cdb: &[u8], dout: &[u8]) -> Status {
        self.run(n, L1, cdb, dout).status
    }
}

#[test]
fn pr_in_service_actions() {
    let mut h = pr_h();
    assert_eq!(h.keys(A), (0, vec![]));
    assert_eq!(h.reservation(A), None);
    let o = h.cmd(&prin(2, 100));
    assert_eq!(
        o.good().data,
        vec![
            0,
            8,
            0x10 | 0x08 | 0x04,
            0x80,
            0x80 | 0x40 | 0x20 | 0x08 | 0x02,
            0x01,
            0,
            0
        ]
    );
    for sa in 4..0x20 {
        h.cmd(&prin(sa, 100))
            .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    }
    // READ KEYS truncated: ADDITIONAL LENGTH still counts every key.
    h.register(A, 0xa);
    let o = h.cmd(&prin(0, 8));
    assert_eq!(o.good().data, vec![0, 0, 0, 1, 0, 0, 0, 8]);
    // READ FULL STATUS: one descriptor with an iSCSI TransportID.
    h.register(B, 0xb);
    h.pr_out(B, 1, 1, 0xb, 0).good();
    let o = h.cmd(&prin(3, 4096));
    let d = o.good().data.clone();
    assert_eq!(&d[0..4], &2u32.to_be_bytes());
    // "nexus-1" + NUL padded to the 20-byte minimum, plus the 4-byte header.
    let a_tid_len = 24;
    let first = &d[8..];
    assert_eq!(&first[0..8], &0xau64.to_be_bytes());
    assert_eq!(first[12], 0); // not the holder
    assert_eq!(&first[20..24], &(a_tid_len as u32).to_be_bytes());
    assert_eq!(first[24], 0x05);
    let second = &first[24 + a_tid_len..];
    assert_eq!(&second[0..8], &0xbu64.to_be_bytes());
    assert_eq!((second[12], second[13]), (1, 1));
    assert_eq!(second[24], 0x45);
    let name = b"iqn.b,i,0x000000000002";
    assert_eq!(&second[28..28 + name.len()], name);
    assert_eq!(second[28 + name.len()], 0);
}

#[test]
fn pr_register_rules() {
    let mut h = pr_h();
    // REGISTER with a wrong key from an unregistered nexus conflicts.
    assert_eq!(h.pr_out(A, 0, 0, 5, 6).status, Status::ReservationConflict);
    // Unregistered, SARK 0: nothing happens, no generation bump.
    h.pr_out(A, 0, 0, 0, 0).good();
    assert_eq!(h.keys(A).0, 0);
    h.pr_out(A, 0, 0, 0, 5).good();
    assert_eq!(h.keys(A), (1, vec![5]));
    // Registered: the key must match.
    assert_eq!(h.pr_out(A, 0, 0, 4, 6).status, Status::ReservationConflict);
    h.pr_out(A, 0, 0, 5, 6).good();
    assert_eq!(h.keys(A), (2, vec![6]));
    // REGISTER AND IGNORE EXISTING KEY replaces whatever is there.
    h.pr_out(A, 6, 0, 99, 7).good();
    assert_eq!(h.keys(A), (3, vec![7]));
    // Unregister.
    h.pr_out(A, 0, 0, 7, 0).good();
    assert_eq!(h.keys(A), (4, vec![]));
    // Bad parameter list length; APTPL without a state file; SPEC_I_PT
    // with REGISTER AND IGNORE; REGISTER AND MOVE without a reservation.
    let mut c = prout(6, 0);
    c[8] = 23;
    h.run(A, L1, &c, &[0; 24])
        .check(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR);
    for bit in [0x01, 0x08] {
        let mut p = prout_params(0, 1);
        p[20] = bit;
        h.run(A, L1, &prout(6, 0), &p)
            .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    }
    assert_eq!(h.pr_out(A, 7, 0, 0, 1).status, Status::ReservationConflict);
    h.pr_out(A, 8, 0, 0, 1)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    // Actions other than REGISTER need a registration with that key.
    for sa in 1..=5 {
        assert_eq!(h.pr_out(A, sa, 1, 0, 0).status, Status::ReservationConflict);
    }
}

#[test]
fn pr_reserve_release() {
    let mut h = pr_h();
    h.register(A, 0xa);
    h.register(B, 0xb);
    let gen = h.keys(A).0;
    // Bad type, bad scope.
    h.pr_out(A, 1, 2, 0xa, 0)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.pr_out(A, 1, 0x11, 0xa, 0)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.pr_out(A, 1, 3, 0xa, 0).good();
    // RESERVE does not bump PRGENERATION.
    assert_eq!(h.keys(A).0, gen);
    assert_eq!(h.reservation(B), Some((0xa, 3)));
    // Same type again: GOOD; another type or another nexus: conflict.
    h.pr_out(A, 1, 3, 0xa, 0).good();
    assert_eq!(
        h.pr_out(A, 1, 1, 0xa, 0).status,
        Status::ReservationConflict
    );
    assert_eq!(
        h.pr_out(B, 1, 3, 0xb, 0).status,
        Status::ReservationConflict
    );
    // RELEASE from a non-holder: GOOD, nothing changes.
    h.pr_out(B, 2, 3, 0xb, 0).good();
    assert_eq!(h.reservation(A), Some((0xa, 3)));
    // RELEASE with the wrong type.
    h.pr_out(A, 2, 1, 0xa, 0)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_RELEASE_OF_PR);
    h.pr_out(A, 2, 3, 0xa, 0).good();
    assert_eq!(h.reservation(A), None);
    // An EA release raises no UA.
    h.run(B, L1, &[0; 6], &[]).good();
    // Registrants-only release tells the other registrants.
    h.pr_out(A, 1, 5, 0xa, 0).good();
    h.pr_out(A, 2, 5, 0xa, 0).good();
    h.run(B, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::RESERVATIONS_RELEASED);
    h.run(C, L1, &[0; 6], &[]).good();
    h.cmd(&[0; 6]).good();
}

/// (registered other can read, write; unregistered other can read, write)
fn access_case(typ: u8, expect: [bool; 4]) {
    let mut h = pr_h();
    h.register(A, 0xa);
    h.register(B, 0xb);
    h.pr_out(A, 1, typ, 0xa, 0).good();
    let all_reg = typ == 7 || typ == 8;
    assert_eq!(h.reservation(C), Some((if all_reg { 0 } else { 0xa }, typ)));
    let rd = rw10(0x28, 0, 0, 1);
    let wr = rw10(0x2a, 0, 0, 1);
    let ok = |s: Status| s == Status::Good;
    assert!(ok(h.status(A, &rd, &[])));
    assert!(ok(h.status(A, &wr, &[0; 512])));
    let got = [
        ok(h.status(B, &rd, &[])),
        ok(h.status(B, &wr, &[0; 512])),
        ok(h.status(C, &rd, &[])),
        ok(h.status(C, &wr, &[0; 512])),
    ];
    assert_eq!(got, expect, "type {typ}");
    for n in [B, C] {
        // Always allowed: INQUIRY, TUR, READ CAPACITY, PRIN, REPORT LUNS.
        h.run(n, L1, &inquiry(false, 0, 36), &[]).good();
        h.run(n, L1, &[0; 6], &[]).good();
        h.run(n, L1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good();
        h.run(n, L1, &prin(0, 100), &[]).good();
        // Mode select/sync cache conflict unless registrants have access.
        let s = h.status(n, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(s == Status::Good, got[if n == B { 1 } else { 3 }]);
    }
    // SPC-2 RESERVE/RELEASE conflict while registrations exist.
    assert_eq!(
        h.status(A, &[0x16, 0, 0, 0, 0, 0], &[]),
        Status::ReservationConflict
    );
    assert_eq!(
        h.status(C, &[0x17, 0, 0, 0, 0, 0], &[]),
        Status::ReservationConflict
    );
    h.pr_out(A, 2, typ, 0xa, 0).good();
    h.pr_out(A, 0, 0, 0xa, 0).good();
    h.settle(B);
    h.pr_out(B, 0, 0, 0xb, 0).good();
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
}

#[test]
fn pr_access_per_type() {
    access_case(1, [true, false, true, false]); // WE
    access_case(3, [false, false, false, false]); // EA
    access_case(5, [true, true, true, false]); // WERO
    access_case(6, [true, true, false, false]); // EARO
    access_case(7, [true, true, true, false]); // WEAR
    access_case(8, [true, true, false, false]); // EAAR
}

#[test]
fn pr_ownership_on_unregister() {
    for typ in [1u8, 3, 5, 6, 7, 8] {
        let mut h = pr_h();
        h.register(A, 0xa);
        h.register(B, 0xb);
        h.pr_out(A, 1, typ, 0xa, 0).good();
        // The holder unregisters.
        h.pr_out(A, 0, 0, 0xa, 0).good();
        let all_reg = typ == 7 || typ == 8;
        if all_reg {
            // Still held by the remaining registrant.
            assert_eq!(h.reservation(B), Some((0, typ)));
            h.pr_out(B, 0, 0, 0xb, 0).good();
            assert_eq!(h.reservation(B), None);
        } else {
            let ua = h.run(B, L1, &[0; 6], &[]);
            if typ == 5 || typ == 6 {
                ua.check(key::UNIT_ATTENTION, asc::RESERVATIONS_RELEASED);
            } else {
                ua.good();
            }
            assert_eq!(h.reservation(B), None);
        }
    }
}

#[test]
fn pr_clear_and_preempt() {
    let mut h = pr_h();
    h.register(A, 0xa);
    h.register(B, 0xb);
    h.register(C, 0xc);
    h.pr_out(A, 1, 1, 0xa, 0).good();
    let gen = h.keys(A).0;
    h.pr_out(B, 3, 0, 0xb, 0).good();
    assert_eq!(h.keys(B), (gen + 1, vec![]));
    assert_eq!(h.reservation(B), None);
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::RESERVATIONS_PREEMPTED);
    h.run(C, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::RESERVATIONS_PREEMPTED);
    h.run(B, L1, &[0; 6], &[]).good();

    // PREEMPT without a reservation removes the registrations with SARK.
    h.register(A, 0xa);
    h.register(B, 0xb);
    let gen = h.keys(A).0;
    h.pr_out(B, 4, 3, 0xb, 0xa).good();
    assert_eq!(h.keys(B), (gen + 1, vec![0xb]));
    assert_eq!(h.reservation(B), None);
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED);
    // A key nobody has: conflict; SARK 0 without a reservation: invalid.
    assert_eq!(
        h.pr_out(B, 4, 3, 0xb, 0x77).status,
        Status::ReservationConflict
    );
    h.pr_out(B, 4, 3, 0xb, 0)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);

    // PREEMPT of the holder takes its reservation over with the new type.
    h.register(A, 0xa);
    h.register(C, 0xc);
    h.pr_out(A, 1, 1, 0xa, 0).good();
    h.pr_out(B, 5, 3, 0xb, 0xa).good(); // PREEMPT AND ABORT
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED);
    // Type changed: the remaining registrant hears RESERVATIONS RELEASED.
    h.run(C, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::RESERVATIONS_RELEASED);
    assert_eq!(h.reservation(C), Some((0xb, 3)));
    assert_eq!(h.keys(C).1, vec![0xb, 0xc]);
    // A preempted nexus is unregistered: its PROUTs conflict.
    assert_eq!(
        h.pr_out(A, 1, 3, 0xa, 0).status,
        Status::ReservationConflict
    );

    // PREEMPT of a non-holder's key leaves the reservation alone.
    h.pr_out(B, 4, 3, 0xb, 0xc).good();
    assert_eq!(h.reservation(A), Some((0xb, 3)));
    assert_eq!(h.keys(B).1, vec![0xb]);

    // All-registrants: SARK 0 preempts every other registrant.
    h.pr_out(B, 2, 3, 0xb, 0).good();
    h.run(C, L1, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED);
    h.register(A, 0xa);
    h.register(C, 0xc);
    h.pr_out(A, 1, 8, 0xa, 0).good();
    h.pr_out(C, 4, 1, 0xc, 0).good();
    h.cmd(&[0; 6])
        .check(key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED);
    assert_eq!(h.keys(A).1, vec![0xc]);
    assert_eq!(h.reservation(A), Some((0xc, 1)));
}

#[test]
fn pr_survives_nexus_loss_and_lun_reset() {
    let mut h = pr_h();
    h.register(B, 0xb);
    h.pr_out(B, 1, 3, 0xb, 0).good();
    h.set.lun_reset(L1, A);
    h.settle(A);
    h.settle(C);
    assert_eq!(h.reservation(A), Some((0xb, 3)));
    // B's session goes; a new one with the same port name is the same
    // I_T nexus as far as PR goes.
    h.set.remove_nexus(B);
    assert_eq!(
        h.status(A, &rw10(0x28, 0, 0, 1), &[]),
        Status::ReservationConflict
    );
    let b2 = NexusId(42);
    h.set
        .add_nexus_named(b2, &iscsi_initiator_port_name("iqn.b", [0, 0, 0, 0, 0, 2]));
    h.run(b2, L1, &[0; 6], &[]);
    h.run(b2, L1, &rw10(0x28, 0, 0, 1), &[]).good();
    h.pr_out(b2, 2, 3, 0xb, 0).good();
    h.run(A, L1, &rw10(0x28, 0, 0, 1), &[]).good();
    // While an SPC-2 reservation is held, another nexus's PR commands conflict.
    h.pr_out(b2, 0, 0, 0xb, 0).good();
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
    assert_eq!(h.status(C, &prin(0, 100), &[]), Status::ReservationConflict);
    h.cmd(&prin(0, 100)).good();
}

#[test]
fn port_name_format() {
    assert_eq!(
        iscsi_initiator_port_name("iqn.x", [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]),
        "iqn.x,i,0x80123456789a"
    );
}

// ------------------------------------------- COMPARE AND WRITE, ORWRITE

fn caw(lba: u64, n: u8, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = n;
    c
}

#[test]
fn compare_and_write() {
    let mut h = H::new();
    let old = pattern(1024, 1);
    h.cmd_out(&rw10(0x2a, 0, 4, 2), &old).good();
    // Match: the write half lands.
    let new = pattern(1024, 9);
    let mut d = old.clone();
    d.extend_from_slice(&new);
    h.cmd_out(&caw(4, 2, 0x18), &d).good();
    assert_eq!(h.cmd(&rw10(0x28, 0, 4, 2)).data, new);
    // Miscompare at byte 700: nothing written, INFORMATION = 700.
    let mut d = new.clone();
    d[700] ^= 1;
    d.extend_from_slice(&old);
    let o = h.cmd_out(&caw(4, 2, 0), &d);
    o.check(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(o.sense[0], 0xf0);
    assert_eq!(&o.sense[3..7], &700u32.to_be_bytes());
    assert_eq!(h.cmd(&rw10(0x28, 0, 4, 2)).data, new);
    // Data-Out of the wrong size, too many blocks, out of range, WRPROTECT.
    h.cmd_out(&caw(4, 1, 0), &d)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&caw(4, 3, 0), &d)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&caw(BLOCKS - 1, 2, 0), &d)
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    h.cmd_out(&caw(0, 2, 0x20), &d)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd(&caw(0, 0, 0)).good();
    // Zero blocks with Data-Out (a 256-block request truncated to a byte).
    h.cmd_out(&caw(0, 0, 0), &d)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    // VPD B0 announces the limit.
    let o = h.cmd(&inquiry(true, 0xb0, 64));
    assert_eq!(o.good().data[5], 255);
    // Listed in REPORT SUPPORTED OPERATION CODES.
    let o = h.cmd(&rsoc(false, 1, 0x89, 0, 64));
    assert_eq!(o.good().data[1] & 0x07, 0x03);
}

#[test]
fn compare_and_write_is_atomic() {
    use std::sync::Arc;
    // Many threads race CAWs that each expect the block's current value
    // and increment it; with the LU lock each success sees the previous
    // one's result, so the final value equals the number of successes.
    let mut set = LunSet::new(1, port());
    set.insert(L1, disk(false));
    set.add_nexus(A);
    let mut buf = Vec::new();
    let tur = Request {
        cdb: &[0; 6],
        nexus: A,
        lun: L1,
        expected_len: 0,
    };
    let _ = set.execute(&tur, &mut buf);
    let dev = Arc::new(TestDev::new((BLOCKS * 512) as usize));
    let successes = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..8u8 {
        for round in 0..40u32 {
            let dev = dev.clone();
            let successes = successes.clone();
            // Each task guesses a value; exactly one guess can match.
            let guess = (u32::from(t) + round) % 16;
            let mut d = vec![0u8; 1024];
            d[0..4].copy_from_slice(&guess.to_be_bytes());
            d[512..516].copy_from_slice(&(guess + 1).to_be_bytes());
            let c = caw(0, 1, 0);
            let req = Request {
                cdb: &c,
                nexus: A,
                lun: L1,
                expected_len: 1024,
            };
            let Outcome::Io(task) = set.execute(&req, &mut d) else {
                panic!("CAW not queued");
            };
            handles.push(std::thread::spawn(move || {
                let r = task.run(&*dev, &mut d);
                if r.status == Status::Good {
                    successes.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
    }
    for j in handles {
        j.join().unwrap();
    }
    let v = u32::from_be_bytes(dev.data.lock().unwrap()[0..4].try_into().unwrap());
    assert_eq!(v as usize, successes.load(Ordering::SeqCst));
    assert!(v >= 1);
}

#[test]
fn orwrite() {
    let mut h = H::new();
    h.cmd_out(&rw10(0x2a, 0, 1, 1), &[0x0f; 512]).good();
    h.cmd_out(&rw16(0x8b, 0x08, 1, 1), &[0xf0; 512]).good();
    assert!(h.cmd(&rw10(0x28, 0, 1, 1)).data.iter().all(|b| *b == 0xff));
    h.cmd(&rw16(0x8b, 0, 1, 0)).good();
    h.cmd_out(&rw16(0x8b, 0x20, 1, 1), &[0; 512])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
    h.cmd_out(&rw16(0x8b, 0, BLOCKS, 1), &[0; 512])
        .check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
    let mut ro = disk(false);
    ro.readonly = true;
    let mut h = H::with(ro);
    h.cmd_out(&rw16(0x8b, 0, 1, 1), &[0; 512])
        .check(key::DATA_PROTECT, asc::WRITE_PROTECTED);
}

/// The shared path takes the plain SBC commands and declines whatever
/// needs exclusive access: pending unit attentions, reservations held by
/// another nexus, persistent reservation conflicts, other command sets.
#[test]
fn shared_path_declines_what_needs_exclusive_access() {
    fn shared(h: &H, n: NexusId, cdb: &[u8]) -> bool {
        let req = Request {
            cdb,
            nexus: n,
            lun: L1,
            expected_len: 512,
        };
        let mut buf = Vec::new();
        h.set.execute_shared(&req, &mut buf).is_some()
    }
    let mut h = pr_h();
    let read = rw10(0x28, 0, 0, 1);
    assert!(shared(&h, A, &read));
    assert!(
        shared(&h, A, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        "READ CAPACITY"
    );
    assert!(!shared(&h, A, &inquiry(false, 0, 36)), "not an SBC command");
    assert!(
        !shared(&h, A, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        "REPORT LUNS"
    );
    // A reset leaves a unit attention for every nexus: each declines
    // until it has been told, through the exclusive path.
    h.set.lun_reset(L1, A);
    assert!(!shared(&h, B, &read));
    h.run(B, L1, &read, &[])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
    assert!(shared(&h, B, &read));
    assert!(!shared(&h, A, &read));
    h.cmd(&read);
    // SPC-2 reservation by A: B declines (and gets its conflict the slow way).
    h.cmd(&[0x16, 0, 0, 0, 0, 0]).good();
    assert!(shared(&h, A, &read));
    assert!(!shared(&h, B, &read));
    assert_eq!(h.run(B, L1, &read, &[]).status, Status::ReservationConflict);
    h.cmd(&[0x17, 0, 0, 0, 0, 0]).good();
    // WRITE EXCLUSIVE persistent reservation held by A: B's read is
    // allowed, its write declines and conflicts.
    h.register(A, 0xa);
    h.pr_out(A, 1, 1, 0xa, 0).good();
    assert!(shared(&h, B, &read));
    let write = rw10(0x2a, 0, 0, 1);
    assert!(!shared(&h, B, &write));
    assert_eq!(
        h.run(B, L1, &write, &[0; 512]).status,
        Status::ReservationConflict
    );
}

/// `execute_tracked` says when a command may have changed what the
/// shared path reads, so copies of the state are refreshed only then.
#[test]
fn tracked_execution_reports_state_changes() {
    let mut h = H::new();
    let run = |h: &mut H, n: NexusId, cdb: &[u8]| {
        let req = Request {
            cdb,
            nexus: n,
            lun: L1,
            expected_len: 0,
        };
        let mut buf = Vec::new();
        h.set.execute_tracked(&req, &mut buf).1
    };
    assert!(!run(&mut h, A, &[0; 6]), "TEST UNIT READY");
    assert!(!run(&mut h, A, &inquiry(false, 0, 36)));
    assert!(!run(&mut h, A, &rw10(0x28, 0, 0, 1)), "READ");
    assert!(run(&mut h, A, &[0x16, 0, 0, 0, 0, 0]), "RESERVE");
    assert!(run(&mut h, A, &[0x17, 0, 0, 0, 0, 0]), "RELEASE");
    // A unit attention reported counts as a change (it was consumed).
    h.set.lun_reset(L1, A);
    assert!(run(&mut h, A, &[0; 6]), "TUR reporting a unit attention");
    assert!(!run(&mut h, A, &[0; 6]));
    assert!(run(&mut h, A, &[0x1b, 0, 0, 0, 1, 0]), "START STOP UNIT");
}

// ------------------------------- persistent reservations across gateways

/// One gateway in a test of several: its own target port and LU state,
/// and a store sharing the medium and its SCSI state with the others.
struct Gateway {
    set: std::sync::Arc<Mutex<LunSet>>,
    dev: SharedMemDevice,
}

impl Gateway {
    fn new(
        rel: u16,
        mem: &std::sync::Arc<MemDevice>,
        state: &std::sync::Arc<MemSharedState>,
    ) -> Gateway {
        let mut p = port();
        p.relative_port = rel;
        let mut set = LunSet::new(1, p);
        set.insert(L1, disk(false));
        let set = std::sync::Arc::new(Mutex::new(set));
        let dev = SharedMemDevice {
            mem: mem.clone(),
            state: state.clone(),
        };
        // As the daemon does when it attaches the store to the LU.
        let weak = std::sync::Arc::downgrade(&set);
        dev.shared_state()
            .expect("a shared store")
            .subscribe(Box::new(move |b| {
                if let Some(s) = weak.upgrade() {
                    s.lock().unwrap().install_shared_pr(L1, b);
                }
            }));
        Gateway { set, dev }
    }

    fn login(&self, n: NexusId, name: &str) {
        self.set.lock().unwrap().add_nexus_named(n, name);
        self.run(n, &[0; 6], &[])
            .check(key::UNIT_ATTENTION, asc::POWER_ON_RESET);
    }

    /// Apply what the LU state owes the shared state, as the daemon does.
    fn release(&self, f: impl FnOnce(&mut LunSet)) {
        let owed = {
            let mut set = self.set.lock().unwrap();
            f(&mut set);
            set.take_shared_changes()
        };
        for r in owed {
            assert_eq!(r.lun(), L1);
            self.dev
                .shared_state()
                .unwrap()
                .update(&mut |cur| r.apply(cur))
                .unwrap();
        }
    }

    fn run(&self, n: NexusId, cdb: &[u8], dout: &[u8]) -> Out {
        let mut buf = dout.to_vec();
        let req = Request {
            cdb,
            nexus: n,
            lun: L1,
            expected_len: dout.len() as u32,
        };
        let outcome = {
            let mut set = self.set.lock().unwrap();
            match set.execute_shared(&req, &mut buf) {
                Some(o) => o,
                None => set.execute(&req, &mut buf),
            }
        };
        // The store's update calls back into the LU state: no lock held.
        let resp = match outcome {
            Outcome::Done(r) => r,
            Outcome::Io(t) => t.run(&self.dev, &mut buf),
        };
        Out {
            status: resp.status,
            sense: resp.sense,
            data: buf,
            wanted: resp.wanted,
        }
    }
}

fn two_gateways() -> (Gateway, Gateway) {
    let mem = std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize));
    let state = std::sync::Arc::new(MemSharedState::default());
    let g1 = Gateway::new(1, &mem, &state);
    let g2 = Gateway::new(2, &mem, &state);
    g1.login(A, "iqn.x,i,0x000000000001");
    g2.login(B, "iqn.y,i,0x000000000002");
    (g1, g2)
}

#[test]
fn persistent_reservations_hold_across_gateways() {
    let (g1, g2) = two_gateways();
    // A registers and reserves WRITE EXCLUSIVE through gateway 1.
    g1.run(A, &prout(0, 0), &prout_params(0, 0xa)).good();
    g1.run(A, &prout(1, 1), &prout_params(0xa, 0)).good();
    // Gateway 2 sees the registration, the generation and the holder.
    let keys = g2.run(B, &prin(0, 64), &[]);
    keys.good();
    assert_eq!(&keys.data[0..4], &1u32.to_be_bytes(), "PRGENERATION");
    assert_eq!(&keys.data[8..16], &0xau64.to_be_bytes());
    let res = g2.run(B, &prin(1, 64), &[]);
    assert_eq!(&res.data[8..16], &0xau64.to_be_bytes());
    assert_eq!(res.data[21], 1, "WRITE EXCLUSIVE");
    // ... and enforces it: B may read but not write.
    g2.run(B, &rw10(0x28, 0, 0, 1), &[]).good();
    let w = g2.run(B, &rw10(0x2a, 0, 0, 1), &pattern(512, 1));
    assert_eq!(w.status, Status::ReservationConflict);
    // B registers through gateway 2 and preempts A.
    g2.run(B, &prout(0, 0), &prout_params(0, 0xb)).good();
    g2.run(B, &prout(4, 1), &prout_params(0xb, 0xa)).good();
    g2.run(B, &rw10(0x2a, 0, 0, 1), &pattern(512, 1)).good();
    // A, on the other gateway, is told, and has lost write access.
    g1.run(A, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED);
    let w = g1.run(A, &rw10(0x2a, 0, 0, 1), &pattern(512, 2));
    assert_eq!(w.status, Status::ReservationConflict);
    // READ FULL STATUS on gateway 1 names B's target port: 2.
    let full = g1.run(A, &prin(3, 256), &[]);
    full.good();
    assert_eq!(&full.data[8..16], &0xbu64.to_be_bytes());
    assert_eq!(full.data[8 + 12], 1, "R_HOLDER");
    assert_eq!(&full.data[8 + 18..8 + 20], &2u16.to_be_bytes());
}

#[test]
fn a_registration_belongs_to_one_target_port() {
    let (g1, g2) = two_gateways();
    // The same initiator port logs in to both gateways: two I_T nexuses.
    g2.login(C, "iqn.x,i,0x000000000001");
    g1.run(A, &prout(0, 0), &prout_params(0, 0xa)).good();
    // Through gateway 2 it is not registered: RESERVE with that key conflicts.
    let r = g2.run(C, &prout(1, 1), &prout_params(0xa, 0));
    assert_eq!(r.status, Status::ReservationConflict);
    g2.run(C, &prout(0, 0), &prout_params(0, 0xc)).good();
    let keys = g2.run(C, &prin(0, 64), &[]);
    assert_eq!(&keys.data[4..8], &16u32.to_be_bytes(), "two registrations");
    // CLEAR through gateway 2 tells A on gateway 1.
    g2.run(C, &prout(3, 0), &prout_params(0xc, 0)).good();
    g1.run(A, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::RESERVATIONS_PREEMPTED);
    g2.run(B, &[0; 6], &[]).good();
}

#[test]
fn shared_pr_state_encoding_round_trips_and_refuses_damage() {
    let (g1, g2) = two_gateways();
    g1.run(A, &prout(0, 0), &prout_params(0, 0xa)).good();
    g2.run(B, &prout(0, 0), &prout_params(0, 0xb)).good();
    g2.run(B, &prout(1, 5), &prout_params(0xb, 0)).good();
    g2.run(B, &prout(4, 5), &prout_params(0xb, 0xa)).good();
    let set = g1.set.lock().unwrap();
    let pr = &set_lun_pr(&set);
    let bytes = pr.encode();
    assert_eq!(crate::pr::PrState::decode(&bytes).as_ref(), Some(pr));
    for cut in 0..bytes.len() {
        assert!(crate::pr::PrState::decode(&bytes[..cut]).is_none() || cut == 0);
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(crate::pr::PrState::decode(&longer).is_none());
    assert_eq!(
        crate::pr::PrState::decode(&[]),
        Some(crate::pr::PrState::default())
    );
}

fn set_lun_pr(set: &LunSet) -> crate::pr::PrState {
    set.pr_state(L1).expect("L1")
}

#[test]
fn a_damaged_shared_state_is_refused_not_overwritten() {
    let mem = std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize));
    let state = std::sync::Arc::new(MemSharedState::default());
    state.update(&mut |_| Some(b"not ours".to_vec())).unwrap();
    let g = Gateway::new(1, &mem, &state);
    g.login(A, "iqn.x,i,0x000000000001");
    g.run(A, &prout(0, 0), &prout_params(0, 0xa))
        .check(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE);
    let mut now = Vec::new();
    state
        .update(&mut |cur| {
            now = cur.to_vec();
            None
        })
        .unwrap();
    assert_eq!(now, b"not ours");
}

#[test]
fn spc2_reservations_hold_across_gateways_and_go_with_their_nexus() {
    let (g1, g2) = two_gateways();
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    g1.run(A, &reserve6, &[]).good();
    g1.run(A, &reserve6, &[]).good(); // the holder may reserve again
    assert_eq!(
        g2.run(B, &reserve6, &[]).status,
        Status::ReservationConflict
    );
    let w = g2.run(B, &rw10(0x2a, 0, 0, 1), &pattern(512, 1));
    assert_eq!(w.status, Status::ReservationConflict);
    g2.run(B, &inquiry(false, 0, 36), &[]).good();
    // RELEASE from a non-holder succeeds and changes nothing.
    g2.run(B, &release6, &[]).good();
    assert_eq!(
        g2.run(B, &reserve6, &[]).status,
        Status::ReservationConflict
    );
    // The holder's I_T nexus loss on gateway 1 frees the LU on gateway 2.
    g1.release(|s| s.remove_nexus(A));
    g2.run(B, &reserve6, &[]).good();
    g1.login(C, "iqn.z,i,0x000000000003");
    let r = g1.run(C, &rw10(0x28, 0, 0, 1), &[]);
    assert_eq!(
        r.status,
        Status::ReservationConflict,
        "held through gateway 2"
    );
    // A LOGICAL UNIT RESET through gateway 1 releases it everywhere.
    g1.release(|s| s.lun_reset(L1, C));
    g1.run(C, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
    // ... and every nexus of the other gateway hears of the reset, once.
    g2.run(B, &[0; 6], &[])
        .check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET_FUNCTION);
    g2.run(B, &[0; 6], &[]).good();
    g1.run(C, &[0; 6], &[]).good();
    g1.run(C, &reserve6, &[]).good();
    g1.run(C, &release6, &[]).good();
    // With a registration in place, SPC-2 RESERVE conflicts (SPC-4 §5.13.3).
    g2.run(B, &prout(0, 0), &prout_params(0, 0xb)).good();
    assert_eq!(
        g1.run(C, &reserve6, &[]).status,
        Status::ReservationConflict
    );
}

#[test]
fn a_restarted_gateway_drops_the_spc2_reservation_its_port_held() {
    let mem = std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize));
    let state = std::sync::Arc::new(MemSharedState::default());
    let g1 = Gateway::new(1, &mem, &state);
    let g2 = Gateway::new(2, &mem, &state);
    g1.login(A, "iqn.x,i,0x000000000001");
    g2.login(B, "iqn.y,i,0x000000000002");
    g1.run(A, &[0x16, 0, 0, 0, 0, 0], &[]).good();
    drop(g1);
    // Gateway 1 comes back: attaching, it owes the release.
    let g1 = Gateway::new(1, &mem, &state);
    g1.release(|_| {});
    g2.run(B, &[0x16, 0, 0, 0, 0, 0], &[]).good();
}

#[test]
fn a_shared_lu_reports_implicit_alua_with_its_gateway_as_a_port_group() {
    let (g1, g2) = two_gateways();
    let std = g2.run(B, &inquiry(false, 0, 36), &[]);
    assert_eq!(std.data[5] & 0x30, 0x30, "TPGS 11b");
    // REPORT TARGET PORT GROUPS, extended header: our group (port group 2
    // = relative port 2 here), active/optimized when alone.
    let rtpg = [0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = g2.run(B, &rtpg, &[]);
    r.good();
    assert_eq!(&r.data[0..4], &16u32.to_be_bytes());
    assert_eq!(r.data[4], 0x10, "FORMAT TYPE 001b");
    assert_eq!(r.data[8] & 0x0f, 0, "active/optimized");
    assert_eq!(&r.data[10..12], &1u16.to_be_bytes(), "the port's TPG");
    assert_eq!(r.data[15], 1, "one port");
    assert_eq!(&r.data[18..20], &2u16.to_be_bytes(), "relative port 2");
    // Short allocation length: truncated, RETURN DATA LENGTH intact.
    let r = g1.run(A, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0], &[]);
    r.good();
    assert_eq!(r.data.len(), 6);
    assert_eq!(&r.data[0..4], &12u32.to_be_bytes());
    // SET TARGET PORT GROUPS: our group active/optimized is accepted (a
    // store that knows no other gateway has nothing to change); standby is
    // a state we never enter; a bad length is refused.
    let stpg = |len: u8| [0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, len, 0, 0];
    g2.run(B, &stpg(8), &[0, 0, 0, 0, 0x00, 0, 0, 2]).good();
    g2.run(B, &stpg(8), &[0, 0, 0, 0, 0x02, 0, 0, 2])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    g2.run(B, &stpg(12), &[0, 0, 0, 0, 0x00, 0, 0, 2, 0x00, 0, 0, 1])
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    g2.run(B, &stpg(6), &[0; 6])
        .check(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR);
    // A LU of one gateway has no asymmetric access.
    let mut h = H::new();
    assert_eq!(h.cmd(&inquiry(false, 0, 36)).data[5] & 0x30, 0);
    h.cmd(&rtpg)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn an_access_state_change_reaches_every_nexus_of_every_gateway() {
    let (g1, g2) = two_gateways();
    g1.dev
        .shared_state()
        .unwrap()
        .update(&mut |cur| crate::asymmetric_access_changed(cur))
        .unwrap();
    for (g, n) in [(&g1, A), (&g2, B)] {
        g.run(n, &[0; 6], &[])
            .check(key::UNIT_ATTENTION, asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
        g.run(n, &[0; 6], &[]).good();
    }
}

#[test]
fn a_shared_state_at_the_last_sequence_number_is_refused() {
    // Found by the shared_state fuzz target: an ALUA change applied to a
    // state whose seq was u64::MAX overflowed.
    let mut b = b"RPR1".to_vec();
    b.extend_from_slice(&u64::MAX.to_be_bytes());
    // generation, no registrations, reservation, SPC-2 holder, APTPL, events
    b.extend_from_slice(&[0; 4 + 4 + 1 + 1 + 1 + 4]);
    assert_eq!(crate::pr::PrState::decode(&b), None);
    assert_eq!(crate::asymmetric_access_changed(&b), None);
    // One short of it parses, but no change can move it on (the second
    // input the fuzzer found: the change made a state that did not parse).
    b[4..12].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
    assert!(crate::pr::PrState::decode(&b).is_some());
    assert_eq!(crate::asymmetric_access_changed(&b), None);
    b[4..12].copy_from_slice(&(u64::MAX - 2).to_be_bytes());
    let next = crate::asymmetric_access_changed(&b).unwrap();
    assert!(crate::pr::PrState::decode(&next).is_some());
}

#[test]
fn aptpl_is_offered_where_the_store_keeps_the_state() {
    let (g1, g2) = two_gateways();
    let caps = g2.run(B, &prin(2, 8), &[]);
    caps.good();
    assert_eq!(caps.data[2] & 0x01, 1, "PTPL_C");
    assert_eq!(caps.data[3] & 0x01, 0, "PTPL_A before any APTPL");
    let mut p = prout_params(0, 0xa);
    p[20] = 0x01; // APTPL
    g1.run(A, &prout(0, 0), &p).good();
    let caps = g2.run(B, &prin(2, 8), &[]);
    assert_eq!(
        caps.data[3] & 0x01,
        1,
        "PTPL_A, seen through the other gateway"
    );
    // A LU of one process keeps PR in memory: no APTPL.
    let mut h = pr_h();
    assert_eq!(h.cmd(&prin(2, 8)).data[2] & 0x01, 0);
    h.cmd_out(&prout(0, 0), &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
}

/// APTPL (SPC-4 §5.13.5) on a LU with a state file: PTPL_C offered; a
/// REGISTER with APTPL writes the state (as a media task, before GOOD);
/// a fresh LU set restores registrations and reservation from it (PTPL_A
/// still set); a file for another medium is ignored; clearing APTPL
/// removes the file. Without a state file APTPL is refused.
#[test]
fn aptpl_state_survives_a_new_lun_set() {
    let dir = std::env::temp_dir().join(format!("rtgt-aptpl-set-{}", std::process::id()));
    let file = dir.join("pr").join("t1.lun1");
    let mut cfg = disk(false);
    cfg.path = Some("/srv/disk.img".into());
    cfg.pr_file = Some(file.clone());
    let mut h = H::with(cfg.clone());
    h.set.add_nexus_named(B, "iqn.b,i,0x000000000002");
    h.run(B, L1, &[0; 6], &[]);
    let caps = h.run(B, L1, &prin(2, 8), &[]).good().data.clone();
    assert_eq!(
        (caps[2] & 0x01, caps[3] & 0x01),
        (1, 0),
        "PTPL_C, not PTPL_A"
    );
    let mut p = prout_params(0, 0xabc);
    p[20] = 0x01; // APTPL
    h.run(B, L1, &prout(6, 0), &p).good();
    assert!(file.exists(), "written before GOOD");
    h.pr_out(B, 1, 1, 0xabc, 0).good(); // RESERVE, write exclusive
                                        // A restart: a new LU set, the same LU, the same medium.
    let mut set = LunSet::new(1, port());
    set.insert(L1, cfg.clone());
    assert!(set.restore_pr(L1, &std::fs::read(&file).unwrap()));
    let mut h2 = H {
        set,
        dev: TestDev::new((BLOCKS * 512) as usize),
    };
    h2.set.add_nexus_named(B, "iqn.b,i,0x000000000002");
    h2.run(B, L1, &[0; 6], &[]);
    assert_eq!(h2.keys(B).1, vec![0xabc]);
    let caps = h2.run(B, L1, &prin(2, 8), &[]).good().data.clone();
    assert_eq!(caps[3] & 0x01, 1, "PTPL_A");
    // The reservation holds: another nexus cannot write.
    h2.set.add_nexus_named(C, "iqn.c,i,0x000000000003");
    h2.run(C, L1, &[0; 6], &[]);
    assert_eq!(
        h2.run(C, L1, &rw10(0x2a, 0, 0, 1), &[0; 512]).status,
        Status::ReservationConflict
    );
    // Another medium's LU does not take it.
    let mut other = cfg.clone();
    other.path = Some("/srv/other.img".into());
    let mut set = LunSet::new(1, port());
    set.insert(L1, other);
    assert!(!set.restore_pr(L1, &std::fs::read(&file).unwrap()));
    // REGISTER with APTPL clear: the file goes.
    let mut p = prout_params(0xabc, 0xabc);
    p[20] = 0;
    h2.run(B, L1, &prout(6, 0), &p).good();
    assert!(!file.exists());
    // No state file: APTPL is refused, PTPL_C 0.
    let mut h3 = pr_h();
    let caps = h3.run(B, L1, &prin(2, 8), &[]).good().data.clone();
    assert_eq!(caps[2] & 0x01, 0);
    let mut p = prout_params(0, 1);
    p[20] = 0x01;
    h3.run(B, L1, &prout(6, 0), &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An iSCSI TransportID (SPC-4 §7.6.4.6) of format 01b (`port` given) or
/// 00b (a device name).
fn iscsi_tid(name: &str) -> Vec<u8> {
    let format = if name.contains(",i,0x") { 0x40 } else { 0 };
    let len = (name.len() + 1).div_ceil(4) * 4;
    let len = len.max(20);
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(len as u16).to_be_bytes());
    t.extend_from_slice(name.as_bytes());
    t.resize(4 + len, 0);
    t
}

/// SPEC_I_PT registers the requester and the ports its TransportIDs name
/// (a name alone stands for every port of it), all or none; ALL_TG_PT
/// registers through every target port (READ FULL STATUS says so);
/// REGISTER AND MOVE hands the reservation to another I_T nexus,
/// registering it, and with UNREG drops the mover.
#[test]
fn pr_spec_i_pt_all_tg_pt_and_register_and_move() {
    let mut h = pr_h();
    // A registers itself, B's port and every port named iqn.c.
    let mut p = prout_params(0, 0x77);
    p[20] = 0x08;
    let tids = [iscsi_tid("iqn.b,i,0x000000000002"), iscsi_tid("iqn.c")].concat();
    p.extend_from_slice(&(tids.len() as u32).to_be_bytes());
    p.extend_from_slice(&tids);
    let mut c = prout(0, 0);
    c[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    h.run(A, L1, &c, &p).good();
    let (gen, keys) = h.keys(B);
    assert_eq!((gen, keys), (1, vec![0x77, 0x77, 0x77]));
    // Each of them is registered: C (an iqn.c port) may reserve with the key.
    h.pr_out(C, 1, 1, 0x77, 0).good();
    h.pr_out(C, 2, 1, 0x77, 0).good();
    // Again: B is registered already, so nothing is registered at all.
    let before = h.keys(A);
    assert_eq!(h.run(A, L1, &c, &p).status, Status::ReservationConflict);
    assert_eq!(h.keys(A), before);
    // A malformed TransportID (not iSCSI) is an invalid field.
    let mut bad = p.clone();
    bad[28] = 0x41;
    let mut h2 = pr_h();
    h2.run(A, L1, &c, &bad)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // ALL_TG_PT: shown in READ FULL STATUS.
    let mut p = prout_params(0, 0x99);
    p[20] = 0x04;
    h2.run(B, L1, &prout(6, 0), &p).good();
    let full = h2.run(B, L1, &prin(3, 1024), &[]).good().data.clone();
    assert_eq!(&full[8..16], &0x99u64.to_be_bytes());
    assert_eq!(full[8 + 12] & 0x02, 0x02, "ALL_TG_PT");
    // REGISTER AND MOVE: B reserves, then moves the reservation to C.
    h2.pr_out(B, 1, 3, 0x99, 0).good();
    let move_to = |unreg: bool| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&0x99u64.to_be_bytes());
        p[8..16].copy_from_slice(&0xccu64.to_be_bytes());
        p[17] = if unreg { 0x02 } else { 0 };
        p[18..20].copy_from_slice(&1u16.to_be_bytes());
        let t = iscsi_tid("iqn.c,i,0x000000000003");
        p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
        p.extend_from_slice(&t);
        p
    };
    let p = move_to(true);
    let mut c = prout(7, 3);
    c[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    // Only the holder may move it.
    assert_eq!(h2.run(C, L1, &c, &p).status, Status::ReservationConflict);
    h2.run(B, L1, &c, &p).good();
    assert_eq!(h2.keys(C).1, vec![0xcc], "B unregistered, C registered");
    assert_eq!(h2.reservation(C), Some((0xcc, 3)));
    // C now holds exclusive access: B cannot even read.
    assert_eq!(
        h2.run(B, L1, &rw10(0x28, 0, 0, 1), &[]).status,
        Status::ReservationConflict
    );
    h2.run(C, L1, &rw10(0x28, 0, 0, 1), &[]).good();
}

/// PREEMPT AND ABORT owes the transport an abort of the preempted
/// nexuses' tasks on the LU (SPC-4 §5.13.11.2.5); PREEMPT does not, and
/// the preempting nexus is never among them.
#[test]
fn preempt_and_abort_names_the_nexuses_to_abort() {
    let mut h = pr_h();
    h.register(A, 0xa);
    h.register(B, 0xb);
    h.register(C, 0xc);
    h.pr_out(A, 4, 0, 0xa, 0xc).good(); // PREEMPT C, no reservation
    assert!(h.set.take_task_aborts().is_empty());
    h.pr_out(B, 1, 1, 0xb, 0).good();
    h.pr_out(A, 5, 1, 0xa, 0xb).good(); // PREEMPT AND ABORT the holder B
    assert_eq!(h.set.take_task_aborts(), vec![(L1, B)]);
    assert!(h.set.take_task_aborts().is_empty(), "taken once");
    assert_eq!(h.reservation(A), Some((0xa, 1)));
}

/// ODX (POPULATE TOKEN, WRITE USING TOKEN, RECEIVE ROD TOKEN
/// INFORMATION): a token made on one LU copies its ranges into another;
/// RECEIVE ROD TOKEN INFORMATION returns the token and the transfer; a
/// write to a source block revokes the token; DEL_TKN deletes it; a forged
/// token is unknown.
#[test]
fn odx_token_copy_across_lus_and_revocation() {
    let l2 = LunId(2);
    let mut set = LunSet::new(1, port());
    set.insert(L1, disk(false));
    let mut c2 = LunConfig::tgt_defaults(1, l2);
    c2.size_bytes = BLOCKS * 512;
    set.insert(l2, c2);
    set.add_nexus(A);
    let devs: Vec<std::sync::Arc<dyn BlockDevice>> = vec![
        std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize)),
        std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize)),
    ];
    let data = pattern(32 * 512, 5);
    devs[0].write_at(&data, 100 * 512).unwrap();
    let run = |set: &mut LunSet, lun: LunId, cdb: &[u8], dout: &[u8]| {
        let mut buf = dout.to_vec();
        let req = Request {
            cdb,
            nexus: A,
            lun,
            expected_len: dout.len().max(1024) as u32,
        };
        match set.execute(&req, &mut buf) {
            Outcome::Done(r) => (r, buf),
            Outcome::Io(mut t) => {
                t.attach_copy_stores(|id| Some(devs[(id.0 - 1) as usize].clone()));
                let dev = devs[(lun.0 - 1) as usize].clone();
                let r = t.run(&*dev, &mut buf);
                (r, buf)
            }
        }
    };
    for l in [L1, l2] {
        run(&mut set, l, &[0; 6], &[]);
    }
    let tpc = |sa: u8, list: u32, plen: usize| {
        let mut c = [0u8; 16];
        c[0] = 0x83;
        c[1] = sa;
        c[6..10].copy_from_slice(&list.to_be_bytes());
        c[10..14].copy_from_slice(&(plen as u32).to_be_bytes());
        c
    };
    let range = |lba: u64, n: u32| [&lba.to_be_bytes()[..], &n.to_be_bytes(), &[0; 4]].concat();
    // POPULATE TOKEN: LBAs 100-115 and 116-131 of L1.
    let mut p = vec![0u8; 16];
    p[14..16].copy_from_slice(&32u16.to_be_bytes());
    p.extend_from_slice(&range(100, 16));
    p.extend_from_slice(&range(116, 16));
    let (r, _) = run(&mut set, L1, &tpc(0x10, 7, p.len()), &p);
    assert_eq!(r.status, Status::Good, "{r:?}");
    let rrti = |set: &mut LunSet, list: u32| {
        let mut c = [0u8; 16];
        c[0] = 0x84;
        c[1] = 0x07;
        c[2..6].copy_from_slice(&list.to_be_bytes());
        c[10..14].copy_from_slice(&1024u32.to_be_bytes());
        let (r, d) = run(set, L1, &c, &[]);
        assert_eq!(r.status, Status::Good, "{r:?}");
        d
    };
    let info = rrti(&mut set, 7);
    assert_eq!(
        (info[4], info[5]),
        (0x10, 0x01),
        "POPULATE TOKEN, completed"
    );
    assert_eq!(u32::from_be_bytes(info[32..36].try_into().unwrap()), 514);
    let token = info[38..38 + 512].to_vec();
    // WRITE USING TOKEN into L2 at LBA 8, one range of 32 blocks.
    let wut = |token: &[u8], del: bool| {
        let mut p = vec![0u8; 536];
        p[2] = if del { 0x02 } else { 0 };
        p[16..528].copy_from_slice(token);
        p[534..536].copy_from_slice(&16u16.to_be_bytes());
        p.extend_from_slice(&range(8, 32));
        p
    };
    let p = wut(&token, false);
    let (r, _) = run(&mut set, l2, &tpc(0x11, 8, p.len()), &p);
    assert_eq!(r.status, Status::Good, "{r:?}");
    let mut back = vec![0u8; 32 * 512];
    devs[1].read_at(&mut back, 8 * 512).unwrap();
    assert!(back == data);
    let info = rrti(&mut set, 8);
    assert_eq!((info[4], info[5]), (0x11, 0x01));
    assert_eq!(
        u64::from_be_bytes(info[16..24].try_into().unwrap()),
        32,
        "blocks"
    );
    // A forged token (ours in type, not in value) is unknown.
    let mut forged = token.clone();
    forged[70] ^= 1;
    let p = wut(&forged, false);
    let (r, _) = run(&mut set, l2, &tpc(0x11, 9, p.len()), &p);
    assert_eq!((r.sense[12], r.sense[13]), (0x23, 0x04), "TOKEN UNKNOWN");
    // A write to one of its source blocks revokes it.
    let mut buf = vec![0u8; 512];
    let req = Request {
        cdb: &rw10(0x2a, 0, 120, 1),
        nexus: A,
        lun: L1,
        expected_len: 512,
    };
    let _ = set.execute_shared(&req, &mut buf);
    let p = wut(&token, false);
    let (r, _) = run(&mut set, l2, &tpc(0x11, 10, p.len()), &p);
    assert_eq!(
        (r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
        (0x05, 0x23, 0x06),
        "TOKEN REVOKED"
    );
    // A new token, used once with DEL_TKN, is gone after.
    let mut p = vec![0u8; 16];
    p[14..16].copy_from_slice(&16u16.to_be_bytes());
    p.extend_from_slice(&range(0, 8));
    run(&mut set, L1, &tpc(0x10, 11, p.len()), &p);
    let token = rrti(&mut set, 11)[38..38 + 512].to_vec();
    let p = wut(&token, true);
    assert_eq!(
        run(&mut set, l2, &tpc(0x11, 12, p.len()), &p).0.status,
        Status::Good
    );
    let (r, _) = run(&mut set, l2, &tpc(0x11, 13, p.len()), &p);
    assert_eq!((r.sense[12], r.sense[13]), (0x23, 0x06));
    // Ranges past the end, and too short a list.
    let mut p = vec![0u8; 16];
    p[14..16].copy_from_slice(&16u16.to_be_bytes());
    p.extend_from_slice(&range(BLOCKS - 1, 2));
    let (r, _) = run(&mut set, L1, &tpc(0x10, 14, p.len()), &p);
    assert_eq!((r.sense[12], r.sense[13]), (0x21, 0x00));
    let (r, _) = run(&mut set, L1, &tpc(0x11, 15, 100), &[0; 100]);
    assert_eq!((r.sense[12], r.sense[13]), (0x1a, 0x00));
}

/// Review findings on the copy manager: a copy task holds no task-level
/// lock (it locks per chunk; holding both deadlocked with a queued
/// COMPARE AND WRITE); VPD 8Fh's parameter data and OPERATING PARAMETERS
/// put their fields where SPC-4 has them; a copy dropped unrun leaves its
/// list identifier failed, not in progress; LIST ID USAGE 01b is refused.
#[test]
fn copy_manager_review_findings() {
    let mut h = H::new();
    let naa = {
        let page = h.cmd(&inquiry(true, 0x83, 255)).data.clone();
        let at = 4 + 4 + 36;
        let mut d = page[at..at + 12].to_vec();
        d.resize(20, 0);
        d
    };
    let list = |id: u8, usage: u8| {
        let mut p = vec![0u8; 16];
        p[0] = id;
        p[1] = usage << 3;
        p[2..4].copy_from_slice(&32u16.to_be_bytes());
        p[8..12].copy_from_slice(&28u32.to_be_bytes());
        let mut t = vec![0xe4, 0, 0, 0];
        t.extend_from_slice(&naa);
        t.resize(32, 0);
        p.extend_from_slice(&t);
        let mut s = vec![0x02, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 8];
        s.extend_from_slice(&0u64.to_be_bytes());
        s.extend_from_slice(&64u64.to_be_bytes());
        p.extend_from_slice(&s);
        p
    };
    let cdb = xcopy_cdb;
    let p = list(5, 0);
    let mut buf = p.clone();
    let req = Request {
        cdb: &cdb(p.len()),
        nexus: A,
        lun: L1,
        expected_len: p.len() as u32,
    };
    match h.set.execute(&req, &mut buf) {
        Outcome::Io(t) => {
            assert!(t.task_lock().is_none(), "a copy locks per chunk only");
            drop(t); // never run
        }
        Outcome::Done(r) => panic!("{r:?}"),
    }
    let mut rcr = [0u8; 16];
    rcr[0] = 0x84;
    rcr[2] = 5;
    rcr[10..14].copy_from_slice(&64u32.to_be_bytes());
    assert_eq!(h.cmd(&rcr).good().data[4], 2, "completed with an error");
    // The same list identifier is free again (not OPERATION IN PROGRESS).
    let mut buf = p.clone();
    assert!(matches!(h.set.execute(&req, &mut buf), Outcome::Io(_)));
    // LIST ID USAGE 01b is reserved.
    let p = list(6, 1);
    h.cmd_out(&cdb(p.len()), &p)
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    // A COMPARE AND WRITE task does hold its lock.
    let mut buf = vec![0u8; 1024];
    let req = Request {
        cdb: &rw16(0x89, 0, 0, 0),
        nexus: A,
        lun: L1,
        expected_len: 1024,
    };
    let mut c = rw16(0x89, 0, 0, 0);
    c[13] = 1;
    let req = Request { cdb: &c, ..req };
    match h.set.execute(&req, &mut buf) {
        Outcome::Io(t) => assert!(t.task_lock().is_some()),
        Outcome::Done(r) => panic!("COMPARE AND WRITE answered without I/O: {r:?}"),
    }
    // OPERATING PARAMETERS: IMPLEMENTED DESCRIPTOR LIST LENGTH at byte 43.
    let mut op = [0u8; 16];
    op[0] = 0x84;
    op[1] = 0x03;
    op[10..14].copy_from_slice(&64u32.to_be_bytes());
    let d = h.cmd(&op).good().data.clone();
    assert_eq!((d[43], d[44], d[45]), (2, 0x02, 0xe4));
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    // VPD 8Fh parameter data descriptor (0004h): counts at bytes 8, 10, 12.
    let v = h.cmd(&inquiry(true, 0x8f, 512)).data.clone();
    let mut at = 4;
    let mut found = false;
    while at + 4 <= v.len() {
        let (typ, len) = (
            u16::from_be_bytes([v[at], v[at + 1]]),
            usize::from(u16::from_be_bytes([v[at + 2], v[at + 3]])),
        );
        if typ == 0x0004 {
            let d = &v[at..at + 4 + len];
            assert_eq!(&d[8..10], &8u16.to_be_bytes(), "CSCD descriptors");
            assert_eq!(&d[10..12], &8u16.to_be_bytes(), "segment descriptors");
            assert_eq!(&d[12..16], &1024u32.to_be_bytes(), "descriptor list length");
            assert_eq!(&d[16..20], &[0; 4], "inline data");
            found = true;
        }
        at += 4 + len;
    }
    assert!(found);
}

/// REGISTER AND MOVE leaves an already registered destination's key as it
/// was (SPC-4 §5.13.8).
#[test]
fn register_and_move_keeps_a_registered_destinations_key() {
    let mut h = pr_h();
    h.register(B, 0xb);
    h.register(C, 0xc0);
    h.pr_out(B, 1, 1, 0xb, 0).good();
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&0xbu64.to_be_bytes());
    p[8..16].copy_from_slice(&0x99u64.to_be_bytes());
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    let t = iscsi_tid("iqn.c,i,0x000000000003");
    p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    let mut c = prout(7, 1);
    c[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    h.run(B, L1, &c, &p).good();
    let mut keys = h.keys(C).1;
    keys.sort();
    assert_eq!(keys, vec![0xb, 0xc0]);
    assert_eq!(h.reservation(C), Some((0xc0, 1)));
}
