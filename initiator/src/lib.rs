//! A small blocking iSCSI initiator (RFC 7143, ErrorRecoveryLevel 0) for
//! rtgt's integration tests, hostile-input tests and load generator.
//!
//! One [`Connection`] is one TCP connection of a single-connection session,
//! driven synchronously on a [`std::net::TcpStream`]. Every read is bounded
//! by the connection's timeout so a misbehaving target makes a test fail
//! with [`Error::Timeout`] instead of hanging.
//!
//! ```no_run
//! use initiator::{Connection, LoginOptions};
//! let opts = LoginOptions { target_name: Some("iqn.2026-11.test:disk1".into()), ..Default::default() };
//! let (mut c, _neg) = Connection::login("127.0.0.1:3260".parse().unwrap(), &opts).unwrap();
//! let (blocks, bs) = c.read_capacity16(1).unwrap();
//! let data = c.read(1, 0, 8, bs).unwrap();
//! c.logout(0).unwrap();
//! # let _ = (blocks, data);
//! ```

pub mod cdb;
mod conn;
mod error;
mod login;
pub mod text;
pub mod verify;

pub use conn::{Connection, ScsiResult, SessionParams};
pub use error::Error;
pub use iscsi::Residual;
pub use login::{LoginAttempt, LoginOptions, Negotiated};

/// Task management function codes (RFC 7143 §11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Logout reason codes (RFC 7143 §11.14.1).
pub mod logout_reason {
    pub const CLOSE_SESSION: u8 = 0;
    pub const CLOSE_CONNECTION: u8 = 1;
    pub const REMOVE_FOR_RECOVERY: u8 = 2;
}
