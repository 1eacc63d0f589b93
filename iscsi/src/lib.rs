//! Sans-I/O iSCSI target protocol (RFC 7143, ErrorRecoveryLevel 0).
//!
//! Nothing here touches a socket, a thread or the clock: the daemon feeds
//! bytes and events in and asks what to send.

pub mod datain;
pub mod digest;
pub mod pdu;
pub mod serial;
pub mod session;
pub mod status;
pub mod transfer;
pub mod window;

pub use pdu::{Bhs, Digests, Itt, Opcode, Pdu, PduError, Residual, Ttt};
pub use serial::{CmdSn, StatSn};
pub mod discovery;
pub mod login;
pub mod params;
pub mod text;

pub use discovery::{send_targets, TargetEntry, TextExchange, TextHost, TextStep};
pub use login::{
    AuthRequirement, Login, LoginConfig, LoginHost, LoginRequestInfo, LoginStatus, LoginStep,
    Redirect, TargetLoginInfo,
};
pub use params::{DigestPolicy, SessionParams, SessionType, TargetDefaults};
pub mod chap;

pub use chap::{ChapAccounts, ChapAlgorithm, ChapCredentials, ChapServer};
