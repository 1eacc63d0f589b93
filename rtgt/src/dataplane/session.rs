//! A session as its target loop holds it: the protocol machine
//! ([`iscsi::session::Session`]) and the drivers of its connections (MC/S).
//! Only the loop's thread touches it.

use std::cell::RefCell;
use std::rc::Rc;

use iscsi::session::{self as proto, Accounting, ConnId};
use iscsi::CmdSn;
use scsi::NexusId;

use super::conn::ConnHandle;
use super::LunIo;

/// Negotiated values that hold for the whole session.
#[derive(Debug, Clone)]
pub struct SessionSetup {
    pub tsih: u16,
    pub nexus: NexusId,
    pub isid: [u8; 6],
    pub initiator: String,
    /// First CmdSN expected after login.
    pub exp_cmd_sn: CmdSn,
    /// tgt's MaxQueueCmd: commands in flight per session.
    pub queue_depth: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Most bytes of write commands still collecting Data-Out on one
/// connection (four maximum-size commands).
const WRITE_BUDGET: u64 = 4 * scsi::MAX_TRANSFER_BYTES;

pub struct Session {
    pub setup: SessionSetup,
    /// The protocol state: window, tasks, connections' sequence numbers.
    /// Borrowed only for the length of one call, never across an await.
    pub m: RefCell<proto::Session>,
    pub conns: RefCell<Vec<Rc<ConnHandle>>>,
    /// Changes to state a store shares with other gateways that must be
    /// made before this session is answered again (a reset, a logout that
    /// releases an SPC-2 reservation): the other gateways' initiators may
    /// act the moment ours has its answer.
    pub holds: RefCell<Vec<tokio::sync::oneshot::Receiver<()>>>,
}

impl Session {
    pub fn new(setup: SessionSetup) -> Rc<Session> {
        let m = proto::Session::new(proto::SessionConfig {
            exp_cmd_sn: setup.exp_cmd_sn,
            queue_depth: setup.queue_depth,
            time2wait: setup.time2wait,
            time2retain: setup.time2retain,
            max_transfer: scsi::MAX_TRANSFER_BYTES.min(u32::MAX as u64) as u32,
            write_budget: WRITE_BUDGET,
            discovery: false,
        });
        Rc::new(Session {
            setup,
            m: RefCell::new(m),
            conns: RefCell::new(Vec::new()),
            holds: RefCell::new(Vec::new()),
        })
    }

    pub fn handle(&self, id: ConnId) -> Option<Rc<ConnHandle>> {
        self.conns.borrow().iter().find(|c| c.id == id).cloned()
    }

    /// Wake the drivers of connections with something new to send (all
    /// but `except`, which is about to look anyway).
    pub fn wake(&self, except: Option<ConnId>) {
        loop {
            let next = self.m.borrow_mut().poll_wake(except);
            let Some(id) = next else { break };
            if let Some(h) = self.handle(id) {
                h.wake();
            }
        }
    }

    /// Ask every connection to close.
    pub fn close(&self) {
        self.m.borrow_mut().close_all();
        self.wake(None);
    }

    /// Count a finished command on its connection, its session and its
    /// LUN. Returns which latency kind it is (Data-In: a read, Data-Out:
    /// a write), `None` if nothing was accounted (an aborted command).
    pub fn record(
        &self,
        acct: Option<Accounting>,
        target: &crate::stats::Counters,
        io: Option<&LunIo>,
    ) -> Option<crate::stats::Kind> {
        let a = acct?;
        if let Some(h) = self.conns.borrow().iter().find(|c| c.id == a.conn) {
            h.stats.0.record(a.read, a.written, !a.ok);
            h.stats.1.record(a.read, a.written, !a.ok);
        }
        target.record(a.read, a.written, !a.ok);
        if let Some(io) = io {
            io.counters.record(a.read, a.written, !a.ok);
        }
        Some(if a.written > 0 {
            crate::stats::Kind::Write
        } else if a.read > 0 {
            crate::stats::Kind::Read
        } else {
            crate::stats::Kind::Other
        })
    }
}
