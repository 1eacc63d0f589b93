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
    /// Commands received ahead of a gap, by CmdSN. `None` marks a CmdSN
    /// the session considers received without a command (an ABORT TASK
    /// named it before it arrived, RFC 7143 §11.5.1): it fills its gap
    /// but runs nothing. Never more entries than the window is wide.
    held: BTreeMap<u32, Option<T>>,
}

/// What [`CmdWindow::abort_unreceived`] did with a CmdSN named by ABORT TASK.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreceived<T> {
    /// The CmdSN is outside the window (already delivered, or never
    /// allowed): nothing changed.
    OutsideWindow,
    /// Never received: the CmdSN now counts as received (a gap it filled
    /// may have released held commands to the ready queue).
    Filled,
    /// Received but held behind a gap: the command is taken out and its
    /// CmdSN counts as received.
    Removed(T),
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
        let Some(ahead) = self.offset_in_window(sn) else {
            return Placed::Dropped;
        };
        if ahead > 0 {
            if self.held.contains_key(&sn.0) {
                return Placed::Dropped;
            }
            self.held.insert(sn.0, Some(item));
            return Placed::Held;
        }
        ready.push_back(item);
        self.exp = self.exp.next();
        self.in_flight += 1;
        self.release_held(ready);
        Placed::Ready
    }

    /// How far `sn` lies inside the window [ExpCmdSN, MaxCmdSN], or `None`
    /// outside it. A closed window (MaxCmdSN = ExpCmdSN - 1, every slot
    /// taken) contains nothing: the wrapping distance must not be read as
    /// "2^32 - 1 slots open" (RFC 7143 §4.2.2.1: commands outside the
    /// window are ignored).
    fn offset_in_window(&self, sn: CmdSn) -> Option<u32> {
        if self.advertised.lt(self.exp) {
            return None;
        }
        let limit = self.advertised.distance_from(self.exp);
        let ahead = sn.distance_from(self.exp);
        (ahead <= limit).then_some(ahead)
    }

    /// Move held commands that are now in order to the ready queue.
    fn release_held(&mut self, ready: &mut std::collections::VecDeque<T>) {
        while let Some(next) = self.held.remove(&self.exp.0) {
            self.exp = self.exp.next();
            if let Some(item) = next {
                ready.push_back(item);
                self.in_flight += 1;
            }
        }
    }

    /// ABORT TASK named a task that is not running, with its RefCmdSN
    /// (RFC 7143 §11.5.1): if that CmdSN is in the window and not yet
    /// delivered, the command counts as received (its gap no longer blocks
    /// the commands after it) and the abort completes. `is_it` says whether
    /// a command held at that CmdSN is the referenced one; a different
    /// command there is left alone.
    pub fn abort_unreceived(
        &mut self,
        sn: CmdSn,
        is_it: impl Fn(&T) -> bool,
        ready: &mut std::collections::VecDeque<T>,
    ) -> Unreceived<T> {
        if self.offset_in_window(sn).is_none() {
            return Unreceived::OutsideWindow;
        }
        let out = match self.held.get(&sn.0) {
            Some(Some(t)) if is_it(t) => {
                let t = self.held.insert(sn.0, None).flatten();
                Unreceived::Removed(t.expect("held command"))
            }
            Some(_) => return Unreceived::OutsideWindow,
            None => {
                self.held.insert(sn.0, None);
                Unreceived::Filled
            }
        };
        self.release_held(ready);
        out
    }

    /// Take every command held behind a gap (the session is ending: what
    /// they own must not outlive it).
    pub fn drain_held(&mut self) -> Vec<T> {
        std::mem::take(&mut self.held)
            .into_values()
            .flatten()
            .collect()
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

    /// Regression: with every slot taken MaxCmdSN = ExpCmdSN - 1 and the
    /// wrapping distance made the window look 2^31 wide, so anything ahead
    /// was held without bound.
    #[test]
    fn closed_window_admits_nothing() {
        let mut w = CmdWindow::new(CmdSn(100), 4);
        for i in 0..4 {
            assert!(matches!(
                w.admit(CmdSn(100 + i), false, i),
                Admit::Deliver(_)
            ));
        }
        assert_eq!(w.max_cmd_sn(), CmdSn(103));
        for sn in [104u32, 105, 200, 100_000, 0x7fff_0000] {
            assert_eq!(w.admit(CmdSn(sn), false, 9), Admit::Dropped, "{sn}");
        }
        assert_eq!(w.held(), 0);
        // Immediate commands still pass (RFC 7143 §3.2.2.1).
        assert!(matches!(w.admit(CmdSn(104), true, 9), Admit::Deliver(_)));
        w.complete();
        w.complete();
        assert_eq!(w.max_cmd_sn(), CmdSn(104));
        assert!(matches!(w.admit(CmdSn(104), false, 5), Admit::Deliver(_)));
    }

    #[test]
    fn window_never_holds_more_than_its_width() {
        let mut w = CmdWindow::new(CmdSn(u32::MAX - 3), 8);
        let _ = w.max_cmd_sn();
        for sn in 0..100_000u32 {
            let _ = w.admit(CmdSn(sn.wrapping_sub(2)), false, sn);
        }
        assert!(w.held() <= 8, "{}", w.held());
    }

    #[test]
    fn abort_of_a_command_never_received_fills_its_gap() {
        let mut w = CmdWindow::new(CmdSn(10), 8);
        let mut ready = std::collections::VecDeque::new();
        assert_eq!(
            w.admit_into(CmdSn(11), false, 'b', &mut ready),
            Placed::Held
        );
        assert_eq!(
            w.admit_into(CmdSn(13), false, 'd', &mut ready),
            Placed::Held
        );
        // CmdSN 10 never arrives; ABORT TASK names it.
        assert_eq!(
            w.abort_unreceived(CmdSn(10), |_| true, &mut ready),
            Unreceived::Filled
        );
        assert_eq!(ready.drain(..).collect::<Vec<_>>(), vec!['b']);
        assert_eq!(w.exp_cmd_sn(), CmdSn(12));
        assert_eq!(w.in_flight(), 1, "a filled CmdSN takes no slot");
        // A held command named by the abort is taken out.
        assert_eq!(
            w.abort_unreceived(CmdSn(13), |c| *c == 'd', &mut ready),
            Unreceived::Removed('d')
        );
        assert_eq!(w.held(), 1);
        assert_eq!(
            w.admit_into(CmdSn(12), false, 'c', &mut ready),
            Placed::Ready
        );
        assert_eq!(ready.drain(..).collect::<Vec<_>>(), vec!['c']);
        assert_eq!(w.exp_cmd_sn(), CmdSn(14));
        // Already delivered, or beyond the window: nothing to do.
        assert_eq!(
            w.abort_unreceived(CmdSn(12), |_| true, &mut ready),
            Unreceived::OutsideWindow
        );
        assert_eq!(
            w.abort_unreceived(CmdSn(1000), |_| true, &mut ready),
            Unreceived::OutsideWindow
        );
    }

    #[test]
    fn drain_held_returns_what_waits() {
        let mut w = CmdWindow::new(CmdSn(0), 8);
        assert_eq!(w.admit(CmdSn(2), false, 'x'), Admit::Held);
        assert_eq!(w.admit(CmdSn(3), false, 'y'), Admit::Held);
        assert_eq!(w.drain_held(), vec!['x', 'y']);
        assert_eq!(w.held(), 0);
    }
}
