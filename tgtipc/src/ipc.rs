//! The wire format of tgt's management IPC (tgt 1.0.85, `usr/tgtadm.h`).
//!
//! A request is a fixed 120-byte header (`struct tgtadm_req`, host byte
//! order) followed by `len - 120` bytes of parameters: a comma-separated
//! `key=value` string ending in a NUL. A response is an 8-byte header
//! (`struct tgtadm_rsp`: `err`, `len`) followed, on success only, by
//! `len - 8` bytes of text ending in a NUL. One request per connection.
//!
//! Layout of the request header (offsets in bytes):
//!
//! | off | field | type |
//! | --- | --- | --- |
//! | 0 | mode | u32 (`enum tgtadm_mode`) |
//! | 4 | op | u32 (`enum tgtadm_op`) |
//! | 8 | lld | `char[64]`, NUL padded |
//! | 72 | len | u32, header plus parameters |
//! | 76 | tid | i32 (-1: none / global) |
//! | 80 | sid | u64 |
//! | 88 | lun | u64 (`u64::MAX`: none) |
//! | 96 | cid | u32 |
//! | 100 | host_no | u32 |
//! | 104 | device_type | u32 (SCSI peripheral type) |
//! | 108 | ac_dir | u32 (0 incoming, 1 outgoing) |
//! | 112 | pack | u32 |
//! | 116 | force | u32 |

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::request::{Mode, Op, Request};

/// Size of `struct tgtadm_req`.
pub const REQ_HDR_LEN: usize = 120;
/// Size of `struct tgtadm_rsp`.
pub const RSP_HDR_LEN: usize = 8;
/// Size of the `lld` field.
pub const LLD_NAME_LEN: usize = 64;
/// tgtd refuses request parameters larger than this (`MAX_MGT_BUFSIZE`).
pub const MAX_PARAMS_LEN: usize = 8 * 1024;
/// Largest response text we accept as a client (a full `show` of many
/// targets is large, but never near this).
pub const MAX_RESPONSE_LEN: usize = 64 * 1024 * 1024;
/// `GLOBAL_TID` (`~0U`), the tid of the discovery/global account binding.
pub const GLOBAL_TID: i32 = -1;

/// tgt's `enum tgtadm_errno` (`usr/tgtadm_error.h`); the discriminant is the
/// wire value of `tgtadm_rsp.err`. The message is the one the stock
/// `tgtadm` prints for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u32)]
pub enum TgtadmError {
    /// TGTADM_UNKNOWN_ERR: an error with no better code.
    #[error("unknown error")]
    UnknownErr = 1,
    /// TGTADM_NOMEM: allocation failed.
    #[error("out of memory")]
    NoMem = 2,
    /// TGTADM_NO_DRIVER: the `--lld` named no usable driver.
    #[error("can't find the driver")]
    NoDriver = 3,
    /// TGTADM_NO_TARGET: no target with that tid.
    #[error("can't find the target")]
    NoTarget = 4,
    /// TGTADM_NO_LUN: no logical unit with that number.
    #[error("can't find the logical unit")]
    NoLun = 5,
    /// TGTADM_NO_SESSION: no session with that sid.
    #[error("can't find the session")]
    NoSession = 6,
    /// TGTADM_NO_CONNECTION: no connection with that cid.
    #[error("can't find the connection")]
    NoConnection = 7,
    /// TGTADM_NO_BINDING: no host binding to remove.
    #[error("can't find the binding")]
    NoBinding = 8,
    /// TGTADM_TARGET_EXIST: the tid or the target name is taken.
    #[error("this target already exists")]
    TargetExist = 9,
    /// TGTADM_LUN_EXIST: the LUN is taken.
    #[error("this logical unit number already exists")]
    LunExist = 10,
    /// TGTADM_BINDING_EXIST: the host is already bound.
    #[error("this binding already exists")]
    BindingExist = 11,
    /// TGTADM_ACL_EXIST: the same ACL rule is already there.
    #[error("this access control rule already exists")]
    AclExist = 12,
    /// TGTADM_ACL_NOEXIST: no such ACL rule to remove.
    #[error("this access control rule does not exist")]
    AclNoexist = 13,
    /// TGTADM_USER_EXIST: the account (or its binding) already exists.
    #[error("this account already exists")]
    UserExist = 14,
    /// TGTADM_NO_USER: no such account (or it is not bound).
    #[error("can't find the account")]
    NoUser = 15,
    /// TGTADM_TOO_MANY_USER: no free account id.
    #[error("too many accounts")]
    TooManyUser = 16,
    /// TGTADM_INVALID_REQUEST: malformed or refused request.
    #[error("invalid request")]
    InvalidRequest = 17,
    /// TGTADM_OUTACCOUNT_EXIST: the target already has an outgoing account.
    #[error("this target already has an outgoing account")]
    OutaccountExist = 18,
    /// TGTADM_TARGET_ACTIVE: the target still has sessions.
    #[error("this target is still active")]
    TargetActive = 19,
    /// TGTADM_LUN_ACTIVE: the logical unit still has commands in flight.
    #[error("this logical unit is still active")]
    LunActive = 20,
    /// TGTADM_DRIVER_ACTIVE: the driver still has targets.
    #[error("this driver is busy")]
    DriverActive = 21,
    /// TGTADM_UNSUPPORTED_OPERATION: the operation is not supported.
    #[error("this operation isn't supported")]
    UnsupportedOperation = 22,
    /// TGTADM_UNKNOWN_PARAM: a parameter name is unknown.
    #[error("unknown parameter")]
    UnknownParam = 23,
    /// TGTADM_PREVENT_REMOVAL: an initiator set PREVENT ALLOW MEDIUM REMOVAL.
    #[error("this device has Prevent Removal set")]
    PreventRemoval = 24,
}

impl TgtadmError {
    /// All error codes, in wire order.
    pub const ALL: [TgtadmError; 24] = [
        Self::UnknownErr,
        Self::NoMem,
        Self::NoDriver,
        Self::NoTarget,
        Self::NoLun,
        Self::NoSession,
        Self::NoConnection,
        Self::NoBinding,
        Self::TargetExist,
        Self::LunExist,
        Self::BindingExist,
        Self::AclExist,
        Self::AclNoexist,
        Self::UserExist,
        Self::NoUser,
        Self::TooManyUser,
        Self::InvalidRequest,
        Self::OutaccountExist,
        Self::TargetActive,
        Self::LunActive,
        Self::DriverActive,
        Self::UnsupportedOperation,
        Self::UnknownParam,
        Self::PreventRemoval,
    ];

    /// The wire value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The error for a wire value; `None` for 0 (success) and unknown codes.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.code() == code)
    }
}

/// The message tgtadm prints for a wire error code (tgtadm's
/// `tgtadm_strerror`), including success and unknown codes.
pub fn strerror(code: u32) -> &'static str {
    match code {
        0 => "success",
        c => match TgtadmError::from_code(c) {
            Some(e) => e.message(),
            None => "(unknown tgtadm_errno)",
        },
    }
}

impl TgtadmError {
    /// The static message (same text as `Display`).
    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownErr => "unknown error",
            Self::NoMem => "out of memory",
            Self::NoDriver => "can't find the driver",
            Self::NoTarget => "can't find the target",
            Self::NoLun => "can't find the logical unit",
            Self::NoSession => "can't find the session",
            Self::NoConnection => "can't find the connection",
            Self::NoBinding => "can't find the binding",
            Self::TargetExist => "this target already exists",
            Self::LunExist => "this logical unit number already exists",
            Self::BindingExist => "this binding already exists",
            Self::AclExist => "this access control rule already exists",
            Self::AclNoexist => "this access control rule does not exist",
            Self::UserExist => "this account already exists",
            Self::NoUser => "can't find the account",
            Self::TooManyUser => "too many accounts",
            Self::InvalidRequest => "invalid request",
            Self::OutaccountExist => "this target already has an outgoing account",
            Self::TargetActive => "this target is still active",
            Self::LunActive => "this logical unit is still active",
            Self::DriverActive => "this driver is busy",
            Self::UnsupportedOperation => "this operation isn't supported",
            Self::UnknownParam => "unknown parameter",
            Self::PreventRemoval => "this device has Prevent Removal set",
        }
    }
}

/// Why a request or response could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket failed or closed early.
    #[error("management socket: {0}")]
    Io(#[from] io::Error),
    /// The header's `len` is smaller than the header itself.
    #[error("request length {0} is shorter than the header")]
    ShortLength(u32),
    /// The parameters are larger than tgtd accepts (`MAX_MGT_BUFSIZE`).
    #[error("request parameters of {0} bytes are too large")]
    TooLarge(u32),
    /// A response header's `len` is shorter than the response header.
    #[error("response length {0} is shorter than the header")]
    BadResponseLength(u32),
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

/// The decoded fixed header of a request; `len` says how many parameter
/// bytes follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// `mode` as sent.
    pub mode: u32,
    /// `op` as sent.
    pub op: u32,
    /// `lld`, up to its first NUL (at most 63 bytes, as tgtd truncates).
    pub lld: String,
    /// Header plus parameter length.
    pub len: u32,
    /// Target id, -1 for none/global.
    pub tid: i32,
    /// Session id (TSIH for iSCSI).
    pub sid: u64,
    /// Logical unit number, `u64::MAX` for none.
    pub lun: u64,
    /// Connection id.
    pub cid: u32,
    /// SCSI host number (host bindings; unused by iSCSI).
    pub host_no: u32,
    /// SCSI peripheral device type (0 disk).
    pub device_type: u32,
    /// Account direction: 0 incoming, 1 outgoing.
    pub ac_dir: u32,
    /// Unused by tgt 1.0.85.
    pub pack: u32,
    /// Non-zero for `--force`.
    pub force: u32,
}

impl RequestHeader {
    /// Decode the 120 header bytes. Never fails: every bit pattern is a
    /// header; [`RequestHeader::params_len`] validates `len`.
    pub fn decode(b: &[u8; REQ_HDR_LEN]) -> Self {
        let lld_raw = &b[8..8 + LLD_NAME_LEN - 1];
        let end = lld_raw
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(lld_raw.len());
        RequestHeader {
            mode: u32_at(b, 0),
            op: u32_at(b, 4),
            lld: String::from_utf8_lossy(&lld_raw[..end]).into_owned(),
            len: u32_at(b, 72),
            tid: u32_at(b, 76) as i32,
            sid: u64_at(b, 80),
            lun: u64_at(b, 88),
            cid: u32_at(b, 96),
            host_no: u32_at(b, 100),
            device_type: u32_at(b, 104),
            ac_dir: u32_at(b, 108),
            pack: u32_at(b, 112),
            force: u32_at(b, 116),
        }
    }

    /// Encode into the 120 header bytes (the `lld` is truncated to 63
    /// bytes plus NUL, as `strncpy` into the field followed by tgtd's
    /// termination would leave it).
    pub fn encode(&self) -> [u8; REQ_HDR_LEN] {
        let mut b = [0u8; REQ_HDR_LEN];
        b[0..4].copy_from_slice(&self.mode.to_ne_bytes());
        b[4..8].copy_from_slice(&self.op.to_ne_bytes());
        let lld = self.lld.as_bytes();
        let n = lld.len().min(LLD_NAME_LEN);
        b[8..8 + n].copy_from_slice(&lld[..n]);
        b[72..76].copy_from_slice(&self.len.to_ne_bytes());
        b[76..80].copy_from_slice(&self.tid.to_ne_bytes());
        b[80..88].copy_from_slice(&self.sid.to_ne_bytes());
        b[88..96].copy_from_slice(&self.lun.to_ne_bytes());
        b[96..100].copy_from_slice(&self.cid.to_ne_bytes());
        b[100..104].copy_from_slice(&self.host_no.to_ne_bytes());
        b[104..108].copy_from_slice(&self.device_type.to_ne_bytes());
        b[108..112].copy_from_slice(&self.ac_dir.to_ne_bytes());
        b[112..116].copy_from_slice(&self.pack.to_ne_bytes());
        b[116..120].copy_from_slice(&self.force.to_ne_bytes());
        b
    }

    /// How many parameter bytes follow, checked against tgtd's limits.
    pub fn params_len(&self) -> Result<usize, IpcError> {
        let len = self.len as usize;
        if len < REQ_HDR_LEN {
            return Err(IpcError::ShortLength(self.len));
        }
        let n = len - REQ_HDR_LEN;
        if n > MAX_PARAMS_LEN {
            return Err(IpcError::TooLarge(self.len));
        }
        Ok(n)
    }
}

/// The parameter string in a request body: the bytes up to the first NUL.
pub fn params_from_body(body: &[u8]) -> String {
    let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// Build a typed request from a header and its parameter bytes.
pub fn request_from_parts(h: &RequestHeader, body: &[u8]) -> Request {
    Request {
        mode: Mode::from_raw(h.mode),
        op: Op::from_raw(h.op),
        lld: h.lld.clone(),
        tid: h.tid,
        sid: h.sid,
        lun: h.lun,
        cid: h.cid,
        host_no: h.host_no,
        device_type: h.device_type,
        ac_dir: h.ac_dir,
        force: h.force != 0,
        params: params_from_body(body),
    }
}

/// Decode a whole request held in memory (header plus parameters).
pub fn decode_request(buf: &[u8]) -> Result<Request, IpcError> {
    if buf.len() < REQ_HDR_LEN {
        return Err(IpcError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    let mut hdr = [0u8; REQ_HDR_LEN];
    hdr.copy_from_slice(&buf[..REQ_HDR_LEN]);
    let h = RequestHeader::decode(&hdr);
    let n = h.params_len()?;
    if buf.len() < REQ_HDR_LEN + n {
        return Err(IpcError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(request_from_parts(&h, &buf[REQ_HDR_LEN..REQ_HDR_LEN + n]))
}

/// Encode a request as tgtadm does: the parameters are followed by a NUL
/// when they are not empty, and `len` counts header plus those bytes.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let body_len = if req.params.is_empty() {
        0
    } else {
        req.params.len() + 1
    };
    let h = RequestHeader {
        mode: req.mode.raw(),
        op: req.op.raw(),
        lld: req.lld.clone(),
        len: (REQ_HDR_LEN + body_len) as u32,
        tid: req.tid,
        sid: req.sid,
        lun: req.lun,
        cid: req.cid,
        host_no: req.host_no,
        device_type: req.device_type,
        ac_dir: req.ac_dir,
        pack: 0,
        force: req.force as u32,
    };
    let mut out = Vec::with_capacity(REQ_HDR_LEN + body_len);
    out.extend_from_slice(&h.encode());
    if body_len > 0 {
        out.extend_from_slice(req.params.as_bytes());
        out.push(0);
    }
    out
}

/// Encode a response as tgtd does: on success the text (if any) follows
/// with a trailing NUL; on error no text is sent.
pub fn encode_response(result: &Result<String, TgtadmError>) -> Vec<u8> {
    let (err, text): (u32, &[u8]) = match result {
        Ok(t) => (0, t.as_bytes()),
        Err(e) => (e.code(), &[]),
    };
    let body_len = if text.is_empty() { 0 } else { text.len() + 1 };
    let mut out = Vec::with_capacity(RSP_HDR_LEN + body_len);
    out.extend_from_slice(&err.to_ne_bytes());
    out.extend_from_slice(&((RSP_HDR_LEN + body_len) as u32).to_ne_bytes());
    if body_len > 0 {
        out.extend_from_slice(text);
        out.push(0);
    }
    out
}

/// Read one request from a management connection. The parameter length is
/// checked before anything is allocated for it.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Request, IpcError> {
    let mut hdr = [0u8; REQ_HDR_LEN];
    stream.read_exact(&mut hdr).await?;
    let h = RequestHeader::decode(&hdr);
    let n = h.params_len()?;
    let mut body = vec![0u8; n];
    stream.read_exact(&mut body).await?;
    Ok(request_from_parts(&h, &body))
}

/// Write the response for a handled request.
pub async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    result: &Result<String, TgtadmError>,
) -> Result<(), IpcError> {
    stream.write_all(&encode_response(result)).await?;
    stream.flush().await?;
    Ok(())
}

/// A response as read by a client: the error code and, on success, the
/// text up to its NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `tgtadm_rsp.err` (0 on success).
    pub err: u32,
    /// The text (empty when none or on error).
    pub text: String,
}

/// Read a response (client side, blocking std I/O), as tgtadm does: the
/// text is read only on success.
pub fn read_response_blocking<R: io::Read>(r: &mut R) -> Result<Response, IpcError> {
    let mut hdr = [0u8; RSP_HDR_LEN];
    r.read_exact(&mut hdr)?;
    let err = u32_at(&hdr, 0);
    let len = u32_at(&hdr, 4) as usize;
    if err != 0 {
        return Ok(Response {
            err,
            text: String::new(),
        });
    }
    if len < RSP_HDR_LEN {
        return Err(IpcError::BadResponseLength(len as u32));
    }
    let n = len - RSP_HDR_LEN;
    if n > MAX_RESPONSE_LEN {
        return Err(IpcError::BadResponseLength(len as u32));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(Response {
        err,
        text: params_from_body(&body),
    })
}
