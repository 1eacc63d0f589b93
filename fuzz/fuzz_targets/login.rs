//! The login state machine fed arbitrary Login Request PDUs.
#![no_main]
use iscsi::pdu::{Bhs, Pdu, BHS_LEN};
use iscsi::{
    Login, LoginConfig, LoginHost, LoginRequestInfo, LoginStatus, LoginStep, TargetLoginInfo,
};
use libfuzzer_sys::fuzz_target;

struct Host;
impl LoginHost for Host {
    fn admit(&mut self, req: &LoginRequestInfo) -> Result<TargetLoginInfo, LoginStatus> {
        if req.target_name.as_deref() == Some("iqn.x:missing") {
            return Err(LoginStatus::NOT_FOUND);
        }
        Ok(TargetLoginInfo::default())
    }
    fn allocate_tsih(&mut self) -> u16 {
        7
    }
}

fuzz_target!(|data: &[u8]| {
    let mut login = Login::new(LoginConfig::default());
    let mut rest = data;
    while rest.len() >= BHS_LEN + 2 {
        let bhs = Bhs(rest[..BHS_LEN].try_into().unwrap());
        let dlen = (rest[BHS_LEN] as usize) << 8 | rest[BHS_LEN + 1] as usize;
        rest = &rest[BHS_LEN + 2..];
        let take = dlen.min(rest.len());
        let pdu = Pdu::with_data(bhs, rest[..take].to_vec());
        rest = &rest[take..];
        match login.handle_pdu(&pdu, &mut Host) {
            LoginStep::Continue(_) => {}
            LoginStep::FullFeature { .. } | LoginStep::Failed { .. } => return,
        }
    }
});
