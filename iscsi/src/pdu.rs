//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment as a typed
//! view over bytes, framing of whole PDUs from a byte stream, and builders for
//! every PDU a target sends.
//!
//! Framing follows mini-redis: [`frame_len`] first checks that a whole PDU is
//! buffered (and that its lengths are within the negotiated limits) before
//! anything is allocated or parsed.

use crate::digest::crc32c;
use crate::serial::{CmdSn, StatSn};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Opcodes (RFC 7143 §11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOpReject = 0x0a,
    WaitingForLogout = 0x0c,
}

/// The Initiator Task Tag, opaque to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Itt(pub u32);

/// The Target Transfer Tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ttt(pub u32);

/// The reserved tag value (RFC 7143 §11.18.4 / §11.19.3).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// A 48-byte Basic Header Segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &format_args!("{:#04x}", self.raw_opcode()))
            .field("flags", &format_args!("{:#04x}", self.0[1]))
            .field("itt", &format_args!("{:#x}", self.itt().0))
            .field("dlen", &self.data_len())
            .finish()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl Bhs {
    pub fn new(op: Opcode) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = op as u8;
        b
    }
    pub fn raw_opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.0[0])
    }
    /// The I bit: an immediate command (RFC 7143 §11.2.1.1).
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    /// The F (final) bit.
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    pub fn set_flags(&mut self, f: u8) {
        self.0[1] = f;
    }
    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_len(&self) -> usize {
        (self.0[5] as usize) << 16 | (self.0[6] as usize) << 8 | self.0[7] as usize
    }
    pub fn set_data_len(&mut self, n: usize) {
        debug_assert!(n < 1 << 24);
        self.0[5] = (n >> 16) as u8;
        self.0[6] = (n >> 8) as u8;
        self.0[7] = n as u8;
    }
    /// Bytes 8..16 as a raw big-endian LUN field.
    pub fn lun_raw(&self) -> u64 {
        u64::from_be_bytes(self.0[8..16].try_into().unwrap())
    }
    pub fn set_lun_raw(&mut self, v: u64) {
        self.0[8..16].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> Itt {
        Itt(self.u32_at(16))
    }
    pub fn set_itt(&mut self, itt: Itt) {
        self.set_u32_at(16, itt.0);
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        be32(&self.0, at)
    }
    pub fn set_u32_at(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn set_u16_at(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    // ---- Fields shared by initiator requests (RFC 7143 §11.3 etc.) ----

    /// CmdSN at bytes 24..28 of every request but Data-Out.
    pub fn cmd_sn(&self) -> CmdSn {
        CmdSn(self.u32_at(24))
    }
    /// ExpStatSN at bytes 28..32 of every request.
    pub fn exp_stat_sn(&self) -> StatSn {
        StatSn(self.u32_at(28))
    }
    /// TTT at bytes 20..24 (NOP-Out, Data-Out, Text, SNACK).
    pub fn ttt(&self) -> Ttt {
        Ttt(self.u32_at(20))
    }

    // ---- SCSI Command (RFC 7143 §11.3) ----

    /// R bit: data flows to the initiator.
    pub fn cmd_read(&self) -> bool {
        self.0[1] & 0x40 != 0
    }
    /// W bit: data flows to the target.
    pub fn cmd_write(&self) -> bool {
        self.0[1] & 0x20 != 0
    }
    /// Task attribute (ATTR, 3 bits).
    pub fn cmd_attr(&self) -> u8 {
        self.0[1] & 0x07
    }
    pub fn expected_data_len(&self) -> u32 {
        self.u32_at(20)
    }
    pub fn cdb(&self) -> &[u8] {
        &self.0[32..48]
    }

    // ---- Data-Out (RFC 7143 §11.7) ----
    pub fn data_sn(&self) -> u32 {
        self.u32_at(36)
    }
    pub fn buffer_offset(&self) -> u32 {
        self.u32_at(40)
    }

    // ---- Login request (RFC 7143 §11.12) ----
    pub fn login_transit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    pub fn login_continue(&self) -> bool {
        self.0[1] & 0x40 != 0
    }
    pub fn login_csg(&self) -> u8 {
        (self.0[1] >> 2) & 3
    }
    pub fn login_nsg(&self) -> u8 {
        self.0[1] & 3
    }
    pub fn version_max(&self) -> u8 {
        self.0[2]
    }
    pub fn version_min(&self) -> u8 {
        self.0[3]
    }
    /// The 6-byte ISID.
    pub fn isid(&self) -> [u8; 6] {
        self.0[8..14].try_into().unwrap()
    }
    pub fn tsih(&self) -> u16 {
        self.u16_at(14)
    }
    pub fn cid(&self) -> u16 {
        self.u16_at(20)
    }

    // ---- Task management (RFC 7143 §11.5) ----
    pub fn tmf_function(&self) -> u8 {
        self.0[1] & 0x7f
    }
    pub fn tmf_referenced_task(&self) -> Itt {
        Itt(self.u32_at(20))
    }
    pub fn tmf_ref_cmd_sn(&self) -> CmdSn {
        CmdSn(self.u32_at(32))
    }

    // ---- Logout (RFC 7143 §11.14) ----
    pub fn logout_reason(&self) -> u8 {
        self.0[1] & 0x7f
    }
    pub fn logout_cid(&self) -> u16 {
        self.u16_at(20)
    }

    // ---- Target-side sequence fields (responses) ----
    pub fn set_stat_sn(&mut self, v: StatSn) {
        self.set_u32_at(24, v.0);
    }
    pub fn stat_sn(&self) -> StatSn {
        StatSn(self.u32_at(24))
    }
    pub fn set_exp_cmd_sn(&mut self, v: CmdSn) {
        self.set_u32_at(28, v.0);
    }
    pub fn exp_cmd_sn(&self) -> CmdSn {
        CmdSn(self.u32_at(28))
    }
    pub fn set_max_cmd_sn(&mut self, v: CmdSn) {
        self.set_u32_at(32, v.0);
    }
    pub fn max_cmd_sn(&self) -> CmdSn {
        CmdSn(self.u32_at(32))
    }
}

/// The LUN a LUN field addresses (SAM-5 §4.7: peripheral and flat
/// addressing, as Linux and tgt use them). Anything else maps to
/// `u64::MAX`, a LUN that never exists.
pub fn decode_lun(raw: u64) -> u64 {
    let b = raw.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return u64::MAX;
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => b[1] as u64,
        1 => (((b[0] & 0x3f) as u64) << 8) | b[1] as u64,
        _ => u64::MAX,
    }
}

/// A whole PDU. `data` holds the data segment without padding or digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

/// Framing and header errors; each maps to a wire answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    /// The header digest did not match: the PDU must be discarded (ERL0: the
    /// connection is dropped, RFC 7143 §7.8).
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest did not match: answer with Reject (reason 0x02).
    #[error("data digest mismatch")]
    DataDigest,
    /// The data segment exceeds what we declared we can receive: protocol
    /// error, Reject and drop (RFC 7143 §13.12).
    #[error("data segment of {0} bytes exceeds the limit of {1}")]
    DataTooLong(usize, usize),
    /// AHS longer than we accept.
    #[error("AHS of {0} bytes exceeds the limit")]
    AhsTooLong(usize),
}

/// Digests in force on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Largest AHS we accept (extended CDB + bidirectional read length fit easily).
pub const MAX_AHS: usize = 1024;

const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Given at least [`BHS_LEN`] buffered bytes, the total length of the PDU on the
/// wire, checking the header's lengths against `max_data` first so that no
/// allocation follows from an unchecked length field.
pub fn frame_len(bhs: &Bhs, dg: Digests, max_data: usize) -> Result<usize, PduError> {
    let ahs = bhs.ahs_len();
    if ahs > MAX_AHS {
        return Err(PduError::AhsTooLong(ahs));
    }
    let dlen = bhs.data_len();
    if dlen > max_data {
        return Err(PduError::DataTooLong(dlen, max_data));
    }
    let mut n = BHS_LEN + ahs;
    if dg.header {
        n += 4;
    }
    if dlen > 0 {
        n += pad4(dlen);
        if dg.data {
            n += 4;
        }
    }
    Ok(n)
}

/// Try to take one whole PDU off the front of `buf`. `Ok(None)`: need more bytes.
/// On success returns the PDU and the number of bytes it took.
pub fn decode(buf: &[u8], dg: Digests, max_data: usize) -> Result<Option<(Pdu, usize)>, PduError> {
    Ok(decode_view(buf, dg, max_data)?.map(|(v, n)| (v.to_pdu(buf), n)))
}

/// A whole PDU found in a buffer, by position: lets the receiver copy a
/// Data-Out segment straight into the command's buffer, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PduView {
    pub bhs: Bhs,
    /// Where the AHS lies in the buffer given to [`decode_view`].
    pub ahs: std::ops::Range<usize>,
    /// Where the data segment lies (without padding and digest).
    pub data: std::ops::Range<usize>,
}

impl PduView {
    /// An owned copy, from the buffer the view was decoded from.
    pub fn to_pdu(&self, buf: &[u8]) -> Pdu {
        Pdu {
            bhs: self.bhs,
            ahs: buf[self.ahs.clone()].to_vec(),
            data: buf[self.data.clone()].to_vec(),
        }
    }
}

/// The header of the PDU at the front of `buf`, once its BHS, AHS and
/// header digest have arrived (its data may not have): lengths checked
/// against the limits and the header digest verified. Returns the BHS,
/// the header's length on the wire (BHS, AHS, digest), and the whole
/// frame's length. Lets a receiver read a large data segment straight
/// into its final buffer.
pub fn decode_header(
    buf: &[u8],
    dg: Digests,
    max_data: usize,
) -> Result<Option<(Bhs, usize, usize)>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let bhs = Bhs(buf[..BHS_LEN].try_into().unwrap());
    let total = frame_len(&bhs, dg, max_data)?;
    let mut hlen = BHS_LEN + bhs.ahs_len();
    if buf.len() < hlen + if dg.header { 4 } else { 0 } {
        return Ok(None);
    }
    if dg.header {
        let want = u32::from_le_bytes(buf[hlen..hlen + 4].try_into().unwrap());
        if crc32c(&buf[..hlen]) != want {
            return Err(PduError::HeaderDigest);
        }
        hlen += 4;
    }
    Ok(Some((bhs, hlen, total)))
}

/// Like [`decode`], without copying: the PDU's parts as ranges of `buf`.
/// Digests are checked before the view is returned.
pub fn decode_view(
    buf: &[u8],
    dg: Digests,
    max_data: usize,
) -> Result<Option<(PduView, usize)>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let bhs = Bhs(buf[..BHS_LEN].try_into().unwrap());
    let total = frame_len(&bhs, dg, max_data)?;
    if buf.len() < total {
        return Ok(None);
    }
    let ahs_len = bhs.ahs_len();
    let mut at = BHS_LEN + ahs_len;
    if dg.header {
        let want = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
        if crc32c(&buf[..at]) != want {
            return Err(PduError::HeaderDigest);
        }
        at += 4;
    }
    let dlen = bhs.data_len();
    if dlen > 0 && dg.data {
        let padded = pad4(dlen);
        let want = u32::from_le_bytes(buf[at + padded..at + padded + 4].try_into().unwrap());
        if crc32c(&buf[at..at + padded]) != want {
            return Err(PduError::DataDigest);
        }
    }
    Ok(Some((
        PduView {
            bhs,
            ahs: BHS_LEN..BHS_LEN + ahs_len,
            data: at..at + dlen,
        },
        total,
    )))
}

impl Pdu {
    pub fn new(bhs: Bhs) -> Pdu {
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn with_data(mut bhs: Bhs, data: Vec<u8>) -> Pdu {
        bhs.set_data_len(data.len());
        Pdu {
            bhs,
            ahs: Vec::new(),
            data,
        }
    }

    /// Serialise the whole PDU (padding and digests included).
    pub fn encode(&self, dg: Digests) -> Vec<u8> {
        let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + 8 + pad4(self.data.len()) + 4);
        encode_header(&self.bhs, &self.ahs, dg, &mut out);
        encode_data(&self.data, dg, &mut out);
        out
    }
}

/// Append BHS, AHS and header digest. The BHS's TotalAHSLength and
/// DataSegmentLength must already be set.
pub fn encode_header(bhs: &Bhs, ahs: &[u8], dg: Digests, out: &mut Vec<u8>) {
    let start = out.len();
    let mut b = *bhs;
    b.0[4] = (ahs.len() / 4) as u8;
    out.extend_from_slice(&b.0);
    out.extend_from_slice(ahs);
    if dg.header {
        let c = crc32c(&out[start..]);
        out.extend_from_slice(&c.to_le_bytes());
    }
}

/// Append a data segment with its padding and data digest.
pub fn encode_data(data: &[u8], dg: Digests, out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(data);
    let pad = pad4(data.len()) - data.len();
    out.extend_from_slice(&[0u8; 3][..pad]);
    if dg.data {
        let c = crate::digest::crc32c_append(crc32c(data), &[0u8; 3][..pad]);
        out.extend_from_slice(&c.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------
// Builders for target PDUs. Sequence numbers (StatSN, ExpCmdSN, MaxCmdSN) are
// stamped by the connection when the PDU is sent, so builders leave them 0.
// ---------------------------------------------------------------------------

/// SCSI Response (RFC 7143 §11.4).
pub fn scsi_response(itt: Itt, status: u8, residual: Residual, sense: &[u8]) -> Pdu {
    let mut b = Bhs::new(Opcode::ScsiResponse);
    let mut flags = 0x80;
    match residual {
        Residual::None => {}
        Residual::Overflow(n) => {
            flags |= 0x04;
            b.set_u32_at(44, n);
        }
        Residual::Underflow(n) => {
            flags |= 0x02;
            b.set_u32_at(44, n);
        }
    }
    b.set_flags(flags);
    b.0[2] = 0; // response: command completed at target
    b.0[3] = status;
    b.set_itt(itt);
    // SNACK tag (20..24) is reserved at ERL0 and stays 0.
    let data = if sense.is_empty() {
        Vec::new()
    } else {
        // Sense data is preceded by its 2-byte length (RFC 7143 §11.4.7.2).
        let mut d = Vec::with_capacity(2 + sense.len());
        d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
        d.extend_from_slice(sense);
        d
    };
    Pdu::with_data(b, data)
}

/// Residual count of a command (RFC 7143 §11.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    Overflow(u32),
    Underflow(u32),
}

/// Header of a Data-In PDU (RFC 7143 §11.7); the data segment is sent
/// separately so a read buffer can go out without a copy. With `status`
/// the PDU carries the command's final status (S bit, and F).
pub fn data_in_header(
    itt: Itt,
    lun_raw: u64,
    data_sn: u32,
    offset: u32,
    len: usize,
    last: bool,
    status: Option<(u8, Residual)>,
) -> Bhs {
    let mut b = Bhs::new(Opcode::DataIn);
    let mut flags = if last { 0x80 } else { 0 };
    if let Some((st, res)) = status {
        flags |= 0x01;
        b.0[3] = st;
        match res {
            Residual::None => {}
            Residual::Overflow(n) => {
                flags |= 0x04;
                b.set_u32_at(44, n);
            }
            Residual::Underflow(n) => {
                flags |= 0x02;
                b.set_u32_at(44, n);
            }
        }
    }
    b.set_flags(flags);
    b.set_data_len(len);
    b.set_lun_raw(lun_raw);
    b.set_itt(itt);
    b.set_u32_at(20, RESERVED_TAG);
    b.set_u32_at(36, data_sn);
    b.set_u32_at(40, offset);
    b
}

/// R2T (RFC 7143 §11.8).
pub fn r2t(itt: Itt, lun_raw: u64, ttt: Ttt, r2t_sn: u32, offset: u32, len: u32) -> Pdu {
    let mut b = Bhs::new(Opcode::R2t);
    b.set_flags(0x80);
    b.set_lun_raw(lun_raw);
    b.set_itt(itt);
    b.set_u32_at(20, ttt.0);
    b.set_u32_at(36, r2t_sn);
    b.set_u32_at(40, offset);
    b.set_u32_at(44, len);
    Pdu::new(b)
}

/// NOP-In (RFC 7143 §11.19): an answer to a NOP-Out (itt = its ITT, ttt
/// reserved) or a ping of our own (itt reserved, ttt ours).
pub fn nop_in(itt: Itt, ttt: Ttt, lun_raw: u64, data: Vec<u8>) -> Pdu {
    let mut b = Bhs::new(Opcode::NopIn);
    b.set_flags(0x80);
    b.set_lun_raw(lun_raw);
    b.set_itt(itt);
    b.set_u32_at(20, ttt.0);
    Pdu::with_data(b, data)
}

/// Task Management Function Response (RFC 7143 §11.6).
pub fn tmf_response(itt: Itt, response: u8) -> Pdu {
    let mut b = Bhs::new(Opcode::TaskMgmtResponse);
    b.set_flags(0x80);
    b.0[2] = response;
    b.set_itt(itt);
    Pdu::new(b)
}

/// Logout Response (RFC 7143 §11.15).
pub fn logout_response(itt: Itt, response: u8, time2wait: u16, time2retain: u16) -> Pdu {
    let mut b = Bhs::new(Opcode::LogoutResponse);
    b.set_flags(0x80);
    b.0[2] = response;
    b.set_itt(itt);
    b.set_u16_at(40, time2wait);
    b.set_u16_at(42, time2retain);
    Pdu::new(b)
}

/// Reject (RFC 7143 §11.17): the data segment carries the offending header.
pub fn reject(reason: RejectReason, bad: &Bhs) -> Pdu {
    let mut b = Bhs::new(Opcode::Reject);
    b.set_flags(0x80);
    b.0[2] = reason as u8;
    b.set_itt(Itt(RESERVED_TAG));
    Pdu::with_data(b, bad.0.to_vec())
}

/// Text Response (RFC 7143 §11.11).
pub fn text_response(
    itt: Itt,
    ttt: Ttt,
    final_: bool,
    continue_: bool,
    lun_raw: u64,
    data: Vec<u8>,
) -> Pdu {
    let mut b = Bhs::new(Opcode::TextResponse);
    b.set_flags(if final_ { 0x80 } else { 0 } | if continue_ { 0x40 } else { 0 });
    b.set_lun_raw(lun_raw);
    b.set_itt(itt);
    b.set_u32_at(20, ttt.0);
    Pdu::with_data(b, data)
}

/// Asynchronous Message (RFC 7143 §11.9), e.g. event 1 "logout requested".
pub fn async_message(event: u8, param1: u16, param2: u16, param3: u16) -> Pdu {
    let mut b = Bhs::new(Opcode::AsyncMessage);
    b.set_flags(0x80);
    b.set_itt(Itt(RESERVED_TAG));
    b.0[36] = event;
    b.set_u16_at(38, param1);
    b.set_u16_at(40, param2);
    b.set_u16_at(42, param3);
    Pdu::new(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_decoding() {
        assert_eq!(decode_lun(0), 0);
        assert_eq!(decode_lun(0x0001_0000_0000_0000), 1);
        assert_eq!(decode_lun(0x4101_0000_0000_0000), 0x101);
        assert_eq!(decode_lun(0x0001_0000_0000_0001), u64::MAX);
        assert_eq!(decode_lun(0x8000_0000_0000_0000), u64::MAX);
    }

    #[test]
    fn roundtrip_with_digests() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut b = Bhs::new(Opcode::NopOut);
        b.set_itt(Itt(7));
        let p = Pdu::with_data(b, b"hello".to_vec());
        let wire = p.encode(dg);
        assert_eq!(wire.len(), 48 + 4 + 8 + 4);
        let (q, n) = decode(&wire, dg, 8192).unwrap().unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(q, p);
        // partial input asks for more
        assert_eq!(decode(&wire[..wire.len() - 1], dg, 8192).unwrap(), None);
    }

    #[test]
    fn corrupt_digests_are_detected() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let p = Pdu::with_data(Bhs::new(Opcode::NopOut), vec![1, 2, 3, 4]);
        let mut wire = p.encode(dg);
        wire[53] ^= 1;
        assert_eq!(decode(&wire, dg, 8192), Err(PduError::DataDigest));
        wire[53] ^= 1;
        wire[3] ^= 1;
        assert_eq!(decode(&wire, dg, 8192), Err(PduError::HeaderDigest));
    }

    #[test]
    fn oversized_data_is_refused_before_allocation() {
        let mut b = Bhs::new(Opcode::ScsiCommand);
        b.set_data_len(0xff_ffff);
        assert_eq!(
            decode(&b.0, Digests::default(), 8192),
            Err(PduError::DataTooLong(0xff_ffff, 8192))
        );
    }

    #[test]
    fn scsi_response_carries_sense_length() {
        let p = scsi_response(Itt(1), 2, Residual::Underflow(512), &[0x70, 0, 5]);
        assert_eq!(p.bhs.flags(), 0x82);
        assert_eq!(p.bhs.u32_at(44), 512);
        assert_eq!(p.data, vec![0, 3, 0x70, 0, 5]);
    }
}
