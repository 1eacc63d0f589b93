//! `rtgt-admin`: tgt-admin's job (Debian's `/usr/sbin/tgt-admin`, tgt
//! 1.0.85) done in Rust. It reads a `targets.conf` with the same grammar
//! ([`conf`]), decides what to do with the same rules, and sends the same
//! management requests in the same order, straight over tgt's IPC
//! ([`tgtadm`]) instead of by running `tgtadm` for each one.
//!
//! - [`conf`]: the Config::General-compatible reader, with file:line.
//! - [`validate`]: config checks done before anything is applied.
//! - [`engine`]: tgt-admin's actions (`-e`, `--update`, `--delete`,
//!   `--offline`/`--ready`, `-s`, `--dump`).
//! - [`cli`]: tgtadm's command line (rtgtadm's parser too).
//! - [`tgtadm`]: tgtadm command lines to requests, and the IPC client.

pub mod cli;
pub mod conf;
pub mod engine;
pub mod tgtadm;
pub mod validate;

pub use engine::{Admin, Exit, Options};
