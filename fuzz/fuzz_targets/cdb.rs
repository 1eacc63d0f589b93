//! SCSI emulation fed arbitrary CDBs and Data-Out, with the media task run
//! against an in-memory disk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scsi::{
    LunConfig, LunId, LunSet, MemDevice, NativeIo, NexusId, Outcome, Request, SimpleIo, TargetPort,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let mut set = LunSet::new(
        1,
        TargetPort {
            target_name: "iqn.x:t".into(),
            tpgt: 1,
            relative_port: 1,
        },
    );
    let mut cfg = LunConfig::tgt_defaults(1, LunId(1));
    cfg.size_bytes = 1 << 20;
    cfg.thin = data[0] & 1 != 0;
    set.insert(LunId(1), cfg);
    set.add_nexus(NexusId(1));
    let dev = MemDevice::new(1 << 20);
    let cdb_len = [6, 10, 12, 16][(data[1] & 3) as usize];
    let cdb = &data[2..2 + cdb_len];
    // The Data-Out: the rest of the input, repeated up to a length chosen
    // by a selector bit pair (parameter lists, WRITE SAME blocks, COMPARE
    // AND WRITE halves and writes all need more than a fuzzer grows).
    let rest = &data[2 + cdb_len..];
    let want = [rest.len(), 512, 4096, 65536][((data[1] >> 2) & 3) as usize];
    let mut buf: Vec<u8> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.iter().copied().cycle().take(want).collect()
    };
    let req = Request {
        cdb,
        nexus: NexusId(1),
        lun: LunId((data[0] >> 1) as u64 & 3),
        expected_len: buf.len() as u32,
    };
    for _ in 0..2 {
        match set.execute(&req, &mut buf) {
            Outcome::Done(r) => assert!(r.data_len <= buf.len()),
            Outcome::Io(task) => {
                // What an asynchronous store (librbd) would be handed must
                // lie within the buffer it describes.
                match task.native(&buf) {
                    Some(NativeIo::CompareAndWrite { len, .. }) => assert!(2 * len <= buf.len()),
                    Some(NativeIo::WriteSame {
                        block,
                        zeros,
                        unmap,
                        ..
                    }) => assert!(zeros || unmap || block <= buf.len()),
                    Some(NativeIo::Simple(SimpleIo::Write { len, .. })) => {
                        assert!(len <= buf.len())
                    }
                    _ => {}
                }
                let r = task.run(&dev, &mut buf);
                assert!(r.data_len <= buf.len());
            }
        }
    }
});
