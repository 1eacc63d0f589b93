//! Login on the main thread (as in tgt): drive [`iscsi::Login`] over a new
//! connection, then either serve a discovery session here or hand a normal
//! session's connection to its target's loop with everything negotiated.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use iscsi::login::{LoginStatus, LOGIN_MAX_DATA};
use iscsi::params::DigestPolicy;
use iscsi::pdu::{self, Pdu};
use iscsi::session::{ConnConfig, Session, SessionConfig, SessionHost};
use iscsi::transfer::BurstLimits;
use iscsi::{
    AuthRequirement, ChapAccounts, ChapCredentials, CmdSn, Digests, Login, LoginConfig, LoginHost,
    LoginRequestInfo, LoginStep, SessionParams, SessionType, StatSn, TargetDefaults, TargetEntry,
    TargetLoginInfo,
};
use scsi::NexusId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DaemonState;
use crate::dataplane::conn::ConnParams;
use crate::dataplane::session::SessionSetup;
use crate::dataplane::{Handoff, TargetMsg};
use crate::mgmt::groups::NodeAuth;
use crate::mgmt::params::{DIGEST_CRC32C, DIGEST_NONE};
use crate::mgmt::table::Account;
use crate::mgmt::TargetTable;

/// A login must finish within this time (RFC 7143 leaves it to the target;
/// LIO uses 15 s, open-iscsi waits 15 s by default).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Most connections one initiator address may hold, logins included.
const MAX_CONNS_PER_ADDRESS: usize = 256;
/// A discovery session silent this long is closed.
const DISCOVERY_IDLE: Duration = Duration::from_secs(300);

/// The daemon's side of one login.
struct Host<'a> {
    state: &'a DaemonState,
    peer: SocketAddr,
    /// The portal group of the portal the initiator reached.
    tpgt: u16,
    tid: Option<u32>,
    queue_depth: u32,
    req: Option<LoginRequestInfo>,
}

fn digest_policy(mask: u32) -> DigestPolicy {
    match (mask & DIGEST_NONE != 0, mask & DIGEST_CRC32C != 0) {
        (true, true) => DigestPolicy::Either,
        (false, true) => DigestPolicy::Crc32cOnly,
        _ => DigestPolicy::NoneOnly,
    }
}

/// The target's offers, from its tgtadm session parameters.
fn target_defaults(table: &TargetTable, tid: u32) -> TargetDefaults {
    let mut d = TargetDefaults::default();
    let Some(p) = table.session_params(tid) else {
        return d;
    };
    let get = |k: &str, dflt: u32| p.get(k).unwrap_or(dflt);
    d.max_recv_data_segment_length =
        get("MaxRecvDataSegmentLength", d.max_recv_data_segment_length);
    d.max_burst_length = get("MaxBurstLength", d.max_burst_length);
    d.first_burst_length = get("FirstBurstLength", d.first_burst_length);
    d.immediate_data = get("ImmediateData", d.immediate_data as u32) != 0;
    d.initial_r2t = get("InitialR2T", d.initial_r2t as u32) != 0;
    d.max_outstanding_r2t = get("MaxOutstandingR2T", d.max_outstanding_r2t);
    // At least 4 connections per session are supported (MC/S); tgt's
    // table default of 1 is what it offers, and so do we unless raised.
    d.max_connections = get("MaxConnections", d.max_connections);
    d.header_digest = digest_policy(get("HeaderDigest", DIGEST_NONE | DIGEST_CRC32C));
    d.data_digest = digest_policy(get("DataDigest", DIGEST_NONE | DIGEST_CRC32C));
    d.default_time2wait = get("DefaultTime2Wait", d.default_time2wait);
    d.default_time2retain = get("DefaultTime2Retain", d.default_time2retain);
    // SPDK's header_digest / data_digest: the target node requires them.
    if let Some(t) = table.target(tid) {
        if t.require_header_digest {
            d.header_digest = DigestPolicy::Crc32cOnly;
        }
        if t.require_data_digest {
            d.data_digest = DigestPolicy::Crc32cOnly;
        }
    }
    d
}

/// Secrets shorter than this draw a warning when first used (RFC 7143
/// §12.1.3 asks for at least 96 bits; like tgt we accept shorter ones).
const MIN_SECRET_LEN: usize = 12;

/// The CHAP accounts a login is checked against: the tgt accounts bound to
/// target `tid` (or the global, discovery ones for `None`), and the secrets
/// of the SPDK auth group its [`NodeAuth`] names, with their mutual CHAP
/// identities. `None` when no authentication is asked: tgt asks when an
/// incoming account is bound; SPDK when `require_chap` is set, and never
/// with `disable_chap` (unless a tgt account is bound). Discovery through
/// a portal group with its own auth settings (`iscsi_portal_group_set_auth`)
/// uses those.
fn chap_accounts(table: &TargetTable, tid: Option<u32>, tpgt: u16) -> Option<ChapAccounts> {
    let cred = |a: &Account| ChapCredentials::new(a.user.clone(), a.password.as_bytes());
    let incoming: Vec<ChapCredentials> =
        table.incoming_accounts(tid).into_iter().map(cred).collect();
    let auth: NodeAuth = match tid {
        Some(t) => table.target(t).map(|t| t.auth).unwrap_or_default(),
        None => table
            .portal_groups
            .get(&tpgt)
            .map(|g| g.auth)
            .filter(|a| *a != NodeAuth::default())
            .unwrap_or(table.discovery_auth),
    };
    if incoming.is_empty() && !auth.require_chap {
        return None;
    }
    let mut acc = ChapAccounts {
        incoming,
        outgoing: table.outgoing_account(tid).map(cred),
        outgoing_for: Vec::new(),
        require_mutual: auth.mutual_chap,
    };
    if let Some(g) = table.auth_groups.get(&auth.chap_group) {
        for s in &g.secrets {
            acc.incoming
                .push(ChapCredentials::new(s.user.clone(), s.secret.as_bytes()));
            if let (Some(u), Some(p)) = (&s.muser, &s.msecret) {
                acc.outgoing_for.push((
                    s.user.clone(),
                    ChapCredentials::new(u.clone(), p.as_bytes()),
                ));
            }
        }
    }
    Some(acc)
}

/// Log a warning the first time an account with a short secret is used.
fn warn_short_secret(user: &str, secret_len: usize, direction: &str) {
    thread_local! {
        static WARNED: std::cell::RefCell<std::collections::HashSet<String>> =
            Default::default();
    }
    if secret_len >= MIN_SECRET_LEN {
        return;
    }
    let first = WARNED.with(|w| {
        let mut w = w.borrow_mut();
        // Bounded: a handful of accounts exist; forget all past 1024.
        if w.len() >= 1024 {
            w.clear();
        }
        w.insert(format!("{direction}/{user}"))
    });
    if first {
        tracing::warn!(
            user,
            direction,
            "CHAP secret shorter than {MIN_SECRET_LEN} characters (RFC 7143 §12.1.3)"
        );
    }
}

impl LoginHost for Host<'_> {
    fn admit(&mut self, req: &LoginRequestInfo) -> Result<TargetLoginInfo, LoginStatus> {
        let table = self.state.table.borrow();
        if !table.system_ready() {
            return Err(LoginStatus::SERVICE_UNAVAILABLE);
        }
        if self.state.registry.conns_from(self.peer.ip()) >= MAX_CONNS_PER_ADDRESS {
            return Err(LoginStatus::OUT_OF_RESOURCES);
        }
        if req.session_type == SessionType::Discovery {
            // Discovery sessions authenticate against the global accounts
            // (tgtadm `--op bind --mode account` without --tid).
            return Ok(TargetLoginInfo {
                auth: chap_accounts(&table, None, self.tpgt)
                    .map_or(AuthRequirement::None, AuthRequirement::Chap),
                ..TargetLoginInfo::default()
            });
        }
        let name = req.target_name.as_deref().unwrap_or("");
        let Some(t) = table.target_by_name(name) else {
            return Err(LoginStatus::NOT_FOUND);
        };
        let tid = t.tid;
        if !table.access_allows(tid, self.tpgt, self.peer.ip(), &req.initiator_name) {
            // RFC 7143 §11.13.5: the initiator is not allowed this target.
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        if !table.target_ready(tid) {
            return Err(LoginStatus::SERVICE_UNAVAILABLE);
        }
        let defaults = target_defaults(&table, tid);
        if req.tsih != 0 {
            // A connection joining a session (MC/S): the session must exist
            // on this target with this initiator and ISID.
            match self.state.registry.find(req.tsih) {
                Some(s)
                    if s.tid == tid && s.isid == req.isid && s.initiator == req.initiator_name =>
                {
                    let others = s.conns.iter().filter(|c| c.0 != req.cid).count() as u32;
                    if others >= defaults.max_connections {
                        return Err(LoginStatus::TOO_MANY_CONNECTIONS);
                    }
                }
                _ => return Err(LoginStatus::SESSION_DOES_NOT_EXIST),
            }
        }
        let auth = chap_accounts(&table, Some(tid), self.tpgt)
            .map_or(AuthRequirement::None, AuthRequirement::Chap);
        self.tid = Some(tid);
        self.req = Some(req.clone());
        self.queue_depth = t.params.get("MaxQueueCmd").unwrap_or(128).max(1);
        // tgtadm's RedirectAddress / RedirectPort / RedirectReason send
        // normal-session logins elsewhere (RFC 7143 §11.13.5).
        let r = &t.redirect;
        let for_here = t.redirect_pg.is_none_or(|pg| pg == self.tpgt);
        let redirect = match r.temporary {
            Some(temporary) if !r.addr.is_empty() && for_here => {
                let host = if r.addr.contains(':') {
                    format!("[{}]", r.addr)
                } else {
                    r.addr.clone()
                };
                let port = if r.port.is_empty() { "3260" } else { &r.port };
                Some(iscsi::Redirect {
                    address: format!("{host}:{port}"),
                    temporary,
                })
            }
            _ => None,
        };
        Ok(TargetLoginInfo {
            defaults,
            auth,
            target_alias: t.alias.clone(),
            redirect,
        })
    }

    fn allocate_tsih(&mut self) -> u16 {
        let (Some(tid), Some(req)) = (self.tid, self.req.as_ref()) else {
            return 0;
        };
        // A leading login with an ISID this initiator already uses on the
        // target reinstates: the old session ends first (RFC 7143 §6.3.5).
        if let Some(old) = self
            .state
            .registry
            .find_by_isid(tid, &req.initiator_name, req.isid)
        {
            if let Some(h) = self.state.targets.borrow().get(&tid) {
                let tsih = old.tsih;
                h.broadcast(|| TargetMsg::CloseSession { tsih });
            }
            self.state.registry.remove_session(old.tsih);
        }
        let rec = self.state.registry.create(
            tid,
            req.isid,
            &req.initiator_name,
            None,
            (req.cid, self.peer),
        );
        rec.tsih
    }
}

/// Serve one accepted connection: login, then discovery or handoff.
pub async fn serve(state: Rc<DaemonState>, stream: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(LOGIN_TIMEOUT, login(&state, stream, peer, local)).await {
        Ok(Some((stream, rbuf, params, stat_sn, exp_cmd_sn, tid, qd))) => match params.session_type
        {
            SessionType::Discovery => {
                discovery(
                    &state, stream, rbuf, params, stat_sn, exp_cmd_sn, peer, local,
                )
                .await
            }
            SessionType::Normal => handoff(
                &state, stream, rbuf, params, stat_sn, exp_cmd_sn, tid, qd, peer,
            ),
        },
        Ok(None) => {}
        Err(_) => tracing::info!(%peer, "login timed out"),
    }
}

type LoggedIn = (TcpStream, Vec<u8>, SessionParams, StatSn, CmdSn, u32, u32);

async fn write_pdus(stream: &mut TcpStream, pdus: &[Pdu], dg: Digests) -> bool {
    let mut out = Vec::new();
    for p in pdus {
        out.extend_from_slice(&p.encode(dg));
    }
    stream.write_all(&out).await.is_ok()
}

/// Counts a login's outcome once, when it ends: `Other` unless set (a
/// bad PDU, a dropped connection, a timeout that drops the future).
struct Outcome<'a> {
    stats: &'a crate::stats::Stats,
    outcome: crate::stats::Login,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        self.stats.login(self.outcome);
    }
}

async fn login(
    state: &DaemonState,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<LoggedIn> {
    let mut outcome = Outcome {
        stats: &state.stats,
        outcome: crate::stats::Login::Other,
    };
    // Every portal of this daemon has its `--port-group` tag.
    let mut machine = Login::new(LoginConfig {
        portal_group_tag: state.port_group,
        ..LoginConfig::default()
    });
    let tpgt = state.table.borrow().tpgt_of(local);
    let mut host = Host {
        tpgt,
        state,
        peer,
        tid: None,
        queue_depth: 128,
        req: None,
    };
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        // A login PDU carries at most 8192 data bytes (RFC 7143 §13.12 default).
        let decoded = match pdu::decode(&rbuf, Digests::default(), LOGIN_MAX_DATA) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(%peer, error = %e, "bad PDU during login");
                return None;
            }
        };
        let Some((p, n)) = decoded else {
            if rbuf.len() > 64 * 1024 {
                return None;
            }
            match stream.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => continue,
            }
        };
        rbuf.drain(..n);
        if host.tid.is_some() {
            machine.set_cmd_window(host.queue_depth);
        }
        match machine.handle_pdu(&p, &mut host) {
            LoginStep::Continue(r) => {
                if !write_pdus(&mut stream, &r, Digests::default()).await {
                    return None;
                }
            }
            LoginStep::Failed { responses } => {
                let _ = write_pdus(&mut stream, &responses, Digests::default()).await;
                let status = responses.first().map(|p| p.bhs.u16_at(36)).unwrap_or(0);
                outcome.outcome = crate::stats::Login::from_status(status).or_other();
                // The initiator learns only the status class and detail; the
                // log says which CHAP step failed for the administrator.
                tracing::info!(%peer, status = format_args!("{status:#06x}"), "login refused");
                return None;
            }
            LoginStep::FullFeature {
                responses,
                params,
                next_stat_sn,
                exp_cmd_sn,
            } => {
                if let Some(chap) = machine.chap() {
                    let user = chap.user().unwrap_or("");
                    tracing::info!(%peer, user, mutual = chap.mutual(), "CHAP authenticated");
                    let table = state.table.borrow();
                    let tid = host.tid;
                    if let Some(a) = table
                        .incoming_accounts(tid)
                        .into_iter()
                        .find(|a| a.user == user)
                    {
                        warn_short_secret(user, a.password.len(), "incoming");
                    }
                    if chap.mutual() {
                        if let Some(a) = table.outgoing_account(tid) {
                            warn_short_secret(&a.user, a.password.len(), "outgoing");
                        }
                    }
                }
                let tid = host.tid.unwrap_or(0);
                let joined = host.req.as_ref().is_some_and(|r| r.tsih != 0);
                if params.session_type == SessionType::Normal
                    && joined
                    && !state.registry.add_conn(params.tsih, params.cid, peer)
                {
                    return None;
                }
                if !write_pdus(&mut stream, &responses, Digests::default()).await {
                    if params.session_type == SessionType::Normal {
                        state.registry.remove_conn(params.tsih, params.cid);
                        if state
                            .registry
                            .find(params.tsih)
                            .is_some_and(|s| s.conns.is_empty())
                        {
                            state.registry.remove_session(params.tsih);
                        }
                    }
                    return None;
                }
                outcome.outcome = crate::stats::Login::Ok;
                return Some((
                    stream,
                    rbuf,
                    params,
                    next_stat_sn,
                    exp_cmd_sn,
                    tid,
                    host.queue_depth,
                ));
            }
        }
    }
}

fn conn_params(p: &SessionParams) -> ConnParams {
    ConnParams {
        digests: Digests {
            header: p.header_digest,
            data: p.data_digest,
        },
        max_recv: p.max_recv_data_segment_length,
        max_xmit: p.max_xmit_data_segment_length.max(512),
        limits: BurstLimits {
            immediate_data: p.immediate_data,
            initial_r2t: p.initial_r2t,
            first_burst: p.first_burst_length,
            max_burst: p.max_burst_length,
            max_outstanding_r2t: p.max_outstanding_r2t,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn handoff(
    state: &DaemonState,
    stream: TcpStream,
    rbuf: Vec<u8>,
    params: SessionParams,
    stat_sn: StatSn,
    exp_cmd_sn: CmdSn,
    tid: u32,
    queue_depth: u32,
    peer: SocketAddr,
) {
    if params.initiator_alias.is_some() {
        // Shown by `tgtadm --op show` ("Initiator: ... alias: ...").
        state
            .registry
            .set_alias(params.tsih, params.initiator_alias.clone());
    }
    let Some(rec) = state.registry.find(params.tsih) else {
        return;
    };
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(_) => {
            state.registry.remove_conn(params.tsih, params.cid);
            return;
        }
    };
    let h = Handoff {
        stream: std_stream,
        leftover: rbuf,
        peer,
        cid: params.cid,
        params: conn_params(&params),
        stat_sn,
        session: SessionSetup {
            tsih: params.tsih,
            nexus: NexusId(rec.nexus),
            isid: params.isid,
            initiator: params.initiator_name.clone(),
            exp_cmd_sn,
            queue_depth,
            time2wait: params.default_time2wait.min(u16::MAX as u32) as u16,
            time2retain: params.default_time2retain.min(u16::MAX as u32) as u16,
        },
        negotiated: Box::new(params.clone()),
    };
    match state.targets.borrow().get(&tid) {
        Some(t) => t.connect(h),
        None => state.registry.remove_session(params.tsih),
    }
}

/// The targets a discovery session may list: those whose ACL admits this
/// initiator, each with every portal (wildcards replaced by the address the
/// initiator reached us on, as tgt does).
struct Listing<'a> {
    state: &'a DaemonState,
    peer: IpAddr,
    initiator: String,
    local: SocketAddr,
}

impl SessionHost for Listing<'_> {
    fn lun_exists(&mut self, _: u64) -> bool {
        false
    }

    fn reset(&mut self, _: iscsi::session::Reset) {}

    fn targets(&mut self) -> Vec<TargetEntry> {
        let table = self.state.table.borrow();
        let all: Vec<(SocketAddr, u16)> = table
            .portals()
            .iter()
            .rev()
            .map(|p| (p.addr, p.tpgt))
            .collect();
        table
            .targets()
            .filter(|t| {
                table.target_ready(t.tid)
                    && table.discovery_allows(t.tid, self.peer, &self.initiator)
            })
            .map(|t| {
                // A target with SPDK portal group maps is listed with the
                // portals of its mapped groups only; private groups' never.
                let portals = all.iter().copied().filter(|(_, tag)| {
                    (t.pg_ig_maps.is_empty() || t.pg_ig_maps.iter().any(|m| m.pg == *tag))
                        && !table.portal_groups.get(tag).is_some_and(|g| g.private)
                });
                (
                    t.name.clone(),
                    crate::dataplane::portal_entries(portals, self.local),
                )
            })
            .collect()
    }
}

/// A discovery session (RFC 7143 §4.3): Text (SendTargets), NOP-Out and
/// Logout only, served on the main thread since it moves no data, by the
/// same protocol machine as normal sessions.
#[allow(clippy::too_many_arguments)]
async fn discovery(
    state: &DaemonState,
    mut stream: TcpStream,
    mut rbuf: Vec<u8>,
    params: SessionParams,
    stat_sn: StatSn,
    exp_cmd_sn: CmdSn,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let dg = Digests {
        header: params.header_digest,
        data: params.data_digest,
    };
    let mut m = Session::new(SessionConfig {
        exp_cmd_sn,
        queue_depth: 1,
        time2wait: 0,
        time2retain: 0,
        max_transfer: 0,
        write_budget: 0,
        discovery: true,
    });
    let cp = conn_params(&params);
    let (c, _) = m.add_conn(
        ConnConfig {
            cid: params.cid,
            digests: dg,
            max_recv: cp.max_recv,
            max_xmit: cp.max_xmit,
            limits: cp.limits,
            stat_sn,
            nop_interval: Duration::ZERO,
            nop_count: 0,
        },
        &params,
        std::time::Instant::now(),
    );
    let mut host = Listing {
        state,
        peer: peer.ip(),
        initiator: params.initiator_name.clone(),
        local,
    };
    let mut out = Vec::new();
    loop {
        let r = m.receive(c, &rbuf, &mut host);
        out.clear();
        while let Some(t) = m.poll_transmit(c) {
            pdu::encode_header(&t.bhs, &[], dg, &mut out);
            pdu::encode_data(m.payload(&t), dg, &mut out);
            m.release(t);
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        match r {
            Ok(n) => {
                rbuf.drain(..n);
            }
            Err(_) => return,
        }
        if m.is_closing(c) {
            return;
        }
        let r = tokio::time::timeout(DISCOVERY_IDLE, stream.read_buf(&mut rbuf)).await;
        match r {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}
