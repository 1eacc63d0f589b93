//! A session as its target loop holds it: the connections (MC/S) and the
//! shared command window. Only the loop's thread touches it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use iscsi::pdu::Pdu;
use iscsi::window::{CmdWindow, Placed, Unreceived};
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
/// arrived on (connection allegiance, RFC 7143 §5.1). The connection is
/// held weakly: a command waiting behind a gap must not keep its
/// connection, and through it the session and the window it waits in,
/// alive after the connection closed (a cycle nothing would break).
pub struct Queued {
    pub conn: Weak<Conn>,
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

    /// Commands delivered and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.window.borrow().in_flight()
    }

    /// The next command to run in CmdSN order.
    pub fn next_ready(&self) -> Option<Queued> {
        self.ready.borrow_mut().pop_front()
    }

    /// A delivered command is finished.
    pub fn complete(&self) {
        self.window.borrow_mut().complete();
    }

    /// ABORT TASK named a task that is not running: if its RefCmdSN is in
    /// the window and not yet delivered, count it as received (RFC 7143
    /// §11.5.1). True when the abort is thereby complete; commands the
    /// filled gap released go to the ready queue.
    pub fn abort_unreceived(&self, ref_sn: CmdSn, itt: iscsi::Itt) -> bool {
        let mut ready = self.ready.borrow_mut();
        let r = self.window.borrow_mut().abort_unreceived(
            ref_sn,
            |q| q.pdu.bhs.itt() == itt,
            &mut ready,
        );
        !matches!(r, Unreceived::OutsideWindow)
    }

    /// The session's last connection is gone: drop whatever still waits
    /// for its turn, so nothing outlives the session.
    pub fn end(&self) {
        let held = self.window.borrow_mut().drain_held();
        self.ready.borrow_mut().clear();
        drop(held);
    }

    pub fn conn(&self, cid: u16) -> Option<Rc<Conn>> {
        self.conns.borrow().iter().find(|c| c.cid == cid).cloned()
    }
}
