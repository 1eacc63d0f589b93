//! The SCSI state several gateways share through the cluster (persistent
//! and SPC-2 reservations, unit attentions owed), as another gateway or a
//! damaged object could leave it: installed on a LU, then read through
//! PERSISTENT RESERVE IN and used by commands; an ALUA change applied to
//! it. Never a panic; what one change makes installs again. Also
//! librados' notify reply, as the ALUA roll call parses it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scsi::{LunConfig, LunId, LunSet, NexusId, Outcome, Request, TargetPort};

fuzz_target!(|data: &[u8]| {
    let _ = rtgt::backend::rbd::parse_notify_acks(data);
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
    set.insert(LunId(1), cfg);
    set.add_nexus_named(NexusId(1), "iqn.a,i,0x000000000001");
    set.add_nexus_named(NexusId(2), "iqn.b,i,0x000000000002");
    // A valid state first, so that a parsed input is "newer" only by seq.
    set.install_shared_pr(LunId(1), &[]);
    let parsed = set.install_shared_pr(LunId(1), data);
    if let Some(next) = scsi::asymmetric_access_changed(data) {
        // A change of a state that parsed is newer and parses too.
        assert!(!parsed || set.install_shared_pr(LunId(1), &next));
    }
    let cdbs: [&[u8]; 6] = [
        &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0],
        &[0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0],
        &[0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0],
        &[0x00, 0, 0, 0, 0, 0],
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        &[0x16, 0, 0, 0, 0, 0],
    ];
    for n in [NexusId(1), NexusId(2)] {
        for cdb in cdbs {
            let req = Request {
                cdb,
                nexus: n,
                lun: LunId(1),
                expected_len: 4096,
            };
            let mut buf = Vec::new();
            if let Outcome::Done(r) = set.execute(&req, &mut buf) {
                assert_eq!(r.data_len, buf.len());
                assert!(buf.len() <= 4096);
            }
        }
    }
    set.remove_nexus(NexusId(1));
    let _ = set.take_shared_changes();
});
