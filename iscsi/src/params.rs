//! Login and text key negotiation (RFC 7143 §6.2, §13) as a data table.
//!
//! Each key of RFC 7143 §13 is one [`KeyDef`] row in [`KEYS`]: where it may be
//! used, who may send it, in which login stage, its result function, range,
//! default and what this target offers (from [`TargetDefaults`]). One generic
//! [`respond`] computes the answer to an offer from the row; nothing below
//! matches on individual key names except where a key's meaning crosses into
//! another (FirstBurstLength ≤ MaxBurstLength, §13.14).

use crate::status::LoginStatus;
use crate::text::{KeyValue, TextBuilder};

/// The kind of session being logged in (RFC 7143 §13.21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum SessionType {
    #[default]
    Normal,
    Discovery,
}

impl SessionType {
    pub fn parse(v: &str) -> Option<SessionType> {
        match v {
            "Normal" => Some(SessionType::Normal),
            "Discovery" => Some(SessionType::Discovery),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Normal => "Normal",
            SessionType::Discovery => "Discovery",
        }
    }
}

/// Which digests the target accepts (RFC 7143 §13.1). The initiator's list
/// order decides among accepted values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DigestPolicy {
    /// Only `None`.
    NoneOnly,
    /// Only `CRC32C`: the target offers it if the initiator does not.
    Crc32cOnly,
    /// Either, as the initiator prefers (tgt's behaviour).
    #[default]
    Either,
}

impl DigestPolicy {
    fn list(self) -> &'static str {
        match self {
            DigestPolicy::NoneOnly => "None",
            DigestPolicy::Crc32cOnly => "CRC32C",
            DigestPolicy::Either => "None,CRC32C",
        }
    }
}

/// What this target offers and accepts, per target (tgtadm's per-target
/// parameters). Defaults are tgt 1.0.85's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDefaults {
    /// The most data we accept in one PDU (declared to the initiator,
    /// RFC 7143 §13.12); 512..=2^24-1.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub header_digest: DigestPolicy,
    pub data_digest: DigestPolicy,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    /// Only 0 is implemented; a larger value is clamped by the Minimum
    /// result function anyway.
    pub error_recovery_level: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}

impl Default for TargetDefaults {
    fn default() -> Self {
        TargetDefaults {
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            header_digest: DigestPolicy::Either,
            data_digest: DigestPolicy::Either,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// The negotiated parameters of a connection and its session, read by the
/// daemon once login reaches the full feature phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub session_type: SessionType,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Ours: the most data WE accept in one PDU.
    pub max_recv_data_segment_length: u32,
    /// The initiator's declared MaxRecvDataSegmentLength: the most WE may send.
    pub max_xmit_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
}

impl SessionParams {
    /// The values a session has when nothing is negotiated: the defaults
    /// of RFC 7143 §13 (MaxRecvDataSegmentLength 8192 both ways,
    /// MaxBurstLength 262144, FirstBurstLength 65536, InitialR2T and
    /// ImmediateData Yes, one outstanding R2T and one connection, data in
    /// order, DefaultTime2Wait 2, DefaultTime2Retain 20, ERL 0), for a
    /// session of type `session_type` between these names.
    pub fn rfc_defaults(
        session_type: SessionType,
        initiator_name: &str,
        target_name: Option<&str>,
    ) -> SessionParams {
        SessionParams {
            initiator_name: initiator_name.to_string(),
            initiator_alias: None,
            target_name: target_name.map(str::to_string),
            session_type,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
        }
    }
}

/// Every key this module knows (RFC 7143 §13, §13.26 obsolete keys, RFC 7144
/// iSCSIProtocolLevel). The discriminant indexes [`KEYS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    HeaderDigest,
    DataDigest,
    MaxConnections,
    SendTargets,
    TargetName,
    InitiatorName,
    TargetAlias,
    InitiatorAlias,
    TargetAddress,
    TargetPortalGroupTag,
    InitialR2T,
    ImmediateData,
    MaxRecvDataSegmentLength,
    MaxBurstLength,
    FirstBurstLength,
    DefaultTime2Wait,
    DefaultTime2Retain,
    MaxOutstandingR2T,
    DataPDUInOrder,
    DataSequenceInOrder,
    ErrorRecoveryLevel,
    SessionType,
    AuthMethod,
    TaskReporting,
    IscsiProtocolLevel,
    OFMarker,
    IFMarker,
    OFMarkInt,
    IFMarkInt,
}

/// When a key may be used ("Use:" in RFC 7143 §13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// IO: during the login of any connection.
    InitializeOnly,
    /// LO: during the login of the session's leading connection only.
    LeadingOnly,
    /// FFO: in the full feature phase only.
    FullFeatureOnly,
    /// ALL: login or full feature phase.
    All,
}

/// Who may send the key ("Senders:").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Senders {
    Initiator,
    Target,
    Both,
}

/// The login stage a key may appear in (RFC 7143 §6.3: security keys in
/// SecurityNegotiation only; operational keys in LoginOperationalNegotiation
/// only; declarative keys in either).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageRule {
    Security,
    Operational,
    Any,
}

/// The result function (RFC 7143 §6.2.2 - §6.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Boolean, result `Yes` only if both say `Yes`.
    BoolAnd,
    /// Boolean, result `Yes` if either says `Yes`.
    BoolOr,
    /// Numerical, result the smaller value.
    NumMin,
    /// Numerical, result the larger value.
    NumMax,
    /// List: the first value of the offer the responder supports.
    List,
    /// Declarative: each side states its own value; no result function.
    Declarative,
    /// Obsolete key answered with a constant (RFC 7143 §13.26).
    Constant(&'static str),
}

/// One row of the negotiation table.
#[derive(Clone, Copy, Debug)]
pub struct KeyDef {
    pub key: Key,
    pub name: &'static str,
    pub uses: KeyUse,
    pub senders: Senders,
    pub stage: StageRule,
    pub kind: Kind,
    /// Inclusive range of a numerical key.
    pub min: u32,
    pub max: u32,
    /// RFC default: the result when nobody sends the key.
    pub default: &'static str,
    /// "Irrelevant when: SessionType=Discovery".
    pub irrelevant_in_discovery: bool,
    /// What this target offers or accepts.
    pub ours: fn(&TargetDefaults) -> String,
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_owned()
}
fn none(_: &TargetDefaults) -> String {
    String::new()
}

const MAX_24: u32 = (1 << 24) - 1;

macro_rules! row {
    ($key:ident, $uses:ident, $senders:ident, $stage:ident, $kind:expr, $min:expr, $max:expr, $default:expr, $irr:expr, $ours:expr) => {
        KeyDef {
            key: Key::$key,
            name: "",
            uses: KeyUse::$uses,
            senders: Senders::$senders,
            stage: StageRule::$stage,
            kind: $kind,
            min: $min,
            max: $max,
            default: $default,
            irrelevant_in_discovery: $irr,
            ours: $ours,
        }
    };
}

const fn named(mut d: KeyDef, name: &'static str) -> KeyDef {
    d.name = name;
    d
}

use Kind::*;

/// The negotiation table, indexed by `Key as usize`.
pub static KEYS: [KeyDef; 29] = [
    // §13.1
    named(
        row!(
            HeaderDigest,
            InitializeOnly,
            Both,
            Operational,
            List,
            0,
            0,
            "None",
            false,
            |d| d.header_digest.list().into()
        ),
        "HeaderDigest",
    ),
    named(
        row!(
            DataDigest,
            InitializeOnly,
            Both,
            Operational,
            List,
            0,
            0,
            "None",
            false,
            |d| d.data_digest.list().into()
        ),
        "DataDigest",
    ),
    // §13.2
    named(
        row!(
            MaxConnections,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            1,
            65535,
            "1",
            true,
            |d| d.max_connections.to_string()
        ),
        "MaxConnections",
    ),
    // §13.3: full feature phase only, answered by the discovery module.
    named(
        row!(
            SendTargets,
            FullFeatureOnly,
            Initiator,
            Any,
            Declarative,
            0,
            0,
            "",
            false,
            none
        ),
        "SendTargets",
    ),
    // §13.4: declared by the initiator at login; by the target only in
    // SendTargets answers.
    named(
        row!(
            TargetName,
            InitializeOnly,
            Initiator,
            Any,
            Declarative,
            0,
            0,
            "",
            false,
            none
        ),
        "TargetName",
    ),
    // §13.5
    named(
        row!(
            InitiatorName,
            InitializeOnly,
            Initiator,
            Any,
            Declarative,
            0,
            0,
            "",
            false,
            none
        ),
        "InitiatorName",
    ),
    // §13.6 / §13.7
    named(
        row!(
            TargetAlias,
            All,
            Target,
            Any,
            Declarative,
            0,
            0,
            "",
            false,
            none
        ),
        "TargetAlias",
    ),
    named(
        row!(
            InitiatorAlias,
            All,
            Initiator,
            Any,
            Declarative,
            0,
            0,
            "",
            false,
            none
        ),
        "InitiatorAlias",
    ),
    // §13.8 / §13.9
    named(
        row!(
            TargetAddress,
            All,
            Target,
            Any,
            Declarative,
            0,
            0,
            "",
            false,
            none
        ),
        "TargetAddress",
    ),
    named(
        row!(
            TargetPortalGroupTag,
            InitializeOnly,
            Target,
            Any,
            Declarative,
            0,
            65535,
            "",
            false,
            none
        ),
        "TargetPortalGroupTag",
    ),
    // §13.10 / §13.11
    named(
        row!(
            InitialR2T,
            LeadingOnly,
            Both,
            Operational,
            BoolOr,
            0,
            0,
            "Yes",
            true,
            |d| yn(d.initial_r2t)
        ),
        "InitialR2T",
    ),
    named(
        row!(
            ImmediateData,
            LeadingOnly,
            Both,
            Operational,
            BoolAnd,
            0,
            0,
            "Yes",
            true,
            |d| yn(d.immediate_data)
        ),
        "ImmediateData",
    ),
    // §13.12: declarative, each side states what it receives.
    named(
        row!(
            MaxRecvDataSegmentLength,
            All,
            Both,
            Any,
            Declarative,
            512,
            MAX_24,
            "8192",
            false,
            |d| d
                .max_recv_data_segment_length
                .clamp(512, MAX_24)
                .to_string()
        ),
        "MaxRecvDataSegmentLength",
    ),
    // §13.13 / §13.14
    named(
        row!(
            MaxBurstLength,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            512,
            MAX_24,
            "262144",
            true,
            |d| d.max_burst_length.to_string()
        ),
        "MaxBurstLength",
    ),
    named(
        row!(
            FirstBurstLength,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            512,
            MAX_24,
            "65536",
            true,
            |d| d.first_burst_length.min(d.max_burst_length).to_string()
        ),
        "FirstBurstLength",
    ),
    // §13.15 / §13.16
    named(
        row!(
            DefaultTime2Wait,
            LeadingOnly,
            Both,
            Operational,
            NumMax,
            0,
            3600,
            "2",
            false,
            |d| d.default_time2wait.to_string()
        ),
        "DefaultTime2Wait",
    ),
    named(
        row!(
            DefaultTime2Retain,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            0,
            3600,
            "20",
            false,
            |d| d.default_time2retain.to_string()
        ),
        "DefaultTime2Retain",
    ),
    // §13.17
    named(
        row!(
            MaxOutstandingR2T,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            1,
            65535,
            "1",
            true,
            |d| d.max_outstanding_r2t.to_string()
        ),
        "MaxOutstandingR2T",
    ),
    // §13.18 / §13.19
    named(
        row!(
            DataPDUInOrder,
            LeadingOnly,
            Both,
            Operational,
            BoolOr,
            0,
            0,
            "Yes",
            true,
            |d| yn(d.data_pdu_in_order)
        ),
        "DataPDUInOrder",
    ),
    named(
        row!(
            DataSequenceInOrder,
            LeadingOnly,
            Both,
            Operational,
            BoolOr,
            0,
            0,
            "Yes",
            true,
            |d| yn(d.data_sequence_in_order)
        ),
        "DataSequenceInOrder",
    ),
    // §13.20
    named(
        row!(
            ErrorRecoveryLevel,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            0,
            2,
            "0",
            false,
            |d| d.error_recovery_level.to_string()
        ),
        "ErrorRecoveryLevel",
    ),
    // §13.21
    named(
        row!(
            SessionType,
            LeadingOnly,
            Initiator,
            Any,
            Declarative,
            0,
            0,
            "Normal",
            false,
            none
        ),
        "SessionType",
    ),
    // §13.22 (§12.1): the default offer is None; the login sets the
    // methods per target (only CHAP where an incoming account is bound).
    named(
        row!(
            AuthMethod,
            InitializeOnly,
            Both,
            Security,
            List,
            0,
            0,
            "None",
            false,
            |_| "None".into()
        ),
        "AuthMethod",
    ),
    // §13.23: only the RFC 3720 task reporting semantics.
    named(
        row!(
            TaskReporting,
            LeadingOnly,
            Both,
            Operational,
            List,
            0,
            0,
            "RFC3720",
            true,
            |_| "RFC3720".into()
        ),
        "TaskReporting",
    ),
    // §13.24: this target implements RFC 7143, level 1.
    named(
        row!(
            IscsiProtocolLevel,
            LeadingOnly,
            Both,
            Operational,
            NumMin,
            0,
            31,
            "1",
            true,
            |_| "1".into()
        ),
        "iSCSIProtocolLevel",
    ),
    // §13.26: obsolete markers. "No" for the markers (allowed by §13.26 and
    // what tgt, LIO and ctld answer; Linux's initiator sends them), "Reject"
    // for the intervals (required by §13.26).
    named(
        row!(
            OFMarker,
            InitializeOnly,
            Both,
            Operational,
            Constant("No"),
            0,
            0,
            "No",
            false,
            none
        ),
        "OFMarker",
    ),
    named(
        row!(
            IFMarker,
            InitializeOnly,
            Both,
            Operational,
            Constant("No"),
            0,
            0,
            "No",
            false,
            none
        ),
        "IFMarker",
    ),
    named(
        row!(
            OFMarkInt,
            InitializeOnly,
            Both,
            Operational,
            Constant("Reject"),
            0,
            0,
            "",
            false,
            none
        ),
        "OFMarkInt",
    ),
    named(
        row!(
            IFMarkInt,
            InitializeOnly,
            Both,
            Operational,
            Constant("Reject"),
            0,
            0,
            "",
            false,
            none
        ),
        "IFMarkInt",
    ),
];

/// The table row of a key.
pub fn def(key: Key) -> &'static KeyDef {
    &KEYS[key as usize]
}

/// Look a key up by its (case-sensitive, RFC 7143 §6.1) name.
pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|d| d.name == name)
}

/// Whether a key is a private (`X-`) or public (`X#`) extension key
/// (RFC 7143 §13.25, §6.2.1): we support none and answer NotUnderstood.
pub fn is_extension(name: &str) -> bool {
    name.starts_with("X-") || name.starts_with("X#")
}

/// Keys of the authentication methods (RFC 7143 §12.1): handled by the
/// security stage, not by the table.
pub fn is_auth_key(name: &str) -> bool {
    name.starts_with("CHAP_") || name.starts_with("SRP_") || name.starts_with("KRB_")
}

/// The answer to one offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Value(String),
    /// The offer is invalid or out of range (RFC 7143 §6.2.1).
    Reject,
    /// The key does not matter in this session (RFC 7143 §6.2.1).
    Irrelevant,
    /// The key is unknown (RFC 7143 §6.2.1).
    NotUnderstood,
}

impl Answer {
    pub fn as_str(&self) -> &str {
        match self {
            Answer::Value(v) => v,
            Answer::Reject => "Reject",
            Answer::Irrelevant => "Irrelevant",
            Answer::NotUnderstood => "NotUnderstood",
        }
    }
}

/// `Yes` / `No` (RFC 7143 §5.1 boolean-value).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// A numerical value: decimal, or hexadecimal with `0x`/`0X` (RFC 7143 §6.1
/// "numerical-value" built of decimal-constant or hex-constant).
pub fn parse_num(v: &str) -> Option<u64> {
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (v, 10),
    };
    if digits.is_empty() || digits.len() > 16 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The answer to `offer` for key `d` when we offer or accept `ours`: the
/// key's result function (RFC 7143 §6.2.2 - §6.2.4).
pub fn respond(d: &KeyDef, offer: &str, ours: &str) -> Answer {
    match d.kind {
        BoolAnd | BoolOr => {
            let (Some(theirs), Some(mine)) = (parse_bool(offer), parse_bool(ours)) else {
                return Answer::Reject;
            };
            let r = if d.kind == BoolAnd {
                theirs && mine
            } else {
                theirs || mine
            };
            Answer::Value(yn(r))
        }
        NumMin | NumMax => {
            let Some(theirs) = parse_num(offer) else {
                return Answer::Reject;
            };
            if theirs < d.min as u64 || theirs > d.max as u64 {
                return Answer::Reject;
            }
            let mine = parse_num(ours)
                .unwrap_or(theirs)
                .clamp(d.min as u64, d.max as u64);
            let r = if d.kind == NumMin {
                theirs.min(mine)
            } else {
                theirs.max(mine)
            };
            Answer::Value(r.to_string())
        }
        List => {
            // The first value of the initiator's list we support (§6.2.2).
            for v in offer.split(',') {
                if ours.split(',').any(|o| o == v) {
                    return Answer::Value(v.to_owned());
                }
            }
            Answer::Reject
        }
        Constant(c) => match c {
            "Reject" => Answer::Reject,
            c => Answer::Value(c.to_owned()),
        },
        Declarative => Answer::Value(offer.to_owned()),
    }
}

/// Whether `answer`, the initiator's reply to our offer `offered`, is one
/// the result function could have produced (RFC 7143 §6.2: an answer
/// outside the offer ends the negotiation).
fn answer_valid(d: &KeyDef, answer: &str, offered: &str) -> bool {
    match d.kind {
        BoolAnd | BoolOr => match (parse_bool(answer), parse_bool(offered)) {
            (Some(a), Some(o)) => {
                if d.kind == BoolAnd {
                    a == o || !a
                } else {
                    a == o || a
                }
            }
            _ => false,
        },
        NumMin | NumMax => match (parse_num(answer), parse_num(offered)) {
            (Some(a), Some(o)) => {
                a >= d.min as u64
                    && a <= d.max as u64
                    && if d.kind == NumMin { a <= o } else { a >= o }
            }
            _ => false,
        },
        List => offered.split(',').any(|o| o == answer),
        Declarative | Constant(_) => true,
    }
}

/// Negotiation failures: each ends the login with the status it carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A key was offered or declared twice in one login (RFC 7143 §6.2:
    /// renegotiation is an initiator error).
    #[error("key {0} sent twice")]
    Duplicate(String),
    /// The initiator sent a key only a target may send.
    #[error("key {0} may only be sent by a target")]
    TargetOnlyKey(String),
    /// A key used in a stage or phase that does not allow it (RFC 7143 §6.3).
    #[error("key {0} not allowed in this stage")]
    WrongStage(String),
    /// The initiator's answer to our offer is not a legal result.
    #[error("invalid answer {1:?} to our offer of {0}")]
    BadAnswer(String, String),
    /// The initiator never answered our offer.
    #[error("no answer to our offer of {0}")]
    Unanswered(String),
    /// No value both sides accept (e.g. we require CRC32C digests and the
    /// initiator rejects them).
    #[error("no acceptable value for {0}")]
    NoAgreement(String),
    /// InitiatorName never sent.
    #[error("InitiatorName missing")]
    MissingInitiatorName,
}

impl NegotiationError {
    /// The login status (RFC 7143 §11.13.5).
    pub fn login_status(&self) -> LoginStatus {
        match self {
            NegotiationError::Unanswered(_) | NegotiationError::MissingInitiatorName => {
                LoginStatus::MISSING_PARAMETER
            }
            _ => LoginStatus::INITIATOR_ERROR,
        }
    }
}

/// The login stages a key can arrive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegStage {
    Security,
    Operational,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyState {
    /// Not sent by anyone yet.
    Unset,
    /// The initiator offered or declared it; we answered.
    Answered,
    /// We offered it and wait for the initiator's answer.
    Offered,
}

const N: usize = KEYS.len();

/// The negotiation state of one login: what each side said about each key.
#[derive(Clone, Debug)]
pub struct Negotiator {
    defaults: TargetDefaults,
    session_type: SessionType,
    leading: bool,
    auth_methods: &'static str,
    state: [KeyState; N],
    /// Result or declared value per key.
    values: [Option<String>; N],
    offered: [Option<String>; N],
    /// Whether our MaxRecvDataSegmentLength has been declared.
    mrdsl_declared: bool,
    /// Extension / unknown keys already answered (duplicates are answered
    /// once).
    unknown_seen: Vec<String>,
}

impl Negotiator {
    /// `leading`: this connection starts a new session (TSIH 0), so LO keys
    /// may be negotiated. `auth_methods`: the AuthMethod list we accept.
    pub fn new(
        defaults: TargetDefaults,
        session_type: SessionType,
        leading: bool,
        auth_methods: &'static str,
    ) -> Self {
        Negotiator {
            defaults,
            session_type,
            leading,
            auth_methods,
            state: [KeyState::Unset; N],
            values: std::array::from_fn(|_| None),
            offered: std::array::from_fn(|_| None),
            mrdsl_declared: false,
            unknown_seen: Vec::new(),
        }
    }

    pub fn session_type(&self) -> SessionType {
        self.session_type
    }

    fn ours(&self, d: &KeyDef) -> String {
        match d.key {
            Key::AuthMethod => self.auth_methods.to_owned(),
            // FirstBurstLength may not exceed MaxBurstLength (§13.14): when
            // MaxBurstLength is already settled, offer no more than it.
            Key::FirstBurstLength => {
                let mut v = self
                    .defaults
                    .first_burst_length
                    .min(self.defaults.max_burst_length);
                if let Some(mbl) = self.values[Key::MaxBurstLength as usize]
                    .as_deref()
                    .and_then(parse_num)
                {
                    v = v.min(mbl.min(u32::MAX as u64) as u32);
                }
                v.to_string()
            }
            _ => (d.ours)(&self.defaults),
        }
    }

    fn irrelevant(&self, d: &KeyDef) -> bool {
        (d.irrelevant_in_discovery && self.session_type == SessionType::Discovery)
            || (d.uses == KeyUse::LeadingOnly && !self.leading)
    }

    /// The value a key has now: declared or negotiated, else its default.
    pub fn value(&self, key: Key) -> Option<&str> {
        self.values[key as usize].as_deref()
    }

    /// Process the initiator's keys of one (possibly multi-PDU) Login
    /// Request in `stage`, appending our answers to `out`. Returns the
    /// authentication-method keys (CHAP_*) for the security stage's handler.
    pub fn process(
        &mut self,
        pairs: &[KeyValue],
        stage: NegStage,
        out: &mut TextBuilder,
    ) -> Result<Vec<KeyValue>, NegotiationError> {
        let mut auth = Vec::new();
        for kv in pairs {
            let name = kv.key.as_str();
            if is_auth_key(name) {
                if stage != NegStage::Security {
                    return Err(NegotiationError::WrongStage(kv.key.clone()));
                }
                auth.push(kv.clone());
                continue;
            }
            let Some(d) = lookup(name) else {
                // Unknown and extension keys: NotUnderstood (§6.2.1, §13.25).
                if !self.unknown_seen.iter().any(|k| k == name) {
                    if self.unknown_seen.len() < crate::text::MAX_PAIRS {
                        self.unknown_seen.push(kv.key.clone());
                    }
                    out.push(name, Answer::NotUnderstood.as_str());
                }
                continue;
            };
            self.process_one(d, &kv.value, stage, out)?;
        }
        Ok(auth)
    }

    fn process_one(
        &mut self,
        d: &KeyDef,
        value: &str,
        stage: NegStage,
        out: &mut TextBuilder,
    ) -> Result<(), NegotiationError> {
        let i = d.key as usize;
        let name = d.name;
        if d.senders == Senders::Target {
            return Err(NegotiationError::TargetOnlyKey(name.into()));
        }
        if d.uses == KeyUse::FullFeatureOnly {
            return Err(NegotiationError::WrongStage(name.into()));
        }
        match (d.stage, stage) {
            (StageRule::Security, NegStage::Operational)
            | (StageRule::Operational, NegStage::Security) => {
                return Err(NegotiationError::WrongStage(name.into()));
            }
            _ => {}
        }
        match self.state[i] {
            KeyState::Answered => return Err(NegotiationError::Duplicate(name.into())),
            KeyState::Offered => {
                // The initiator's answer to our offer.
                let offered = self.offered[i].take().unwrap_or_default();
                self.state[i] = KeyState::Answered;
                match value {
                    // The key keeps its default; `finish` checks that we
                    // can live with it.
                    "Reject" | "Irrelevant" | "NotUnderstood" => {}
                    a if answer_valid(d, a, &offered) => self.values[i] = Some(a.to_owned()),
                    a => return Err(NegotiationError::BadAnswer(name.into(), a.into())),
                }
                return Ok(());
            }
            KeyState::Unset => {}
        }
        self.state[i] = KeyState::Answered;
        if self.irrelevant(d) {
            out.push(name, Answer::Irrelevant.as_str());
            return Ok(());
        }
        if d.kind == Declarative {
            match d.key {
                Key::MaxRecvDataSegmentLength => {
                    match parse_num(value) {
                        Some(n) if n >= d.min as u64 && n <= d.max as u64 => {
                            self.values[i] = Some(n.to_string());
                        }
                        _ => {
                            out.push(name, Answer::Reject.as_str());
                            return Ok(());
                        }
                    }
                    // Declare ours in return (§13.12: each side declares
                    // what it can receive).
                    if !self.mrdsl_declared {
                        self.mrdsl_declared = true;
                        out.push(name, &self.ours(d));
                    }
                }
                _ => self.values[i] = Some(value.to_owned()),
            }
            return Ok(());
        }
        let ans = respond(d, value, &self.ours(d));
        if let Answer::Value(v) = &ans {
            self.values[i] = Some(v.clone());
        }
        out.push(name, ans.as_str());
        Ok(())
    }

    /// Whether we still wait for answers to our offers.
    pub fn awaiting_answers(&self) -> bool {
        self.state.contains(&KeyState::Offered)
    }

    /// Before leaving the operational stage: offer every key the initiator
    /// did not mention whose default result this target cannot accept
    /// (e.g. ImmediateData=No or a smaller MaxBurstLength configured), and
    /// declare our MaxRecvDataSegmentLength if not done yet. Returns true if
    /// offers were made: the initiator must answer before we may transit.
    pub fn target_offers(&mut self, out: &mut TextBuilder) -> bool {
        let mut any = false;
        for d in KEYS.iter() {
            let i = d.key as usize;
            if self.state[i] != KeyState::Unset
                || d.senders != Senders::Both
                || d.stage != StageRule::Operational
                || matches!(d.kind, Declarative | Constant(_))
                || matches!(d.uses, KeyUse::FullFeatureOnly | KeyUse::All)
                || self.irrelevant(d)
            {
                continue;
            }
            // The table's value, not `self.ours`: a FirstBurstLength above a
            // smaller negotiated MaxBurstLength is clamped by both sides
            // (§13.14) and needs no extra round trip.
            let ours = (d.ours)(&self.defaults);
            if respond(d, d.default, &ours) != Answer::Value(d.default.to_owned()) {
                out.push(d.name, &ours);
                self.state[i] = KeyState::Offered;
                self.offered[i] = Some(ours);
                any = true;
            }
        }
        if !self.mrdsl_declared {
            self.mrdsl_declared = true;
            out.push(
                def(Key::MaxRecvDataSegmentLength).name,
                &self.ours(def(Key::MaxRecvDataSegmentLength)),
            );
        }
        any
    }

    /// The negotiated parameters once login ends. `isid`, `tsih` and `cid`
    /// come from the login machine.
    pub fn finish(
        &self,
        isid: [u8; 6],
        tsih: u16,
        cid: u16,
    ) -> Result<SessionParams, NegotiationError> {
        for d in KEYS.iter() {
            if self.state[d.key as usize] == KeyState::Offered {
                return Err(NegotiationError::Unanswered(d.name.into()));
            }
        }
        // A list key left at its default must be one we accept.
        for k in [Key::HeaderDigest, Key::DataDigest] {
            let d = def(k);
            let v = self.get(k);
            if respond(d, v, &self.ours(d)) != Answer::Value(v.to_owned()) {
                return Err(NegotiationError::NoAgreement(d.name.into()));
            }
        }
        let initiator_name = self
            .value(Key::InitiatorName)
            .ok_or(NegotiationError::MissingInitiatorName)?
            .to_owned();
        let num = |k: Key| -> u32 {
            let d = def(k);
            parse_num(self.get(k))
                .unwrap_or(0)
                .clamp(d.min as u64, d.max as u64) as u32
        };
        let flag = |k: Key| parse_bool(self.get(k)).unwrap_or(false);
        let max_burst_length = num(Key::MaxBurstLength);
        Ok(SessionParams {
            initiator_name,
            initiator_alias: self.value(Key::InitiatorAlias).map(str::to_owned),
            target_name: self.value(Key::TargetName).map(str::to_owned),
            session_type: self.session_type,
            isid,
            tsih,
            cid,
            header_digest: self.get(Key::HeaderDigest) == "CRC32C",
            data_digest: self.get(Key::DataDigest) == "CRC32C",
            max_recv_data_segment_length: self
                .defaults
                .max_recv_data_segment_length
                .clamp(512, MAX_24),
            max_xmit_data_segment_length: num(Key::MaxRecvDataSegmentLength),
            max_burst_length,
            first_burst_length: num(Key::FirstBurstLength).min(max_burst_length),
            initial_r2t: flag(Key::InitialR2T),
            immediate_data: flag(Key::ImmediateData),
            max_outstanding_r2t: num(Key::MaxOutstandingR2T),
            max_connections: num(Key::MaxConnections),
            data_pdu_in_order: flag(Key::DataPDUInOrder),
            data_sequence_in_order: flag(Key::DataSequenceInOrder),
            default_time2wait: num(Key::DefaultTime2Wait),
            default_time2retain: num(Key::DefaultTime2Retain),
            error_recovery_level: num(Key::ErrorRecoveryLevel),
        })
    }

    /// Value or RFC default.
    fn get(&self, key: Key) -> &str {
        self.values[key as usize]
            .as_deref()
            .unwrap_or(def(key).default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse;

    #[test]
    fn table_is_indexed_by_key() {
        for (i, d) in KEYS.iter().enumerate() {
            assert_eq!(d.key as usize, i, "{}", d.name);
            assert!(!d.name.is_empty());
            assert_eq!(lookup(d.name).unwrap().key, d.key);
        }
        assert!(
            lookup("maxburstlength").is_none(),
            "names are case-sensitive"
        );
    }

    fn neg(defaults: TargetDefaults, st: SessionType) -> Negotiator {
        Negotiator::new(defaults, st, true, "None")
    }

    /// Offer one key in the operational stage and return our answer text.
    fn answer(n: &mut Negotiator, key: &str, value: &str) -> Result<String, NegotiationError> {
        let mut out = TextBuilder::new();
        n.process(
            &[KeyValue::new(key, value)],
            NegStage::Operational,
            &mut out,
        )?;
        Ok(String::from_utf8(out.into_bytes()).unwrap())
    }

    #[test]
    fn every_key_result_table_driven() {
        let d = TargetDefaults::default();
        // (key, offer, expected answer text; "" = no answer)
        let cases: &[(&str, &str, &str)] = &[
            ("HeaderDigest", "CRC32C,None", "HeaderDigest=CRC32C\0"),
            ("HeaderDigest", "None,CRC32C", "HeaderDigest=None\0"),
            ("HeaderDigest", "MD5", "HeaderDigest=Reject\0"),
            ("DataDigest", "CRC32C", "DataDigest=CRC32C\0"),
            ("MaxConnections", "8", "MaxConnections=1\0"),
            ("MaxConnections", "0", "MaxConnections=Reject\0"),
            ("InitialR2T", "No", "InitialR2T=Yes\0"),
            ("InitialR2T", "Maybe", "InitialR2T=Reject\0"),
            ("ImmediateData", "Yes", "ImmediateData=Yes\0"),
            ("ImmediateData", "No", "ImmediateData=No\0"),
            (
                "MaxRecvDataSegmentLength",
                "262144",
                "MaxRecvDataSegmentLength=8192\0",
            ),
            (
                "MaxRecvDataSegmentLength",
                "100",
                "MaxRecvDataSegmentLength=Reject\0",
            ),
            ("MaxBurstLength", "16776192", "MaxBurstLength=262144\0"),
            ("MaxBurstLength", "0x1000", "MaxBurstLength=4096\0"),
            ("MaxBurstLength", "16777216", "MaxBurstLength=Reject\0"),
            ("FirstBurstLength", "262144", "FirstBurstLength=65536\0"),
            ("DefaultTime2Wait", "0", "DefaultTime2Wait=2\0"),
            ("DefaultTime2Wait", "10", "DefaultTime2Wait=10\0"),
            ("DefaultTime2Retain", "0", "DefaultTime2Retain=0\0"),
            ("DefaultTime2Retain", "3601", "DefaultTime2Retain=Reject\0"),
            ("MaxOutstandingR2T", "16", "MaxOutstandingR2T=1\0"),
            ("DataPDUInOrder", "No", "DataPDUInOrder=Yes\0"),
            ("DataSequenceInOrder", "No", "DataSequenceInOrder=Yes\0"),
            ("ErrorRecoveryLevel", "2", "ErrorRecoveryLevel=0\0"),
            (
                "TaskReporting",
                "FastAbort,RFC3720",
                "TaskReporting=RFC3720\0",
            ),
            ("TaskReporting", "FastAbort", "TaskReporting=Reject\0"),
            ("iSCSIProtocolLevel", "2", "iSCSIProtocolLevel=1\0"),
            ("OFMarker", "No", "OFMarker=No\0"),
            ("IFMarker", "Yes", "IFMarker=No\0"),
            ("OFMarkInt", "2048~8192", "OFMarkInt=Reject\0"),
            ("IFMarkInt", "2048", "IFMarkInt=Reject\0"),
            (
                "X-com.example.foo",
                "1",
                "X-com.example.foo=NotUnderstood\0",
            ),
            ("X#org.example", "1", "X#org.example=NotUnderstood\0"),
            ("NoSuchKey", "1", "NoSuchKey=NotUnderstood\0"),
            ("InitiatorName", "iqn.a", ""),
            ("InitiatorAlias", "host", ""),
            ("TargetName", "iqn.t", ""),
            ("SessionType", "Normal", ""),
        ];
        for (k, v, want) in cases {
            let mut n = neg(d.clone(), SessionType::Normal);
            assert_eq!(answer(&mut n, k, v).unwrap(), *want, "{k}={v}");
        }
    }

    #[test]
    fn discovery_makes_session_keys_irrelevant() {
        let mut n = neg(TargetDefaults::default(), SessionType::Discovery);
        for k in [
            "MaxConnections",
            "MaxBurstLength",
            "FirstBurstLength",
            "MaxOutstandingR2T",
        ] {
            assert_eq!(
                answer(&mut n, k, "1024").unwrap(),
                format!("{k}=Irrelevant\0")
            );
        }
        for k in [
            "InitialR2T",
            "ImmediateData",
            "DataPDUInOrder",
            "DataSequenceInOrder",
        ] {
            assert_eq!(
                answer(&mut n, k, "Yes").unwrap(),
                format!("{k}=Irrelevant\0")
            );
        }
        assert_eq!(
            answer(&mut n, "DefaultTime2Wait", "2").unwrap(),
            "DefaultTime2Wait=2\0"
        );
    }

    #[test]
    fn non_leading_connection_gets_irrelevant_for_lo_keys() {
        let mut n = Negotiator::new(
            TargetDefaults::default(),
            SessionType::Normal,
            false,
            "None",
        );
        assert_eq!(
            answer(&mut n, "MaxBurstLength", "1024").unwrap(),
            "MaxBurstLength=Irrelevant\0"
        );
        assert_eq!(
            answer(&mut n, "HeaderDigest", "CRC32C").unwrap(),
            "HeaderDigest=CRC32C\0"
        );
    }

    #[test]
    fn protocol_errors() {
        let mut n = neg(TargetDefaults::default(), SessionType::Normal);
        answer(&mut n, "MaxBurstLength", "1024").unwrap();
        assert_eq!(
            answer(&mut n, "MaxBurstLength", "1024"),
            Err(NegotiationError::Duplicate("MaxBurstLength".into()))
        );
        assert_eq!(
            answer(&mut n, "TargetPortalGroupTag", "1"),
            Err(NegotiationError::TargetOnlyKey(
                "TargetPortalGroupTag".into()
            ))
        );
        assert_eq!(
            answer(&mut n, "SendTargets", "All"),
            Err(NegotiationError::WrongStage("SendTargets".into()))
        );
        assert_eq!(
            answer(&mut n, "AuthMethod", "None"),
            Err(NegotiationError::WrongStage("AuthMethod".into()))
        );
        let mut out = TextBuilder::new();
        let r = n.process(
            &[KeyValue::new("ImmediateData", "Yes")],
            NegStage::Security,
            &mut out,
        );
        assert_eq!(r, Err(NegotiationError::WrongStage("ImmediateData".into())));
        assert_eq!(r.unwrap_err().login_status(), LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = neg(TargetDefaults::default(), SessionType::Normal);
        let mut out = TextBuilder::new();
        let kv =
            parse(b"InitiatorName=iqn.i\0MaxBurstLength=16384\0FirstBurstLength=65536\0").unwrap();
        n.process(&kv, NegStage::Operational, &mut out).unwrap();
        assert_eq!(
            out.as_bytes(),
            b"MaxBurstLength=16384\0FirstBurstLength=16384\0"
        );
        let p = n.finish([0; 6], 1, 0).unwrap();
        assert_eq!((p.max_burst_length, p.first_burst_length), (16384, 16384));
    }

    #[test]
    fn target_offers_non_default_values_and_takes_answers() {
        let d = TargetDefaults {
            immediate_data: false,
            max_burst_length: 65536,
            first_burst_length: 65536,
            header_digest: DigestPolicy::Crc32cOnly,
            max_recv_data_segment_length: 65536,
            ..TargetDefaults::default()
        };
        let mut n = neg(d, SessionType::Normal);
        let mut out = TextBuilder::new();
        n.process(
            &parse(b"InitiatorName=iqn.i\0").unwrap(),
            NegStage::Operational,
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert!(n.target_offers(&mut out));
        assert_eq!(
            out.as_bytes(),
            &b"HeaderDigest=CRC32C\0ImmediateData=No\0MaxBurstLength=65536\0MaxRecvDataSegmentLength=65536\0"[..]
        );
        assert!(n.awaiting_answers());
        assert_eq!(
            n.finish([0; 6], 1, 0),
            Err(NegotiationError::Unanswered("HeaderDigest".into()))
        );
        let mut out = TextBuilder::new();
        let bad = parse(b"MaxBurstLength=131072\0").unwrap();
        assert!(matches!(
            n.clone().process(&bad, NegStage::Operational, &mut out),
            Err(NegotiationError::BadAnswer(..))
        ));
        let kv = parse(b"HeaderDigest=CRC32C\0ImmediateData=No\0MaxBurstLength=32768\0").unwrap();
        n.process(&kv, NegStage::Operational, &mut out).unwrap();
        assert!(out.is_empty(), "answers are not answered");
        assert!(!n.awaiting_answers());
        assert!(!n.target_offers(&mut out));
        let p = n.finish([0; 6], 1, 0).unwrap();
        assert!(p.header_digest && !p.immediate_data);
        assert_eq!(p.max_burst_length, 32768);
        assert_eq!(p.first_burst_length, 32768);
        assert_eq!(p.max_recv_data_segment_length, 65536);
        assert_eq!(p.max_xmit_data_segment_length, 8192);
    }

    #[test]
    fn rejected_required_digest_fails() {
        let d = TargetDefaults {
            data_digest: DigestPolicy::Crc32cOnly,
            ..TargetDefaults::default()
        };
        let mut n = neg(d, SessionType::Normal);
        let mut out = TextBuilder::new();
        n.process(
            &parse(b"InitiatorName=iqn.i\0").unwrap(),
            NegStage::Operational,
            &mut out,
        )
        .unwrap();
        n.target_offers(&mut out);
        n.process(
            &parse(b"DataDigest=Reject\0").unwrap(),
            NegStage::Operational,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            n.finish([0; 6], 1, 0),
            Err(NegotiationError::NoAgreement("DataDigest".into()))
        );
    }

    #[test]
    fn defaults_when_nothing_negotiated() {
        let mut n = neg(TargetDefaults::default(), SessionType::Normal);
        let mut out = TextBuilder::new();
        n.process(
            &parse(b"InitiatorName=iqn.i\0").unwrap(),
            NegStage::Security,
            &mut out,
        )
        .unwrap();
        assert!(!n.target_offers(&mut out));
        assert_eq!(out.as_bytes(), b"MaxRecvDataSegmentLength=8192\0");
        let p = n.finish([1, 2, 3, 4, 5, 6], 7, 8).unwrap();
        assert_eq!(p.initiator_name, "iqn.i");
        assert_eq!(
            (
                p.max_burst_length,
                p.first_burst_length,
                p.max_xmit_data_segment_length
            ),
            (262144, 65536, 8192)
        );
        assert!(
            p.initial_r2t && p.immediate_data && p.data_pdu_in_order && p.data_sequence_in_order
        );
        assert!(!p.header_digest && !p.data_digest);
        assert_eq!(
            (
                p.default_time2wait,
                p.default_time2retain,
                p.error_recovery_level
            ),
            (2, 20, 0)
        );
        assert_eq!((p.max_connections, p.max_outstanding_r2t), (1, 1));
        assert_eq!((p.isid, p.tsih, p.cid), ([1, 2, 3, 4, 5, 6], 7, 8));
    }
}
