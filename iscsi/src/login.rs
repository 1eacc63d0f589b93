//! The target's login state machine (RFC 7143 §6.3, §11.12, §11.13), sans-I/O.
//!
//! The daemon feeds every PDU received before the full feature phase to
//! [`Login::handle_pdu`] and sends the PDUs of the returned [`LoginStep`].
//! Decisions that need the target table (does the target exist, may this
//! initiator log in, does the TSIH name a live session) are asked of the
//! daemon through [`LoginHost`].

use std::collections::VecDeque;

use crate::chap::{ChapAccounts, ChapServer};
use crate::params::{
    Key, NegStage, NegotiationError, Negotiator, SessionParams, SessionType, TargetDefaults,
};
use crate::pdu::{Bhs, Itt, Opcode, Pdu};
use crate::serial::{CmdSn, StatSn};
pub use crate::status::LoginStatus;
use crate::text::{self, Accumulator, TextBuilder};

/// Most data we put in one Login Response, and the most we assume the
/// initiator accepts during login: MaxRecvDataSegmentLength takes effect only
/// in the full feature phase, so login runs at its default (RFC 7143 §13.12).
pub const LOGIN_MAX_DATA: usize = 8192;

/// A login exchange longer than this many PDUs is abandoned (a guard against
/// initiators that never finish; a real login takes 2 to 4).
pub const MAX_LOGIN_PDUS: u32 = 64;

/// The login stages (RFC 7143 §11.12.3, CSG/NSG values).
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// The target-side login configuration.
#[derive(Clone, Debug)]
pub struct LoginConfig {
    /// Used until [`LoginHost::admit`] returns the target's own.
    pub defaults: TargetDefaults,
    /// TargetPortalGroupTag of the portal the connection arrived on (RFC
    /// 7143 §13.9); tgt uses 1.
    pub portal_group_tag: u16,
    /// Used when the host gives none.
    pub target_alias: Option<String>,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            defaults: TargetDefaults::default(),
            portal_group_tag: 1,
            target_alias: None,
        }
    }
}

/// What the first Login Request says about who logs in where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequestInfo {
    pub initiator_name: String,
    pub target_name: Option<String>,
    pub session_type: SessionType,
    pub isid: [u8; 6],
    /// 0 for a new session; else the session this connection joins.
    pub tsih: u16,
    pub cid: u16,
}

/// How the initiator must authenticate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum AuthRequirement {
    /// No authentication (AuthMethod=None); an initiator offering only
    /// CHAP gets `AuthMethod=Reject`, as from tgt with no account bound.
    #[default]
    None,
    /// CHAP (RFC 7143 §12.1.3) against these accounts: the target offers
    /// and accepts only `AuthMethod=CHAP` (never falls back to None), the
    /// security stage cannot be skipped, and the login does not leave it
    /// before the exchange succeeds. Every CHAP failure is 0x0201.
    Chap(ChapAccounts),
}

/// The host's answer to [`LoginHost::admit`]: the per-target knobs.
#[derive(Clone, Debug, Default)]
pub struct TargetLoginInfo {
    /// Per-target overrides (tgtadm's target parameters).
    pub defaults: TargetDefaults,
    pub auth: AuthRequirement,
    pub target_alias: Option<String>,
    /// Send the initiator elsewhere instead (normal sessions only).
    pub redirect: Option<Redirect>,
}

/// Login redirection (RFC 7143 §11.13.5, status class 1): the login ends
/// with "target moved" and a TargetAddress the initiator should use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// TargetAddress value: `host:port` (IPv6 in brackets).
    pub address: String,
    /// 0x0101 (moved temporarily) rather than 0x0102 (permanently).
    pub temporary: bool,
}

/// Implemented by the daemon; called by the state machine.
pub trait LoginHost {
    /// Called once per login, when the first (possibly multi-PDU) request's
    /// InitiatorName, TargetName, SessionType, ISID and TSIH are known.
    /// Decide: the target exists (else [`LoginStatus::NOT_FOUND`]), the
    /// initiator may log in ([`LoginStatus::AUTHORIZATION_FAILURE`]), a
    /// non-zero TSIH names a live session
    /// ([`LoginStatus::SESSION_DOES_NOT_EXIST`]), the session has room
    /// ([`LoginStatus::TOO_MANY_CONNECTIONS`]), the target is online
    /// ([`LoginStatus::SERVICE_UNAVAILABLE`]).
    fn admit(&mut self, req: &LoginRequestInfo) -> Result<TargetLoginInfo, LoginStatus>;

    /// A fresh, non-zero TSIH for a new session (RFC 7143 §11.12.6), called
    /// once when a leading login (TSIH 0) reaches the full feature phase.
    fn allocate_tsih(&mut self) -> u16;
}

/// What to do after a PDU.
#[derive(Debug)]
pub enum LoginStep {
    /// Send these responses and wait for the next Login Request.
    Continue(Vec<Pdu>),
    /// Send these responses; the connection is in the full feature phase.
    FullFeature {
        responses: Vec<Pdu>,
        params: SessionParams,
        /// The StatSN of the connection's next response.
        next_stat_sn: StatSn,
        /// The CmdSN the session expects next (the login's CmdSN: Login
        /// Requests are immediate and do not advance it, RFC 7143 §11.12.8).
        exp_cmd_sn: CmdSn,
    },
    /// Send these responses (a Login Response carrying the failure status),
    /// then close the connection.
    Failed { responses: Vec<Pdu> },
}

/// Login Response (RFC 7143 §11.13). Sequence numbers are filled by
/// [`Login`], which owns StatSN during login. One argument per BHS field.
#[allow(clippy::too_many_arguments)]
pub fn login_response(
    itt: Itt,
    transit: bool,
    cont: bool,
    csg: u8,
    nsg: u8,
    isid: [u8; 6],
    tsih: u16,
    status: LoginStatus,
    data: Vec<u8>,
) -> Pdu {
    let mut b = Bhs::new(Opcode::LoginResponse);
    let mut flags = (csg & 3) << 2;
    if transit {
        flags |= 0x80 | (nsg & 3);
    }
    if cont {
        flags |= 0x40;
    }
    b.set_flags(flags);
    b.0[2] = 0x00; // Version-max
    b.0[3] = 0x00; // Version-active
    b.0[8..14].copy_from_slice(&isid);
    b.set_u16_at(14, tsih);
    b.set_itt(itt);
    b.0[36] = status.class();
    b.0[37] = status.detail();
    Pdu::with_data(b, data)
}

/// Why a login failed inside the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Bad text.
    #[error(transparent)]
    Text(#[from] text::TextError),
    /// Negotiation broke a rule of RFC 7143 §6.2 / §13.
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    /// A field of the Login Request is invalid (stage, T/C bits, changed
    /// ISID/TSIH/CID); the string says which.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A decision that carries its own status (host refusal, version, ...).
    #[error("login refused with status {0:?}")]
    Status(LoginStatus),
    /// The target has moved (RFC 7143 §11.13.5 class 1).
    #[error("login redirected to {}", .0.address)]
    Redirect(Redirect),
}

impl LoginError {
    pub fn login_status(&self) -> LoginStatus {
        match self {
            LoginError::Text(e) => e.login_status(),
            LoginError::Negotiation(e) => e.login_status(),
            LoginError::Protocol(_) => LoginStatus::INITIATOR_ERROR,
            LoginError::Status(s) => *s,
            LoginError::Redirect(r) if r.temporary => LoginStatus::TARGET_MOVED_TEMPORARILY,
            LoginError::Redirect(_) => LoginStatus::TARGET_MOVED_PERMANENTLY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No PDU seen yet.
    Start,
    /// In the stage `stage`.
    Negotiating,
    /// Full feature phase reached or login failed: no more PDUs.
    Over,
}

/// How the last piece of a split response is flagged, and what follows.
#[derive(Debug)]
struct TxEnd {
    transit: bool,
    nsg: u8,
    tsih: u16,
    params: Option<SessionParams>,
}

/// The login state machine of one connection.
#[derive(Debug)]
pub struct Login {
    cfg: LoginConfig,
    phase: Phase,
    stage: u8,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    /// StatSN of the next response.
    stat_sn: StatSn,
    exp_cmd_sn: CmdSn,
    cmd_window: u32,
    info: Option<TargetLoginInfo>,
    neg: Option<Negotiator>,
    rx: Accumulator,
    /// Pieces of a response longer than [`LOGIN_MAX_DATA`] still to send.
    tx: VecDeque<Vec<u8>>,
    tx_end: Option<TxEnd>,
    declared_first: bool,
    pdus: u32,
    /// The CHAP exchange, when the target requires CHAP.
    chap: Option<ChapServer>,
}

impl Login {
    pub fn new(cfg: LoginConfig) -> Login {
        Login {
            cfg,
            phase: Phase::Start,
            stage: STAGE_SECURITY,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            stat_sn: StatSn(0),
            exp_cmd_sn: CmdSn(0),
            cmd_window: 1,
            info: None,
            neg: None,
            rx: Accumulator::new(),
            tx: VecDeque::new(),
            tx_end: None,
            declared_first: false,
            pdus: 0,
            chap: None,
        }
    }

    /// The command window advertised in Login Responses
    /// (MaxCmdSN = ExpCmdSN + window - 1). Default 1: the daemon opens it
    /// further with its first responses in the full feature phase.
    pub fn set_cmd_window(&mut self, window: u32) {
        self.cmd_window = window.max(1);
    }

    /// The current login stage (CSG of the next expected request).
    pub fn stage(&self) -> u8 {
        self.stage
    }

    /// The CHAP exchange of this login, if the target requires CHAP: after
    /// the full feature phase it names the authenticated user
    /// ([`ChapServer::user`]) and whether the target proved itself too.
    pub fn chap(&self) -> Option<&ChapServer> {
        self.chap.as_ref()
    }

    /// Stamp the sequence numbers on a response and advance StatSN.
    fn stamp(&mut self, mut p: Pdu) -> Pdu {
        p.bhs.set_stat_sn(self.stat_sn);
        p.bhs.set_exp_cmd_sn(self.exp_cmd_sn);
        p.bhs
            .set_max_cmd_sn(self.exp_cmd_sn.plus(self.cmd_window - 1));
        self.stat_sn = self.stat_sn.next();
        p
    }

    fn fail(&mut self, itt: Itt, status: LoginStatus) -> LoginStep {
        self.phase = Phase::Over;
        self.tx.clear();
        let p = login_response(
            itt,
            false,
            false,
            self.stage,
            0,
            self.isid,
            self.tsih,
            status,
            Vec::new(),
        );
        // StatSN is meaningful only with class 0 (§11.13.4) but is filled
        // anyway, as Linux and tgt do.
        let p = self.stamp(p);
        LoginStep::Failed { responses: vec![p] }
    }

    /// Feed one received PDU. Responses carry StatSN (starting at the first
    /// request's ExpStatSN, +1 per response), ExpCmdSN (the request's CmdSN)
    /// and MaxCmdSN. After `FullFeature` or `Failed`, further calls return
    /// `Failed` with no responses.
    pub fn handle_pdu(&mut self, pdu: &Pdu, host: &mut dyn LoginHost) -> LoginStep {
        let itt = pdu.bhs.itt();
        if self.phase == Phase::Over {
            return LoginStep::Failed {
                responses: Vec::new(),
            };
        }
        if pdu.bhs.opcode() != Some(Opcode::LoginRequest) {
            // RFC 7143 §11.13.5: 0x020b, any other request during login.
            if self.phase == Phase::Start {
                self.stat_sn = pdu.bhs.exp_stat_sn();
            }
            return self.fail(itt, LoginStatus::INVALID_DURING_LOGIN);
        }
        match self.step(pdu, host) {
            Ok(step) => step,
            Err(LoginError::Redirect(r)) => {
                let status = LoginError::Redirect(r.clone()).login_status();
                let mut step = self.fail(itt, status);
                if let LoginStep::Failed { responses } = &mut step {
                    let data = format!("TargetAddress={}\0", r.address).into_bytes();
                    responses[0].bhs.set_data_len(data.len());
                    responses[0].data = data;
                }
                step
            }
            Err(e) => self.fail(itt, e.login_status()),
        }
    }

    fn step(&mut self, pdu: &Pdu, host: &mut dyn LoginHost) -> Result<LoginStep, LoginError> {
        let b = &pdu.bhs;
        self.pdus += 1;
        if self.phase == Phase::Start {
            self.isid = b.isid();
            self.tsih = b.tsih();
            self.cid = b.cid();
            // The first response's StatSN starts the connection's numbering;
            // like tgt we continue from what the initiator expects.
            self.stat_sn = b.exp_stat_sn();
            self.exp_cmd_sn = b.cmd_sn();
            // Version-min > 0: we speak only version 0 (§11.12.4).
            if b.version_min() > 0 || b.version_max() < b.version_min() {
                return Err(LoginError::Status(LoginStatus::UNSUPPORTED_VERSION));
            }
            match b.login_csg() {
                STAGE_SECURITY | STAGE_OPERATIONAL => self.stage = b.login_csg(),
                _ => return Err(LoginError::Protocol("first request's CSG is not 0 or 1")),
            }
            self.phase = Phase::Negotiating;
        } else {
            // ISID, TSIH and CID stay the same through a login (§6.3).
            if b.isid() != self.isid || b.tsih() != self.tsih || b.cid() != self.cid {
                return Err(LoginError::Protocol(
                    "ISID, TSIH or CID changed during login",
                ));
            }
            if b.login_csg() != self.stage {
                return Err(LoginError::Protocol("CSG is not the current stage"));
            }
            self.exp_cmd_sn = b.cmd_sn();
        }
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginError::Protocol("login takes too many PDUs"));
        }
        let (transit, cont) = (b.login_transit(), b.login_continue());
        if transit && cont {
            return Err(LoginError::Protocol("T and C both set"));
        }

        // The initiator asks for the next piece of our long response
        // (§6.1: the initiator answers a C=1 response with an empty request).
        if !self.tx.is_empty() {
            if !pdu.data.is_empty() || cont {
                return Err(LoginError::Protocol(
                    "text sent while the target's text is continued",
                ));
            }
            return Ok(self.send_next_piece(b.itt()));
        }

        self.rx.push(&pdu.data)?;
        if cont {
            // More text follows: acknowledge with an empty response (§6.1).
            let p = login_response(
                b.itt(),
                false,
                false,
                self.stage,
                0,
                self.isid,
                self.tsih,
                LoginStatus::SUCCESS,
                Vec::new(),
            );
            let p = self.stamp(p);
            return Ok(LoginStep::Continue(vec![p]));
        }
        let pairs = text::parse(&self.rx.take())?;

        if transit {
            let nsg = b.login_nsg();
            let ok = match self.stage {
                STAGE_SECURITY => nsg == STAGE_OPERATIONAL || nsg == STAGE_FULL_FEATURE,
                _ => nsg == STAGE_FULL_FEATURE,
            };
            if !ok {
                return Err(LoginError::Protocol("invalid NSG"));
            }
        }

        if self.neg.is_none() {
            self.admit(&pairs, host)?;
        }
        let info = self.info.as_ref().expect("admitted");
        let neg = self.neg.as_mut().expect("admitted");
        let mut out = TextBuilder::new();
        let stage = if self.stage == STAGE_SECURITY {
            NegStage::Security
        } else {
            NegStage::Operational
        };
        let auth_keys = neg.process(&pairs, stage, &mut out)?;
        // Whether authentication still has to finish before we may leave
        // the security stage.
        let mut auth_pending = false;
        match self.chap.as_mut() {
            Some(chap) if self.stage == STAGE_SECURITY => {
                let fail = LoginError::Status(LoginStatus::AUTHENTICATION_FAILURE);
                if neg.value(Key::AuthMethod) == Some("CHAP") {
                    chap.handle(&auth_keys, &mut rand::thread_rng(), &mut out)
                        .map_err(|_| fail)?;
                    auth_pending = !chap.is_done();
                } else if pairs.iter().any(|kv| kv.key == "AuthMethod")
                    || !auth_keys.is_empty()
                    || transit
                {
                    // AuthMethod settled on anything but CHAP (we answered
                    // Reject to an offer without it), CHAP keys before
                    // AuthMethod=CHAP, or a transit with no authentication
                    // at all: no fallback to None (§12.1).
                    return Err(fail);
                } else {
                    auth_pending = true;
                }
            }
            _ => {
                for kv in &auth_keys {
                    // AuthMethod=None: authentication keys do not apply.
                    out.push(&kv.key, "Irrelevant");
                }
            }
        }
        if !self.declared_first {
            self.declared_first = true;
            if neg.session_type() == SessionType::Normal {
                let alias = info
                    .target_alias
                    .clone()
                    .or_else(|| self.cfg.target_alias.clone());
                if let Some(alias) = alias {
                    out.push("TargetAlias", &alias);
                }
                // §13.9: the target returns its portal group tag in the first
                // Login Response of a normal session.
                out.push(
                    "TargetPortalGroupTag",
                    &self.cfg.portal_group_tag.to_string(),
                );
            }
        }

        // Decide whether we go along with the transit the initiator asks for.
        let mut end = TxEnd {
            transit: false,
            nsg: 0,
            tsih: self.tsih,
            params: None,
        };
        // While CHAP is under way we answer T=0 (§6.3: the target may
        // refuse a transit; §12.1.3: the exchange ends the security stage).
        if transit && !auth_pending {
            let nsg = b.login_nsg();
            let wants_ffp = nsg == STAGE_FULL_FEATURE;
            if self.stage == STAGE_SECURITY && wants_ffp {
                // Skipping the operational stage: fine unless we must offer
                // keys, in which case we send the initiator to the
                // operational stage instead (§6.3: the target may answer
                // with a lower NSG).
                let mut probe = neg.clone();
                if probe.target_offers(&mut TextBuilder::new()) {
                    end.transit = true;
                    end.nsg = STAGE_OPERATIONAL;
                } else {
                    neg.target_offers(&mut out);
                    end = self.finish(host, end)?;
                }
            } else if wants_ffp {
                if neg.target_offers(&mut out) {
                    // We made offers: wait for the answers (T=0).
                } else {
                    end = self.finish(host, end)?;
                }
            } else {
                end.transit = true;
                end.nsg = nsg;
            }
        }
        let pieces = text::split(out.as_bytes(), LOGIN_MAX_DATA);
        self.tx.extend(pieces);
        self.tx_end = Some(end);
        Ok(self.send_next_piece(b.itt()))
    }

    fn finish(&mut self, host: &mut dyn LoginHost, mut end: TxEnd) -> Result<TxEnd, LoginError> {
        let neg = self.neg.as_ref().expect("admitted");
        let tsih = if self.tsih == 0 {
            host.allocate_tsih()
        } else {
            self.tsih
        };
        let params = neg.finish(self.isid, tsih, self.cid)?;
        end.transit = true;
        end.nsg = STAGE_FULL_FEATURE;
        end.tsih = tsih;
        end.params = Some(params);
        Ok(end)
    }

    fn admit(
        &mut self,
        pairs: &[text::KeyValue],
        host: &mut dyn LoginHost,
    ) -> Result<(), LoginError> {
        let find = |k: &str| {
            pairs
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        // §13.5: InitiatorName MUST be in the first Login Request.
        let initiator_name = match find("InitiatorName") {
            Some(n) if !n.is_empty() && n.len() <= 223 => n.to_owned(),
            Some(_) => return Err(LoginError::Status(LoginStatus::INITIATOR_ERROR)),
            None => return Err(LoginError::Status(LoginStatus::MISSING_PARAMETER)),
        };
        let session_type = match find("SessionType") {
            None => SessionType::Normal,
            Some(v) => SessionType::parse(v)
                .ok_or(LoginError::Status(LoginStatus::SESSION_TYPE_NOT_SUPPORTED))?,
        };
        let target_name = find("TargetName").map(str::to_owned);
        match &target_name {
            // §13.4: TargetName is required in the first request of a
            // normal session.
            None if session_type == SessionType::Normal => {
                return Err(LoginError::Status(LoginStatus::MISSING_PARAMETER))
            }
            Some(n) if n.is_empty() || n.len() > 223 => {
                return Err(LoginError::Status(LoginStatus::INITIATOR_ERROR))
            }
            _ => {}
        }
        let req = LoginRequestInfo {
            initiator_name,
            target_name,
            session_type,
            isid: self.isid,
            tsih: self.tsih,
            cid: self.cid,
        };
        let info = host.admit(&req).map_err(LoginError::Status)?;
        if let (Some(r), SessionType::Normal) = (&info.redirect, session_type) {
            return Err(LoginError::Redirect(r.clone()));
        }
        // A target that requires authentication may not be entered without
        // the security stage (§6.3, 0x0201).
        if info.auth != AuthRequirement::None && self.stage != STAGE_SECURITY {
            return Err(LoginError::Status(LoginStatus::AUTHENTICATION_FAILURE));
        }
        let methods = match &info.auth {
            AuthRequirement::None => "None",
            AuthRequirement::Chap(accounts) => {
                self.chap = Some(ChapServer::new(accounts.clone()));
                "CHAP"
            }
        };
        self.neg = Some(Negotiator::new(
            info.defaults.clone(),
            session_type,
            self.tsih == 0,
            methods,
        ));
        self.info = Some(info);
        Ok(())
    }

    /// Send the next piece of the pending response: C=1 on all but the
    /// last, which carries the transit decision.
    fn send_next_piece(&mut self, itt: Itt) -> LoginStep {
        let piece = self.tx.pop_front().unwrap_or_default();
        if !self.tx.is_empty() {
            let p = login_response(
                itt,
                false,
                true,
                self.stage,
                0,
                self.isid,
                self.tsih,
                LoginStatus::SUCCESS,
                piece,
            );
            let p = self.stamp(p);
            return LoginStep::Continue(vec![p]);
        }
        let end = self.tx_end.take().unwrap_or(TxEnd {
            transit: false,
            nsg: 0,
            tsih: self.tsih,
            params: None,
        });
        let p = login_response(
            itt,
            end.transit,
            false,
            self.stage,
            end.nsg,
            self.isid,
            end.tsih,
            LoginStatus::SUCCESS,
            piece,
        );
        let p = self.stamp(p);
        if end.transit {
            self.stage = end.nsg;
        }
        match end.params {
            Some(params) => {
                self.phase = Phase::Over;
                LoginStep::FullFeature {
                    responses: vec![p],
                    params,
                    next_stat_sn: self.stat_sn,
                    exp_cmd_sn: self.exp_cmd_sn,
                }
            }
            None => LoginStep::Continue(vec![p]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chap::{self, ChapAlgorithm, ChapCredentials};
    use crate::params::DigestPolicy;
    use crate::pdu::Digests;

    const ISID: [u8; 6] = [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01];
    const TARGET: &str = "iqn.2024-01.org.example:disk1";

    struct Host {
        targets: Vec<String>,
        defaults: TargetDefaults,
        auth: AuthRequirement,
        seen: Vec<LoginRequestInfo>,
        next_tsih: u16,
    }

    impl Host {
        fn new() -> Host {
            Host {
                targets: vec![TARGET.into()],
                defaults: TargetDefaults::default(),
                auth: AuthRequirement::None,
                seen: Vec::new(),
                next_tsih: 0x1234,
            }
        }
    }

    impl LoginHost for Host {
        fn admit(&mut self, req: &LoginRequestInfo) -> Result<TargetLoginInfo, LoginStatus> {
            self.seen.push(req.clone());
            if req.session_type == SessionType::Normal
                && !self
                    .targets
                    .iter()
                    .any(|t| Some(t) == req.target_name.as_ref())
            {
                return Err(LoginStatus::NOT_FOUND);
            }
            Ok(TargetLoginInfo {
                defaults: self.defaults.clone(),
                auth: self.auth.clone(),
                target_alias: None,
                redirect: None,
            })
        }
        fn allocate_tsih(&mut self) -> u16 {
            let t = self.next_tsih;
            self.next_tsih += 1;
            t
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn req_full(
        csg: u8,
        nsg: u8,
        t: bool,
        c: bool,
        itt: u32,
        tsih: u16,
        vmin: u8,
        data: &[u8],
    ) -> Pdu {
        let mut b = Bhs::new(Opcode::LoginRequest);
        b.0[0] |= 0x40; // immediate
        b.set_flags(
            if t { 0x80 } else { 0 }
                | if c { 0x40 } else { 0 }
                | (csg << 2)
                | if t { nsg } else { 0 },
        );
        b.0[2] = 0;
        b.0[3] = vmin;
        b.0[8..14].copy_from_slice(&ISID);
        b.set_u16_at(14, tsih);
        b.set_itt(Itt(itt));
        b.set_u16_at(20, 0); // CID
        b.set_u32_at(24, 5); // CmdSN
        b.set_u32_at(28, 0x10); // ExpStatSN
        Pdu::with_data(b, data.to_vec())
    }

    fn req(csg: u8, nsg: u8, t: bool, c: bool, data: &[u8]) -> Pdu {
        req_full(csg, nsg, t, c, 1, 0, 0, data)
    }

    fn cont(step: LoginStep) -> Pdu {
        match step {
            LoginStep::Continue(mut v) => {
                assert_eq!(v.len(), 1);
                v.pop().unwrap()
            }
            LoginStep::FullFeature { .. } => panic!("expected Continue, got FullFeature"),
            LoginStep::Failed { responses } => panic!(
                "expected Continue, got Failed {:?}",
                responses[0].bhs.u16_at(36)
            ),
        }
    }

    fn failed(step: LoginStep) -> LoginStatus {
        match step {
            LoginStep::Failed { responses } => {
                assert_eq!(responses.len(), 1);
                let b = &responses[0].bhs;
                assert_eq!(b.opcode(), Some(Opcode::LoginResponse));
                assert!(responses[0].data.is_empty());
                LoginStatus(b.u16_at(36))
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    /// The wire bytes of a Login Response we expect, built by hand from
    /// RFC 7143 §11.13's layout (not with `login_response`).
    fn wire(flags: u8, tsih: u16, stat_sn: u32, data: &[u8]) -> Vec<u8> {
        let mut w = vec![0u8; 48];
        w[0] = 0x23;
        w[1] = flags;
        w[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        w[8..14].copy_from_slice(&ISID);
        w[14..16].copy_from_slice(&tsih.to_be_bytes());
        w[16..20].copy_from_slice(&1u32.to_be_bytes());
        w[24..28].copy_from_slice(&stat_sn.to_be_bytes());
        w[28..32].copy_from_slice(&5u32.to_be_bytes());
        w[32..36].copy_from_slice(&5u32.to_be_bytes());
        w.extend_from_slice(data);
        while !w.len().is_multiple_of(4) {
            w.push(0);
        }
        w
    }

    const OPERATIONAL_KEYS: &[u8] = b"HeaderDigest=None\0DataDigest=None\0ErrorRecoveryLevel=0\0InitialR2T=No\0\
ImmediateData=Yes\0MaxBurstLength=16776192\0FirstBurstLength=262144\0MaxConnections=1\0DefaultTime2Wait=2\0\
DefaultTime2Retain=0\0IFMarker=No\0OFMarker=No\0MaxRecvDataSegmentLength=262144\0DataPDUInOrder=Yes\0\
DataSequenceInOrder=Yes\0MaxOutstandingR2T=1\0";

    const OPERATIONAL_ANSWERS: &[u8] = b"HeaderDigest=None\0DataDigest=None\0ErrorRecoveryLevel=0\0InitialR2T=Yes\0\
ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0MaxConnections=1\0DefaultTime2Wait=2\0\
DefaultTime2Retain=0\0IFMarker=No\0OFMarker=No\0MaxRecvDataSegmentLength=8192\0DataPDUInOrder=Yes\0\
DataSequenceInOrder=Yes\0MaxOutstandingR2T=1\0";

    fn check_params(p: &SessionParams) {
        assert_eq!(p.initiator_name, "iqn.1994-05.com.redhat:client");
        assert_eq!(p.target_name.as_deref(), Some(TARGET));
        assert_eq!(p.session_type, SessionType::Normal);
        assert_eq!((p.isid, p.tsih, p.cid), (ISID, 0x1234, 0));
        assert!(!p.header_digest && !p.data_digest);
        assert_eq!(p.max_recv_data_segment_length, 8192);
        assert_eq!(p.max_xmit_data_segment_length, 262144);
        assert_eq!((p.max_burst_length, p.first_burst_length), (262144, 65536));
        assert!(p.initial_r2t && p.immediate_data);
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
    }

    #[test]
    fn normal_login_security_then_operational_byte_for_byte() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let first = b"InitiatorName=iqn.1994-05.com.redhat:client\0InitiatorAlias=client\0\
TargetName=iqn.2024-01.org.example:disk1\0SessionType=Normal\0AuthMethod=None\0";
        let r = cont(l.handle_pdu(&req(0, 1, true, false, first), &mut host));
        let text = b"AuthMethod=None\0TargetPortalGroupTag=1\0";
        assert_eq!(r.encode(Digests::default()), wire(0x81, 0, 0x10, text));
        assert_eq!(host.seen.len(), 1);
        assert_eq!(host.seen[0].target_name.as_deref(), Some(TARGET));
        assert_eq!(host.seen[0].isid, ISID);

        match l.handle_pdu(&req(1, 3, true, false, OPERATIONAL_KEYS), &mut host) {
            LoginStep::FullFeature {
                responses,
                params,
                next_stat_sn,
                exp_cmd_sn,
            } => {
                assert_eq!(responses.len(), 1);
                assert_eq!(
                    responses[0].encode(Digests::default()),
                    wire(0x87, 0x1234, 0x11, OPERATIONAL_ANSWERS)
                );
                assert_eq!(next_stat_sn, StatSn(0x12));
                assert_eq!(exp_cmd_sn, CmdSn(5));
                check_params(&params);
                assert_eq!(params.initiator_alias.as_deref(), Some("client"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(host.seen.len(), 1, "admit is called once");
        // Nothing more is accepted.
        assert!(matches!(
            l.handle_pdu(&req(1, 3, true, false, b""), &mut host),
            LoginStep::Failed { .. }
        ));
    }

    #[test]
    fn operational_only_login_in_one_pdu() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig {
            target_alias: Some("disk one".into()),
            ..LoginConfig::default()
        });
        let mut data = b"InitiatorName=iqn.1994-05.com.redhat:client\0TargetName=iqn.2024-01.org.example:disk1\0\
SessionType=Normal\0"
            .to_vec();
        data.extend_from_slice(OPERATIONAL_KEYS);
        match l.handle_pdu(&req(1, 3, true, false, &data), &mut host) {
            LoginStep::FullFeature {
                responses,
                params,
                next_stat_sn,
                ..
            } => {
                let mut want = OPERATIONAL_ANSWERS.to_vec();
                want.extend_from_slice(b"TargetAlias=disk one\0TargetPortalGroupTag=1\0");
                assert_eq!(
                    responses[0].encode(Digests::default()),
                    wire(0x87, 0x1234, 0x10, &want)
                );
                assert_eq!(next_stat_sn, StatSn(0x11));
                check_params(&params);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn security_straight_to_full_feature() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let first = b"InitiatorName=iqn.1994-05.com.redhat:client\0TargetName=iqn.2024-01.org.example:disk1\0";
        match l.handle_pdu(&req(0, 3, true, false, first), &mut host) {
            LoginStep::FullFeature {
                responses, params, ..
            } => {
                let text = b"TargetPortalGroupTag=1\0MaxRecvDataSegmentLength=8192\0";
                assert_eq!(
                    responses[0].encode(Digests::default()),
                    wire(0x83, 0x1234, 0x10, text)
                );
                assert_eq!(params.max_xmit_data_segment_length, 8192);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn discovery_login() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let first = b"InitiatorName=iqn.i\0SessionType=Discovery\0AuthMethod=CHAP,None\0";
        let r = cont(l.handle_pdu(&req(0, 1, true, false, first), &mut host));
        assert_eq!(
            r.data, b"AuthMethod=None\0",
            "no TargetPortalGroupTag in discovery"
        );
        assert_eq!(host.seen[0].session_type, SessionType::Discovery);
        assert_eq!(host.seen[0].target_name, None);
        let ops = b"HeaderDigest=None\0DataDigest=None\0MaxBurstLength=1024\0MaxRecvDataSegmentLength=32768\0\
DefaultTime2Wait=0\0";
        match l.handle_pdu(&req(1, 3, true, false, ops), &mut host) {
            LoginStep::FullFeature {
                responses, params, ..
            } => {
                assert_eq!(
                    responses[0].data,
                    b"HeaderDigest=None\0DataDigest=None\0MaxBurstLength=Irrelevant\0MaxRecvDataSegmentLength=8192\0\
DefaultTime2Wait=2\0"
                );
                assert_eq!(params.session_type, SessionType::Discovery);
                assert_eq!(params.max_xmit_data_segment_length, 32768);
                assert_eq!(params.target_name, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_carry_their_status() {
        let good = b"InitiatorName=iqn.i\0TargetName=iqn.2024-01.org.example:disk1\0";
        let cases: Vec<(Pdu, LoginStatus)> = vec![
            (
                req_full(0, 1, true, false, 1, 0, 1, good),
                LoginStatus::UNSUPPORTED_VERSION,
            ),
            (
                req(
                    0,
                    1,
                    true,
                    false,
                    b"TargetName=iqn.2024-01.org.example:disk1\0",
                ),
                LoginStatus::MISSING_PARAMETER,
            ),
            (
                req(0, 1, true, false, b"InitiatorName=iqn.i\0"),
                LoginStatus::MISSING_PARAMETER,
            ),
            (
                req(
                    0,
                    1,
                    true,
                    false,
                    b"InitiatorName=iqn.i\0TargetName=iqn.nope\0",
                ),
                LoginStatus::NOT_FOUND,
            ),
            (
                req(
                    0,
                    1,
                    true,
                    false,
                    b"InitiatorName=iqn.i\0SessionType=Other\0",
                ),
                LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            ),
            (
                req(0, 1, true, false, b"InitiatorName=iqn.i\0TargetName"),
                LoginStatus::INITIATOR_ERROR,
            ),
            (req(0, 1, true, true, good), LoginStatus::INITIATOR_ERROR),
            (req(0, 2, true, false, good), LoginStatus::INITIATOR_ERROR),
            (req(2, 3, true, false, good), LoginStatus::INITIATOR_ERROR),
            (req(1, 1, true, false, good), LoginStatus::INITIATOR_ERROR),
            (
                req(
                    0,
                    1,
                    true,
                    false,
                    &[good.as_slice(), b"ImmediateData=Yes\0"].concat(),
                ),
                LoginStatus::INITIATOR_ERROR,
            ),
            (
                req(
                    1,
                    3,
                    true,
                    false,
                    &[good.as_slice(), b"AuthMethod=None\0"].concat(),
                ),
                LoginStatus::INITIATOR_ERROR,
            ),
            (
                req(
                    1,
                    3,
                    true,
                    false,
                    &[good.as_slice(), b"TargetAlias=x\0"].concat(),
                ),
                LoginStatus::INITIATOR_ERROR,
            ),
            (
                req(
                    1,
                    3,
                    true,
                    false,
                    &[good.as_slice(), b"SendTargets=All\0"].concat(),
                ),
                LoginStatus::INITIATOR_ERROR,
            ),
        ];
        for (i, (pdu, want)) in cases.into_iter().enumerate() {
            let mut host = Host::new();
            let mut l = Login::new(LoginConfig::default());
            let st = failed(l.handle_pdu(&pdu, &mut host));
            assert_eq!(st, want, "case {i}");
            assert_eq!(
                (st.class(), st.detail()),
                ((want.0 >> 8) as u8, want.0 as u8)
            );
        }
    }

    #[test]
    fn redirect_answers_target_moved_with_an_address() {
        struct Moved;
        impl LoginHost for Moved {
            fn admit(&mut self, _req: &LoginRequestInfo) -> Result<TargetLoginInfo, LoginStatus> {
                Ok(TargetLoginInfo {
                    redirect: Some(Redirect {
                        address: "[fe80::1]:3261".into(),
                        temporary: true,
                    }),
                    ..Default::default()
                })
            }
            fn allocate_tsih(&mut self) -> u16 {
                1
            }
        }
        let mut l = Login::new(LoginConfig::default());
        let data =
            b"InitiatorName=iqn.x:i\0TargetName=iqn.x:t\0SessionType=Normal\0AuthMethod=None\0";
        let step = l.handle_pdu(&req(0, 1, true, false, data), &mut Moved);
        let LoginStep::Failed { responses } = step else {
            panic!("expected a refusal")
        };
        assert_eq!(responses[0].bhs.u16_at(36), 0x0101);
        assert_eq!(responses[0].data, b"TargetAddress=[fe80::1]:3261\0");
        assert_eq!(responses[0].bhs.data_len(), responses[0].data.len());
    }

    #[test]
    fn failure_response_layout() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let step = l.handle_pdu(
            &req(
                0,
                1,
                true,
                false,
                b"InitiatorName=iqn.i\0TargetName=iqn.nope\0",
            ),
            &mut host,
        );
        let LoginStep::Failed { responses } = step else {
            panic!()
        };
        let w = responses[0].encode(Digests::default());
        assert_eq!(w.len(), 48);
        assert_eq!((w[0], w[36], w[37]), (0x23, 0x02, 0x03));
        assert_eq!(&w[8..14], &ISID);
        assert_eq!(&w[16..20], &1u32.to_be_bytes());
    }

    #[test]
    fn non_login_pdu_is_invalid_during_login() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let mut b = Bhs::new(Opcode::ScsiCommand);
        b.set_itt(Itt(9));
        assert_eq!(
            failed(l.handle_pdu(&Pdu::new(b), &mut host)),
            LoginStatus::INVALID_DURING_LOGIN
        );
        let mut l = Login::new(LoginConfig::default());
        cont(l.handle_pdu(
            &req(
                0,
                1,
                true,
                false,
                b"InitiatorName=i\0SessionType=Discovery\0",
            ),
            &mut host,
        ));
        let b = Bhs::new(Opcode::TextRequest);
        assert_eq!(
            failed(l.handle_pdu(&Pdu::new(b), &mut host)),
            LoginStatus::INVALID_DURING_LOGIN
        );
    }

    #[test]
    fn changed_isid_or_duplicate_key_fails() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        cont(l.handle_pdu(
            &req(
                1,
                3,
                false,
                false,
                b"InitiatorName=i\0SessionType=Discovery\0",
            ),
            &mut host,
        ));
        let mut p = req(1, 3, true, false, b"");
        p.bhs.0[13] ^= 1;
        assert_eq!(
            failed(l.handle_pdu(&p, &mut host)),
            LoginStatus::INITIATOR_ERROR
        );

        let mut l = Login::new(LoginConfig::default());
        let r = cont(l.handle_pdu(
            &req(
                1,
                3,
                false,
                false,
                b"InitiatorName=i\0SessionType=Discovery\0HeaderDigest=None\0",
            ),
            &mut host,
        ));
        assert_eq!(r.bhs.flags(), 0x04, "T=0 answer keeps CSG=1");
        assert_eq!(r.data, b"HeaderDigest=None\0");
        assert_eq!(
            failed(l.handle_pdu(&req(1, 3, true, false, b"HeaderDigest=None\0"), &mut host)),
            LoginStatus::INITIATOR_ERROR
        );
    }

    fn chap_accounts() -> ChapAccounts {
        ChapAccounts {
            incoming: vec![
                ChapCredentials::new("alice", "alice-secret-1"),
                ChapCredentials::new("bob", "bob-secret-123"),
            ],
            outgoing: Some(ChapCredentials::new("tgt-user", "target-secret-9")),
            ..ChapAccounts::default()
        }
    }

    fn chap_host() -> Host {
        let mut host = Host::new();
        host.auth = AuthRequirement::Chap(chap_accounts());
        host
    }

    fn kvs(p: &Pdu) -> Vec<text::KeyValue> {
        text::parse(&p.data).unwrap()
    }

    fn value<'a>(kv: &'a [text::KeyValue], k: &str) -> Option<&'a str> {
        kv.iter().find(|x| x.key == k).map(|x| x.value.as_str())
    }

    const CHAP_FIRST: &[u8] =
        b"InitiatorName=iqn.1994-05.com.redhat:client\0TargetName=iqn.2024-01.org.example:disk1\0AuthMethod=CHAP,None\0";

    /// Security stage up to our challenge: returns (login, alg, id, challenge).
    fn to_challenge(
        host: &mut Host,
        first: &[u8],
        algs: &str,
    ) -> (Login, ChapAlgorithm, u8, Vec<u8>) {
        let mut l = Login::new(LoginConfig::default());
        // The initiator asks to move on at once; we hold it in security.
        let r = cont(l.handle_pdu(&req(0, 1, true, false, first), host));
        assert_eq!(r.bhs.flags(), 0x00, "T=0 while CHAP is pending");
        let kv = kvs(&r);
        assert_eq!(value(&kv, "AuthMethod"), Some("CHAP"));
        let r = cont(l.handle_pdu(
            &req(0, 1, true, false, format!("CHAP_A={algs}\0").as_bytes()),
            host,
        ));
        assert_eq!(r.bhs.flags(), 0x00);
        let kv = kvs(&r);
        let alg = ChapAlgorithm::from_code(value(&kv, "CHAP_A").unwrap().parse().unwrap()).unwrap();
        let id: u8 = value(&kv, "CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(value(&kv, "CHAP_C").unwrap()).unwrap();
        assert!(c.len() >= 16);
        (l, alg, id, c)
    }

    fn chap_answer(user: &str, r: &[u8]) -> Vec<u8> {
        format!("CHAP_N={user}\0CHAP_R={}\0", chap::encode_hex(r)).into_bytes()
    }

    #[test]
    fn chap_one_way_login_every_algorithm() {
        for a in ChapAlgorithm::ALL {
            let mut host = chap_host();
            let (mut l, alg, id, c) =
                to_challenge(&mut host, CHAP_FIRST, &format!("{},5", a.code()));
            assert_eq!(alg, a, "the initiator's first supported choice");
            let r = alg.response(id, b"bob-secret-123", &c);
            let r = cont(l.handle_pdu(&req(0, 1, true, false, &chap_answer("bob", &r)), &mut host));
            assert_eq!(r.bhs.flags(), 0x81, "transit to operational");
            assert!(r.data.is_empty(), "no mutual keys: {:?}", kvs(&r));
            match l.handle_pdu(&req(1, 3, true, false, OPERATIONAL_KEYS), &mut host) {
                LoginStep::FullFeature { params, .. } => check_params(&params),
                other => panic!("{other:?}"),
            }
            assert_eq!(l.chap().and_then(|c| c.user()), Some("bob"));
        }
    }

    #[test]
    fn chap_a_with_auth_method_and_base64_response() {
        let mut host = chap_host();
        let mut l = Login::new(LoginConfig::default());
        let first = [CHAP_FIRST, b"CHAP_A=5\0"].concat();
        let r = cont(l.handle_pdu(&req(0, 1, false, false, &first), &mut host));
        let kv = kvs(&r);
        assert_eq!(value(&kv, "AuthMethod"), Some("CHAP"));
        assert_eq!(value(&kv, "CHAP_A"), Some("5"));
        let id: u8 = value(&kv, "CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(value(&kv, "CHAP_C").unwrap()).unwrap();
        let resp = ChapAlgorithm::Md5.response(id, b"alice-secret-1", &c);
        let data = format!("CHAP_N=alice\0CHAP_R={}\0", chap::encode_base64(&resp));
        // Straight to full feature from security: sent to operational first
        // only if we have offers; with defaults we go to FFP.
        match l.handle_pdu(&req(0, 3, true, false, data.as_bytes()), &mut host) {
            LoginStep::FullFeature { responses, .. } => {
                assert_eq!(responses[0].bhs.flags(), 0x83)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chap_failures_are_authentication_failures() {
        type Answer = fn(ChapAlgorithm, u8, &[u8]) -> Vec<u8>;
        let cases: &[(&str, Answer)] = &[
            ("wrong secret", |a, id, c| {
                chap_answer("alice", &a.response(id, b"nope-nope-nope", c))
            }),
            ("unknown user", |a, id, c| {
                chap_answer("mallory", &a.response(id, b"alice-secret-1", c))
            }),
            ("other user's secret", |a, id, c| {
                chap_answer("alice", &a.response(id, b"bob-secret-123", c))
            }),
            ("no response", |_, _, _| b"CHAP_N=alice\0".to_vec()),
            ("no name", |a, id, c| {
                format!(
                    "CHAP_R={}\0",
                    chap::encode_hex(&a.response(id, b"alice-secret-1", c))
                )
                .into_bytes()
            }),
            ("reflected", |a, id, c| {
                let mut v = chap_answer("alice", &a.response(id, b"alice-secret-1", c));
                v.extend_from_slice(
                    format!("CHAP_I={id}\0CHAP_C={}\0", chap::encode_hex(c)).as_bytes(),
                );
                v
            }),
        ];
        for (what, f) in cases {
            let mut host = chap_host();
            let (mut l, a, id, c) = to_challenge(&mut host, CHAP_FIRST, "5");
            let st = failed(l.handle_pdu(&req(0, 1, true, false, &f(a, id, &c)), &mut host));
            assert_eq!(st, LoginStatus::AUTHENTICATION_FAILURE, "{what}");
        }
        // An empty request asking to move on while the challenge is open
        // is held in the security stage (T=0): CHAP must finish first.
        let mut host = chap_host();
        let (mut l, _, _, _) = to_challenge(&mut host, CHAP_FIRST, "5");
        let r = cont(l.handle_pdu(&req(0, 1, true, false, b""), &mut host));
        assert_eq!(r.bhs.flags(), 0x00);
        // No algorithm in common.
        let mut host = chap_host();
        let mut l = Login::new(LoginConfig::default());
        cont(l.handle_pdu(&req(0, 1, false, false, CHAP_FIRST), &mut host));
        assert_eq!(
            failed(l.handle_pdu(&req(0, 1, false, false, b"CHAP_A=4,3\0"), &mut host)),
            LoginStatus::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn chap_required_never_falls_back_to_none() {
        let first = b"InitiatorName=iqn.i\0TargetName=iqn.2024-01.org.example:disk1\0";
        let cases: Vec<(Pdu, &str)> = vec![
            (
                req(
                    0,
                    1,
                    false,
                    false,
                    &[first.as_slice(), b"AuthMethod=None\0"].concat(),
                ),
                "None offered",
            ),
            (
                req(
                    0,
                    1,
                    true,
                    false,
                    &[first.as_slice(), b"AuthMethod=None\0"].concat(),
                ),
                "None with transit",
            ),
            (req(0, 1, true, false, first), "no AuthMethod, transit"),
            (req(0, 3, true, false, first), "no AuthMethod, to FFP"),
            (req(1, 3, true, false, first), "skipping security"),
            (
                req(
                    0,
                    1,
                    false,
                    false,
                    &[first.as_slice(), b"CHAP_A=5\0"].concat(),
                ),
                "CHAP keys without AuthMethod",
            ),
        ];
        for (p, what) in cases {
            let mut host = chap_host();
            let mut l = Login::new(LoginConfig::default());
            assert_eq!(
                failed(l.handle_pdu(&p, &mut host)),
                LoginStatus::AUTHENTICATION_FAILURE,
                "{what}"
            );
        }
        // Even with no account at all, CHAP required means nobody gets in.
        let mut host = Host::new();
        host.auth = AuthRequirement::Chap(ChapAccounts::default());
        let (mut l, a, id, c) = to_challenge(&mut host, CHAP_FIRST, "5");
        let st = failed(l.handle_pdu(
            &req(
                0,
                1,
                true,
                false,
                &chap_answer("x", &a.response(id, b"", &c)),
            ),
            &mut host,
        ));
        assert_eq!(st, LoginStatus::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn no_chap_required_answers_none() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let r = cont(l.handle_pdu(&req(0, 1, true, false, CHAP_FIRST), &mut host));
        assert_eq!(value(&kvs(&r), "AuthMethod"), Some("None"));
        assert_eq!(r.bhs.flags(), 0x81);
        let mut l = Login::new(LoginConfig::default());
        let only = b"InitiatorName=i\0TargetName=iqn.2024-01.org.example:disk1\0AuthMethod=CHAP\0";
        let r = cont(l.handle_pdu(&req(0, 1, false, false, only), &mut host));
        assert_eq!(value(&kvs(&r), "AuthMethod"), Some("Reject"));
    }

    fn mutual_answer(a: ChapAlgorithm, id: u8, c: &[u8], my_id: u8, my_c: &[u8]) -> Vec<u8> {
        let mut v = chap_answer("alice", &a.response(id, b"alice-secret-1", c));
        v.extend_from_slice(
            format!("CHAP_I={my_id}\0CHAP_C={}\0", chap::encode_base64(my_c)).as_bytes(),
        );
        v
    }

    #[test]
    fn chap_mutual() {
        let mut host = chap_host();
        let (mut l, a, id, c) = to_challenge(&mut host, CHAP_FIRST, "7");
        assert_eq!(a, ChapAlgorithm::Sha256);
        let my_c = [0x42u8; 32];
        let r = cont(l.handle_pdu(
            &req(0, 1, true, false, &mutual_answer(a, id, &c, 9, &my_c)),
            &mut host,
        ));
        assert_eq!(r.bhs.flags(), 0x81);
        let kv = kvs(&r);
        assert_eq!(value(&kv, "CHAP_N"), Some("tgt-user"));
        assert_eq!(
            chap::decode_binary(value(&kv, "CHAP_R").unwrap()).unwrap(),
            a.response(9, b"target-secret-9", &my_c)
        );
        assert!(l.chap().unwrap().mutual());

        // Mutual asked for but no outgoing account bound.
        let mut host = Host::new();
        let mut acc = chap_accounts();
        acc.outgoing = None;
        host.auth = AuthRequirement::Chap(acc);
        let (mut l, a, id, c) = to_challenge(&mut host, CHAP_FIRST, "7");
        assert_eq!(
            failed(l.handle_pdu(
                &req(0, 1, true, false, &mutual_answer(a, id, &c, 9, &my_c)),
                &mut host
            )),
            LoginStatus::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn discovery_chap() {
        let mut host = chap_host();
        let first = b"InitiatorName=iqn.i\0SessionType=Discovery\0AuthMethod=CHAP\0";
        let (mut l, a, id, c) = to_challenge(&mut host, first, "5");
        let r = a.response(id, b"alice-secret-1", &c);
        let r = cont(l.handle_pdu(
            &req(0, 1, true, false, &chap_answer("alice", &r)),
            &mut host,
        ));
        assert_eq!(r.bhs.flags(), 0x81);
        match l.handle_pdu(&req(1, 3, true, false, b"HeaderDigest=None\0"), &mut host) {
            LoginStep::FullFeature { params, .. } => {
                assert_eq!(params.session_type, SessionType::Discovery)
            }
            other => panic!("{other:?}"),
        }
        // And a discovery login with the wrong secret stays out.
        let mut host = chap_host();
        let (mut l, a, id, c) = to_challenge(&mut host, first, "5");
        let r = a.response(id, b"alice-secret-2", &c);
        assert_eq!(
            failed(l.handle_pdu(
                &req(0, 1, true, false, &chap_answer("alice", &r)),
                &mut host
            )),
            LoginStatus::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn initiator_text_continued_over_pdus() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let mut data = b"InitiatorName=iqn.1994-05.com.redhat:client\0TargetName=iqn.2024-01.org.example:disk1\0".to_vec();
        data.extend_from_slice(OPERATIONAL_KEYS);
        let (a, b) = data.split_at(37); // cut inside a pair
        let r = cont(l.handle_pdu(&req(1, 3, false, true, a), &mut host));
        assert!(r.data.is_empty());
        assert_eq!(r.bhs.flags(), 0x04);
        assert_eq!(r.bhs.stat_sn(), StatSn(0x10));
        assert!(
            host.seen.is_empty(),
            "nothing parsed before the text is whole"
        );
        match l.handle_pdu(&req(1, 3, true, false, b), &mut host) {
            LoginStep::FullFeature {
                responses,
                params,
                next_stat_sn,
                ..
            } => {
                let mut want = OPERATIONAL_ANSWERS.to_vec();
                want.extend_from_slice(b"TargetPortalGroupTag=1\0");
                assert_eq!(responses[0].data, want);
                assert_eq!(responses[0].bhs.stat_sn(), StatSn(0x11));
                assert_eq!(next_stat_sn, StatSn(0x12));
                check_params(&params);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_target_text_continued_over_pdus() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let mut data = b"InitiatorName=i\0SessionType=Discovery\0".to_vec();
        for i in 0..250 {
            data.extend_from_slice(format!("X-{:0>58}{i:03}=1\0", "").as_bytes());
        }
        let (a, b) = data.split_at(8192);
        cont(l.handle_pdu(&req(1, 3, false, true, a), &mut host));
        let r1 = cont(l.handle_pdu(&req(1, 3, true, false, b), &mut host));
        assert_eq!(r1.bhs.flags(), 0x44, "C=1, T=0, CSG=1");
        assert_eq!(r1.data.len(), LOGIN_MAX_DATA);
        let mut got = r1.data.clone();
        let r2 = cont(l.handle_pdu(&req(1, 3, false, false, b""), &mut host));
        assert_eq!(r2.bhs.flags(), 0x44);
        got.extend_from_slice(&r2.data);
        // A non-empty request while our text is continued is an error...
        let mut l2 = Login::new(LoginConfig::default());
        cont(l2.handle_pdu(&req(1, 3, false, true, a), &mut host));
        cont(l2.handle_pdu(&req(1, 3, true, false, b), &mut host));
        assert_eq!(
            failed(l2.handle_pdu(&req(1, 3, true, false, b"A=1\0"), &mut host)),
            LoginStatus::INITIATOR_ERROR
        );
        // ... and the last piece carries the transit.
        match l.handle_pdu(&req(1, 3, true, false, b""), &mut host) {
            LoginStep::FullFeature {
                responses,
                next_stat_sn,
                ..
            } => {
                assert_eq!(responses[0].bhs.flags(), 0x87);
                got.extend_from_slice(&responses[0].data);
                assert_eq!(next_stat_sn, StatSn(0x14));
            }
            other => panic!("{other:?}"),
        }
        let kv = text::parse(&got).unwrap();
        assert_eq!(kv.len(), 251);
        assert!(kv[..250].iter().all(|kv| kv.value == "NotUnderstood"));
        assert_eq!(
            kv[250],
            text::KeyValue::new("MaxRecvDataSegmentLength", "8192")
        );
    }

    #[test]
    fn target_offers_before_full_feature() {
        let mut host = Host::new();
        host.defaults = TargetDefaults {
            immediate_data: false,
            data_digest: DigestPolicy::Crc32cOnly,
            max_recv_data_segment_length: 65536,
            ..TargetDefaults::default()
        };
        let mut l = Login::new(LoginConfig::default());
        let first = b"InitiatorName=iqn.1994-05.com.redhat:client\0TargetName=iqn.2024-01.org.example:disk1\0";
        // Asking for FFP straight from security: sent to operational instead.
        let r = cont(l.handle_pdu(&req(0, 3, true, false, first), &mut host));
        assert_eq!(r.bhs.flags(), 0x81);
        assert_eq!(r.data, b"TargetPortalGroupTag=1\0");
        let r = cont(l.handle_pdu(
            &req(1, 3, true, false, b"HeaderDigest=CRC32C,None\0"),
            &mut host,
        ));
        assert_eq!(r.bhs.flags(), 0x04, "offers pending: no transit");
        assert_eq!(r.data, b"HeaderDigest=CRC32C\0DataDigest=CRC32C\0ImmediateData=No\0MaxRecvDataSegmentLength=65536\0");
        match l.handle_pdu(
            &req(1, 3, true, false, b"DataDigest=CRC32C\0ImmediateData=No\0"),
            &mut host,
        ) {
            LoginStep::FullFeature {
                responses, params, ..
            } => {
                assert!(responses[0].data.is_empty());
                assert!(params.header_digest && params.data_digest && !params.immediate_data);
                assert_eq!(params.max_recv_data_segment_length, 65536);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn joining_connection_keeps_tsih() {
        let mut host = Host::new();
        let mut l = Login::new(LoginConfig::default());
        let data =
            b"InitiatorName=iqn.i\0TargetName=iqn.2024-01.org.example:disk1\0MaxBurstLength=4096\0";
        match l.handle_pdu(&req_full(1, 3, true, false, 1, 0x77, 0, data), &mut host) {
            LoginStep::FullFeature {
                responses, params, ..
            } => {
                assert_eq!(responses[0].bhs.tsih(), 0x77);
                assert_eq!(params.tsih, 0x77);
                assert_eq!(
                    responses[0].data,
                    b"MaxBurstLength=Irrelevant\0TargetPortalGroupTag=1\0MaxRecvDataSegmentLength=8192\0"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(host.seen[0].tsih, 0x77);
        assert_eq!(
            host.next_tsih, 0x1234,
            "no TSIH allocated for a joining connection"
        );
    }

    #[test]
    fn random_login_pdus_never_panic() {
        let mut s: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let frags: &[&[u8]] = &[
            b"InitiatorName=iqn.i\0",
            b"TargetName=iqn.2024-01.org.example:disk1\0",
            b"TargetName=iqn.x\0",
            b"SessionType=Discovery\0",
            b"SessionType=Normal\0",
            b"AuthMethod=None\0",
            b"AuthMethod=CHAP\0",
            b"CHAP_A=5\0",
            b"HeaderDigest=CRC32C\0",
            b"MaxBurstLength=0x10000\0",
            b"FirstBurstLength=999999999\0",
            b"MaxRecvDataSegmentLength=1\0",
            b"ImmediateData=No\0",
            b"X-a=b\0",
            b"=\0",
            b"\0",
            b"Garbage",
            b"\xff=\xfe\0",
        ];
        for _ in 0..3000 {
            let mut host = Host::new();
            if next() % 3 == 0 {
                host.defaults.immediate_data = false;
            }
            let mut l = Login::new(LoginConfig::default());
            for _ in 0..(next() % 6 + 1) {
                let mut data = Vec::new();
                for _ in 0..(next() % 5) {
                    data.extend_from_slice(frags[next() as usize % frags.len()]);
                }
                let r = next();
                let mut p = req_full(
                    (r & 3) as u8,
                    (r >> 2 & 3) as u8,
                    r & 16 != 0,
                    r & 32 != 0,
                    1,
                    0,
                    0,
                    &data,
                );
                if r & 0x300 == 0x300 {
                    p.bhs.0[0] = (r >> 10) as u8; // any opcode
                }
                if r & 0xc00 == 0xc00 {
                    p.bhs.0[13] ^= 1; // changed ISID
                }
                let step = l.handle_pdu(&p, &mut host);
                let (responses, over) = match step {
                    LoginStep::Continue(v) => (v, false),
                    LoginStep::FullFeature {
                        responses, params, ..
                    } => {
                        assert!(params.first_burst_length <= params.max_burst_length);
                        (responses, true)
                    }
                    LoginStep::Failed { responses } => (responses, true),
                };
                for p in &responses {
                    assert!(p.data.len() <= LOGIN_MAX_DATA);
                    let _ = p.encode(Digests::default());
                }
                if over {
                    break;
                }
            }
        }
    }
}
