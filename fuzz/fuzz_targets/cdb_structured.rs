//! SCSI emulation fed sequences of *well-formed* commands: the input picks
//! an operation the LU supports, and its LBAs, lengths, flags, service
//! actions and parameter lists from values near the edges (0, the last
//! block, one past it, the largest lengths), so the fuzzer spends its time
//! in the handlers' logic instead of in the length and opcode checks the
//! `cdb` target already covers (it plateaued there). Several nexuses take
//! turns, so unit attentions, SPC-2 and persistent reservations and MODE
//! SELECT state build up between commands; every media task runs against
//! an in-memory disk (thin or not, shared PR state or not). EXTENDED COPY
//! parameter lists name the LU by its own designators (or not), SANITIZE
//! and PERSISTENT RESERVE OUT lists carry patterns and TransportIDs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scsi::{
    LunConfig, LunId, LunSet, MemDevice, MemSharedState, NexusId, Outcome, Request,
    SharedMemDevice, SharedState, TargetPort,
};

const BLOCKS: u64 = 2048;

/// Bytes of the input, read in order; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.byte() as usize % v.len()]
    }
    /// One of `v`, or (one time in `v.len() + 1`) any byte.
    fn pick_or_any(&mut self, v: &[u8]) -> u8 {
        let k = self.byte() as usize % (v.len() + 1);
        if k == v.len() {
            self.byte()
        } else {
            v[k]
        }
    }
    /// An LBA near an edge, or anywhere.
    fn lba(&mut self) -> u64 {
        match self.byte() % 6 {
            0 => 0,
            1 => BLOCKS - 1,
            2 => BLOCKS,
            3 => u64::MAX - u64::from(self.byte()),
            4 => BLOCKS - 1 - u64::from(self.byte()),
            _ => u64::from(self.byte()) * 7,
        }
    }
    /// A transfer length near an edge.
    fn len(&mut self) -> u32 {
        match self.byte() % 6 {
            0 => 0,
            1 => 1,
            2 => 8,
            3 => u32::from(self.byte()),
            4 => 0xffff,
            _ => 0xffff_ffff,
        }
    }
}

fn put(c: &mut [u8], at: usize, v: &[u8]) {
    c[at..at + v.len()].copy_from_slice(v);
}

/// An iSCSI TransportID for `name` (format 01b with an ISID in it).
fn transport_id(name: &str) -> Vec<u8> {
    let format = if name.contains(",i,0x") { 0x40 } else { 0 };
    let len = ((name.len() + 1).div_ceil(4) * 4).max(20);
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(len as u16).to_be_bytes());
    t.extend_from_slice(name.as_bytes());
    t.resize(4 + len, 0);
    t
}

/// An EXTENDED COPY (LID1) parameter list: up to three identification
/// descriptors (the LU's designators, or noise), up to three segments.
fn xcopy_list(i: &mut Input, desigs: &[Vec<u8>]) -> Vec<u8> {
    let t = usize::from(i.byte() % 4);
    let s = usize::from(i.byte() % 4);
    let mut p = vec![0u8; 16];
    p[0] = i.byte();
    p[1] = i.byte() & 0x3f;
    put(&mut p, 2, &((32 * t) as u16).to_be_bytes());
    put(&mut p, 8, &((28 * s) as u32).to_be_bytes());
    for _ in 0..t {
        let mut d = vec![i.pick_or_any(&[0xe4]), i.pick_or_any(&[0, 0xc0]), 0, 0];
        let desig = if desigs.is_empty() || i.byte() % 4 == 0 {
            (0..20).map(|_| i.byte()).collect()
        } else {
            desigs[usize::from(i.byte()) % desigs.len()].clone()
        };
        d.extend_from_slice(&desig);
        d.resize(32, 0);
        put(&mut d, 29, &[0, i.pick(&[2, 0, 0x10]), 0]);
        p.extend_from_slice(&d);
    }
    for _ in 0..s {
        let mut d = vec![i.pick_or_any(&[0x02]), i.byte() & 3, 0, 0x18];
        d.extend_from_slice(&u16::from(i.byte() % 4).to_be_bytes());
        d.extend_from_slice(&u16::from(i.byte() % 4).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&(i.len() as u16).to_be_bytes());
        d.extend_from_slice(&i.lba().to_be_bytes());
        d.extend_from_slice(&i.lba().to_be_bytes());
        p.extend_from_slice(&d);
    }
    p
}

/// One command: the CDB and its Data-Out.
fn command(i: &mut Input, desigs: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let op = i.pick(&[
        0x00, 0x03, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2e, 0x2f, 0x34,
        0x35, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5a, 0x5e, 0x5f, 0x88, 0x89, 0x8a, 0x8b, 0x8e, 0x8f,
        0x90, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa4, 0xa8, 0xaa, 0xae, 0xaf, 0x08, 0x0a, 0x37, 0x48,
        0x83, 0x84, 0x9c, 0xb7,
    ]);
    let len = match op {
        0x00..=0x1f => 6,
        0x20..=0x5f => 10,
        0x80..=0x9f => 16,
        _ => 12,
    };
    let mut c = vec![0u8; len];
    c[0] = op;
    c[1] = i.pick_or_any(&[0, 0x02, 0x08, 0x10, 0x01, 0x0a, 0x0c, 0x12, 0x03]);
    let (lba, n) = (i.lba(), i.len());
    match len {
        6 => {
            c[2] = i.pick_or_any(&[0, 0x08, 0x1c, 0x3f, 0x83, 0xb0]);
            c[3] = i.byte() & 1;
            c[4] = i.pick_or_any(&[0, 1, 8, 24, 0xff]);
        }
        10 => {
            if op == 0x5e || op == 0x5f {
                c[1] = i.byte() & 0x1f;
                c[2] = i.pick_or_any(&[0, 1, 3, 5, 6, 7, 8, 0x11]);
                put(&mut c, 5, &[0, 0, i.pick(&[0, 8, 24, 32, 0xff])]);
            } else if op == 0x48 {
                // SANITIZE: OVERWRITE, BLOCK ERASE, CRYPTO, EXIT FAILURE MODE.
                c[1] = i.pick_or_any(&[0x01, 0x02, 0x03, 0x1f, 0x81]);
                put(
                    &mut c,
                    7,
                    &u16::from(i.pick(&[0u8, 4, 5, 8, 0xff])).to_be_bytes(),
                );
            } else {
                put(&mut c, 2, &(lba as u32).to_be_bytes());
                put(&mut c, 7, &(n as u16).to_be_bytes());
            }
        }
        12 => {
            put(&mut c, 2, &(lba as u32).to_be_bytes());
            put(&mut c, 6, &n.to_be_bytes());
            if op == 0xa3 || op == 0xa4 {
                c[1] = i.pick_or_any(&[0x0a, 0x0c, 0x0d, 0x2a]);
                c[2] = i.byte();
            }
        }
        _ => {
            put(&mut c, 2, &lba.to_be_bytes());
            put(&mut c, 10, &n.to_be_bytes());
            if op == 0x89 {
                c[13] = i.pick(&[0, 1, 2, 255]);
            }
            if op == 0x9e {
                c[1] = i.pick_or_any(&[0x10, 0x12]) & 0x1f;
            }
            if op == 0x83 || op == 0x84 {
                // EXTENDED COPY (LID1), POPULATE TOKEN, WRITE USING
                // TOKEN; RECEIVE COPY RESULTS and ROD TOKEN INFORMATION.
                c[1] = i.pick_or_any(&[0x00, 0x03, 0x10, 0x11, 0x07, 0x01]) & 0x1f;
                c[2] = 0;
                c[5] = i.byte() % 4;
                c[9] = c[5];
                let plen = i.pick(&[0u32, 16, 32, 44, 100, 552, 1024]);
                put(&mut c, 10, &plen.to_be_bytes());
            }
            if op == 0x9c {
                // WRITE ATOMIC: transfer length in bytes 12-13.
                put(&mut c, 10, &[0, 0, 0, i.pick(&[0u8, 1, 8])]);
            }
        }
    }
    // Data-Out: a parameter list that parses (UNMAP, PERSISTENT RESERVE
    // OUT, MODE SELECT, SET TARGET PORT GROUPS), blocks, or noise.
    let dout = match i.byte() % 10 {
        5 => xcopy_list(i, desigs),
        6 => {
            // PERSISTENT RESERVE OUT with TransportIDs: SPEC_I_PT, or
            // REGISTER AND MOVE's layout.
            let mut d = vec![0u8; 24];
            put(&mut d, 0, &u64::from(i.byte() % 4).to_be_bytes());
            put(&mut d, 8, &u64::from(i.byte() % 4).to_be_bytes());
            d[17] = i.byte() & 3;
            put(&mut d, 18, &u16::from(i.byte() % 3).to_be_bytes());
            d[20] = i.byte() & 0x0d;
            let who = i.byte() % 4;
            let t = transport_id(&match who {
                0 => "iqn.i2".to_string(),
                3 => String::new(),
                n => format!("iqn.i{n},i,0x00000000000{n}"),
            });
            if d[20] & 0x08 != 0 {
                d.extend_from_slice(&(t.len() as u32).to_be_bytes());
            } else {
                put(&mut d, 20, &(t.len() as u32).to_be_bytes());
            }
            d.extend_from_slice(&t);
            d
        }
        8 => {
            // POPULATE TOKEN: up to three ranges.
            let k = usize::from(i.byte() % 4);
            let mut d = vec![0u8; 16];
            d[2] = i.byte() & 3;
            put(&mut d, 4, &u32::from(i.byte()).to_be_bytes());
            put(&mut d, 14, &((16 * k) as u16).to_be_bytes());
            for _ in 0..k {
                d.extend_from_slice(&i.lba().to_be_bytes());
                d.extend_from_slice(&i.len().to_be_bytes());
                d.extend_from_slice(&[0; 4]);
            }
            d
        }
        9 => {
            // WRITE USING TOKEN: a made-up token and one range.
            let mut d = vec![0u8; 552];
            d[2] = i.byte() & 3;
            put(&mut d, 8, &u64::from(i.byte() % 8).to_be_bytes());
            put(&mut d, 16, &[0xf0, 0, 0, 1, 0, 0, 1, 0xf8]);
            d[24] = i.byte();
            put(&mut d, 534, &16u16.to_be_bytes());
            put(&mut d, 536, &i.lba().to_be_bytes());
            put(&mut d, 544, &i.len().to_be_bytes());
            d
        }
        7 => {
            // SANITIZE OVERWRITE parameters.
            let n = usize::from(i.byte() % 8);
            let mut d = vec![i.byte(), 0, 0, n as u8];
            d.extend((0..n).map(|_| i.byte()));
            d
        }
        0 => Vec::new(),
        1 => {
            // UNMAP: header and up to three descriptors.
            let k = usize::from(i.byte() % 4);
            let mut d = vec![0u8; 8 + 16 * k];
            put(&mut d, 0, &((6 + 16 * k) as u16).to_be_bytes());
            put(&mut d, 2, &((16 * k) as u16).to_be_bytes());
            for j in 0..k {
                put(&mut d, 8 + 16 * j, &i.lba().to_be_bytes());
                put(&mut d, 16 + 16 * j, &i.len().to_be_bytes());
            }
            d
        }
        2 => {
            // PERSISTENT RESERVE OUT basic list: small keys collide often.
            let mut d = vec![0u8; 24];
            put(&mut d, 0, &u64::from(i.byte() % 4).to_be_bytes());
            put(&mut d, 8, &u64::from(i.byte() % 4).to_be_bytes());
            d[20] = i.byte() & 0x0d;
            d
        }
        3 => {
            // Blocks of a pattern.
            let b = i.pick(&[512usize, 1024, 4096, 8192]);
            vec![i.byte(); b]
        }
        _ => {
            let k = usize::from(i.byte()) % 64;
            (0..k).map(|_| i.byte()).collect()
        }
    };
    (c, dout)
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let port = TargetPort {
        target_name: "iqn.x:t".into(),
        tpgt: 1,
        relative_port: 1,
    };
    let mut set = LunSet::new(1, port);
    let mut cfg = LunConfig::tgt_defaults(1, LunId(1));
    cfg.size_bytes = BLOCKS * 512;
    cfg.thin = i.byte() & 1 != 0;
    set.insert(LunId(1), cfg);
    for n in 1..=3 {
        set.add_nexus_named(NexusId(n), &format!("iqn.i{n},i,0x00000000000{n}"));
    }
    // The LU's own designators, for EXTENDED COPY to name it by.
    let mut desigs = Vec::new();
    let mut vpd = Vec::new();
    let req = Request {
        cdb: &[0x12, 1, 0x83, 1, 0, 0],
        nexus: NexusId(1),
        lun: LunId(1),
        expected_len: 256,
    };
    if let Outcome::Done(_) = set.execute(&req, &mut vpd) {
        let mut at = 4;
        while at + 4 <= vpd.len() {
            let l = usize::from(vpd[at + 3]);
            if at + 4 + l <= vpd.len() && l <= 16 {
                desigs.push(vpd[at..at + 4 + l].to_vec());
            }
            at += 4 + l;
        }
    }
    let mem = std::sync::Arc::new(MemDevice::new((BLOCKS * 512) as usize));
    let state = std::sync::Arc::new(MemSharedState::default());
    let shared = i.byte() & 1 != 0;
    let dev = SharedMemDevice {
        mem: mem.clone(),
        state: state.clone(),
    };
    if shared {
        let mut cur = Vec::new();
        let _ = state.update(&mut |s| {
            cur = s.to_vec();
            None
        });
        set.install_shared_pr(LunId(1), &cur);
    }
    for _ in 0..24 {
        if i.0.is_empty() {
            break;
        }
        let nexus = NexusId(u64::from(i.byte() % 3) + 1);
        let (cdb, dout) = command(&mut i, &desigs);
        let mut buf = dout;
        let req = Request {
            cdb: &cdb,
            nexus,
            lun: LunId(1),
            expected_len: buf.len() as u32,
        };
        let out = match set.execute_shared(&req, &mut buf) {
            Some(o) => o,
            None => set.execute(&req, &mut buf),
        };
        match out {
            Outcome::Done(r) => assert!(r.data_len <= buf.len()),
            Outcome::Io(mut task) => {
                task.attach_copy_stores(|_| {
                    Some(mem.clone() as std::sync::Arc<dyn scsi::BlockDevice>)
                });
                let r = if shared {
                    task.run(&dev, &mut buf)
                } else {
                    task.run(&*mem, &mut buf)
                };
                assert!(r.data_len <= buf.len());
                if shared {
                    // As the daemon's subscriber would: the store's newest.
                    let mut cur = Vec::new();
                    let _ = state.update(&mut |s| {
                        cur = s.to_vec();
                        None
                    });
                    set.install_shared_pr(LunId(1), &cur);
                }
            }
        }
        for c in set.take_shared_changes() {
            let _ = state.update(&mut |s| c.apply(s));
        }
    }
});
