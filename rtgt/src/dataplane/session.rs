//! A session as its target loop holds it: the connections (MC/S) and the
//! shared command window. Only the loop's thread touches it.

use std::cell::RefCell;
use std::rc::Rc;

use iscsi::pdu::Pdu;
use iscsi::window::{CmdWindow, Placed};
use iscsi::CmdSn;
use scsi::NexusId;

use super::conn::Conn;

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

/// A command waiting for its turn in CmdSN order, with the connection it
/// arrived on (connection allegiance, RFC 7143 §5.1).
pub struct Queued {
    pub conn: Rc<Conn>,
    pub pdu: Pdu,
}

pub struct Session {
    pub setup: SessionSetup,
    window: RefCell<CmdWindow<Queued>>,
    /// Commands released by the window, not yet run (reused, so ordering
    /// costs no allocation per command).
    ready: RefCell<std::collections::VecDeque<Queued>>,
    pub conns: RefCell<Vec<Rc<Conn>>>,
}

impl Session {
    pub fn new(setup: SessionSetup) -> Rc<Session> {
        let window = CmdWindow::new(setup.exp_cmd_sn, setup.queue_depth);
        Rc::new(Session {
            setup,
            window: RefCell::new(window),
            ready: RefCell::new(std::collections::VecDeque::new()),
            conns: RefCell::new(Vec::new()),
        })
    }

    /// ExpCmdSN and MaxCmdSN to stamp on an outgoing PDU.
    pub fn window_numbers(&self) -> (CmdSn, CmdSn) {
        let mut w = self.window.borrow_mut();
        (w.exp_cmd_sn(), w.max_cmd_sn())
    }

    /// Offer a command; what can now run goes to the ready queue, taken
    /// one at a time with [`next_ready`](Session::next_ready).
    pub fn admit(&self, sn: CmdSn, immediate: bool, q: Queued) {
        let mut ready = self.ready.borrow_mut();
        if self
            .window
            .borrow_mut()
            .admit_into(sn, immediate, q, &mut ready)
            == Placed::Dropped
        {
            tracing::debug!(
                tsih = self.setup.tsih,
                sn = sn.0,
                "CmdSN outside the window: dropped"
            );
        }
    }

    /// The next command to run in CmdSN order.
    pub fn next_ready(&self) -> Option<Queued> {
        self.ready.borrow_mut().pop_front()
    }

    /// A delivered command is finished.
    pub fn complete(&self) {
        self.window.borrow_mut().complete();
    }

    pub fn conn(&self, cid: u16) -> Option<Rc<Conn>> {
        self.conns.borrow().iter().find(|c| c.cid == cid).cloned()
    }
}
