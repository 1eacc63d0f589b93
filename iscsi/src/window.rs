//! The session's command window (RFC 7143 §4.2.2.1, §3.2.2.1): commands are
//! delivered to SCSI in CmdSN order, whichever connection carried them;
//! immediate commands bypass the order; anything outside the window the
//! target has advertised is dropped silently, as the RFC requires.

use std::collections::BTreeMap;

use crate::serial::CmdSn;

/// What became of a command offered to the window.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Deliver these now, in this order (the offered one and any held ones
    /// it unblocked).
    Deliver(Vec<T>),
    /// In the window but ahead of a gap: held until the gap fills.
    Held,
    /// Outside the window (a duplicate or beyond MaxCmdSN): ignore it.
    Dropped,
}

/// Where [`CmdWindow::admit_into`] put a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// It (and any held ones it unblocked) went to the ready queue.
    Ready,
    /// Held until the gap before it fills.
    Held,
    /// Outside the window: ignore it.
    Dropped,
}

/// The CmdSN window of one session, generic over what is queued.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp: CmdSn,
    depth: u32,
    in_flight: u32,
    /// Highest MaxCmdSN ever advertised: a command the initiator was allowed to
    /// send is never refused later even if the window narrowed since.
    advertised: CmdSn,
    held: BTreeMap<u32, T>,
}

impl<T> CmdWindow<T> {
    /// `exp` is the first CmdSN expected (the login's CmdSN); `depth` the
    /// queue depth (tgt's MaxQueueCmd).
    pub fn new(exp: CmdSn, depth: u32) -> Self {
        let depth = depth.max(1);
        CmdWindow {
            exp,
            depth,
            in_flight: 0,
            advertised: exp.plus(depth - 1),
            held: BTreeMap::new(),
        }
    }

    pub fn exp_cmd_sn(&self) -> CmdSn {
        self.exp
    }

    /// Commands delivered and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// MaxCmdSN to advertise now. With the queue full this is ExpCmdSN - 1,
    /// which closes the window (RFC 7143 §4.2.2.1).
    pub fn max_cmd_sn(&mut self) -> CmdSn {
        let room = self.depth.saturating_sub(self.in_flight);
        let max = CmdSn(self.exp.0.wrapping_add(room).wrapping_sub(1));
        if self.advertised.lt(max) {
            self.advertised = max;
        }
        max
    }

    /// Offer a received command. Immediate commands are delivered at once.
    pub fn admit(&mut self, sn: CmdSn, immediate: bool, item: T) -> Admit<T> {
        let mut out = std::collections::VecDeque::new();
        match self.admit_into(sn, immediate, item, &mut out) {
            Placed::Ready => Admit::Deliver(out.into()),
            Placed::Held => Admit::Held,
            Placed::Dropped => Admit::Dropped,
        }
    }

    /// [`admit`](CmdWindow::admit) without allocating: what is ready to run
    /// is appended to `ready`, in order (the caller keeps one queue and
    /// reuses it for every command).
    pub fn admit_into(
        &mut self,
        sn: CmdSn,
        immediate: bool,
        item: T,
        ready: &mut std::collections::VecDeque<T>,
    ) -> Placed {
        if immediate {
            self.in_flight += 1;
            ready.push_back(item);
            return Placed::Ready;
        }
        let ahead = sn.distance_from(self.exp);
        let limit = self.advertised.distance_from(self.exp);
        // `ahead` wraps to a huge value for an old CmdSN; both cases drop.
        if ahead > limit || ahead >= 1 << 31 {
            return Placed::Dropped;
        }
        if ahead > 0 {
            if self.held.contains_key(&sn.0) {
                return Placed::Dropped;
            }
            self.held.insert(sn.0, item);
            return Placed::Held;
        }
        ready.push_back(item);
        self.exp = self.exp.next();
        self.in_flight += 1;
        while let Some(next) = self.held.remove(&self.exp.0) {
            ready.push_back(next);
            self.exp = self.exp.next();
            self.in_flight += 1;
        }
        Placed::Ready
    }

    /// A delivered command finished (its response was queued).
    pub fn complete(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Commands held behind a gap.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_gap() {
        let mut w = CmdWindow::new(CmdSn(10), 4);
        assert_eq!(w.max_cmd_sn(), CmdSn(13));
        assert_eq!(w.admit(CmdSn(10), false, 'a'), Admit::Deliver(vec!['a']));
        assert_eq!(w.admit(CmdSn(12), false, 'c'), Admit::Held);
        assert_eq!(
            w.admit(CmdSn(11), false, 'b'),
            Admit::Deliver(vec!['b', 'c'])
        );
        assert_eq!(w.exp_cmd_sn(), CmdSn(13));
        // queue full: window closed
        assert_eq!(w.max_cmd_sn(), CmdSn(13));
        assert_eq!(w.admit(CmdSn(14), false, 'x'), Admit::Dropped);
        w.complete();
        assert_eq!(w.max_cmd_sn(), CmdSn(14));
    }

    #[test]
    fn duplicates_and_old_are_dropped() {
        let mut w = CmdWindow::new(CmdSn(u32::MAX), 8);
        assert!(matches!(
            w.admit(CmdSn(u32::MAX), false, 1),
            Admit::Deliver(_)
        ));
        assert_eq!(w.admit(CmdSn(u32::MAX), false, 2), Admit::Dropped);
        assert_eq!(w.admit(CmdSn(1), false, 3), Admit::Held);
        assert_eq!(w.admit(CmdSn(1), false, 4), Admit::Dropped);
        assert_eq!(w.admit(CmdSn(100), false, 5), Admit::Dropped);
        assert!(matches!(w.admit(CmdSn(7), true, 6), Admit::Deliver(_)));
        assert_eq!(w.admit(CmdSn(0), false, 7), Admit::Deliver(vec![7, 3]));
    }
}
