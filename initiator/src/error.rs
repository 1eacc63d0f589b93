//! The initiator's error type: everything that can go wrong on the transport
//! or in the protocol. A SCSI command that completes with a non-GOOD status
//! is *not* an error of [`crate::Connection::scsi`]; only the convenience
//! helpers (`read`, `write`, `inquiry`, ...) turn it into
//! [`Error::CheckCondition`].

use iscsi::PduError;

/// Errors of the initiator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed (connect refused, reset, broken pipe...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing (or not enough) arrived within the connection's timeout.
    #[error("timed out waiting for the target")]
    Timeout,
    /// The target closed the TCP connection.
    #[error("connection closed by the target")]
    Closed,
    /// A PDU from the target failed framing: bad digest or a data segment
    /// longer than the MaxRecvDataSegmentLength we declared.
    #[error("bad PDU from the target: {0}")]
    Pdu(#[from] PduError),
    /// The target broke a protocol rule (unexpected opcode, unknown ITT, data
    /// outside the buffer, out-of-order DataSN, ...). The text says which.
    #[error("protocol violation by the target: {0}")]
    Protocol(String),
    /// The Login Response carried a non-zero Status-Class (RFC 7143 §11.13.5):
    /// 1 redirect, 2 initiator error, 3 target error.
    #[error("login failed: status class {class:#04x}, detail {detail:#04x}")]
    LoginFailed {
        /// Status-Class.
        class: u8,
        /// Status-Detail.
        detail: u8,
    },
    /// Login text negotiation produced something we cannot live with (e.g.
    /// the target answered `Reject` to a key we require).
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    /// The target answered one of our PDUs with a Reject (RFC 7143 §11.17).
    #[error("PDU with ITT {itt:#x} rejected, reason {reason:#04x}")]
    Rejected {
        /// The Reject reason code.
        reason: u8,
        /// ITT of the rejected PDU, taken from the header echoed in the data segment.
        itt: u32,
    },
    /// A convenience helper's command completed with a non-GOOD SCSI status.
    #[error("SCSI status {status:#04x}, sense {sense:02x?}")]
    CheckCondition {
        /// SCSI status byte (e.g. 0x02 CHECK CONDITION).
        status: u8,
        /// Sense data (without the 2-byte SenseLength prefix).
        sense: Vec<u8>,
    },
    /// The SCSI Response's Response field was not "command completed at
    /// target" (RFC 7143 §11.4.3).
    #[error("iSCSI response {0:#04x} (target failure)")]
    ServiceResponse(u8),
    /// The caller asked for something this initiator does not do (CHAP,
    /// bidirectional commands, CDBs over 16 bytes, ...).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The caller misused the API (e.g. `complete` with nothing outstanding).
    #[error("usage error: {0}")]
    Usage(&'static str),
}

impl Error {
    /// Map a socket read/write error, folding the two timeout kinds into [`Error::Timeout`].
    pub(crate) fn from_io(e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout,
            std::io::ErrorKind::UnexpectedEof => Error::Closed,
            _ => Error::Io(e),
        }
    }
}
