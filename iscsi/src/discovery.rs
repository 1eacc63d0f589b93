//! SendTargets (RFC 7143 §13.3, Appendix C) and the Text Request exchange
//! of the full feature phase (RFC 7143 §11.10, §11.11), for both discovery
//! and normal sessions.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::params::{self, parse_num, SessionParams, SessionType};
use crate::pdu::{self, Itt, Pdu, RejectReason, Ttt, RESERVED_TAG};
use crate::text::{self, Accumulator, TextBuilder};

/// A target as SendTargets reports it: its name and its portals with their
/// portal group tags.
pub type TargetEntry = (String, Vec<(SocketAddr, u16)>);

fn push_target(out: &mut TextBuilder, name: &str, portals: &[(SocketAddr, u16)]) {
    out.push("TargetName", name);
    for (addr, tpgt) in portals {
        // §13.8: domainname[:port][,portal-group-tag]; IPv6 in brackets
        // (RFC 3986 form, without a zone index, which means nothing to a
        // peer).
        let v = match addr {
            SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), tpgt),
            SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), tpgt),
        };
        out.push("TargetAddress", &v);
    }
}

/// The answer to `SendTargets=<request_value>` (RFC 7143 §13.3, Appendix
/// C): `TargetName=..\0TargetAddress=ip:port,tpgt\0..` per target.
///
/// - `All`: every target in `targets`, in a discovery session only; a normal
///   session gets `SendTargets=Reject`.
/// - empty: the session's own target (`current_target`); nothing in a
///   discovery session.
/// - a target name: that target if it is in `targets`, else nothing.
///
/// `targets` must already be filtered to what this initiator may see, and
/// portals must be concrete addresses (the daemon replaces a wildcard listen
/// address by the connection's local address, as tgt does).
pub fn send_targets(
    request_value: &str,
    targets: &[TargetEntry],
    is_discovery_session: bool,
    current_target: Option<&str>,
) -> Vec<u8> {
    let mut out = TextBuilder::new();
    match request_value {
        "All" if is_discovery_session => {
            for (name, portals) in targets {
                push_target(&mut out, name, portals);
            }
        }
        "All" => {
            out.push("SendTargets", "Reject");
        }
        "" => {
            if let Some(cur) = current_target.filter(|_| !is_discovery_session) {
                if let Some((name, portals)) = targets.iter().find(|(n, _)| n == cur) {
                    push_target(&mut out, name, portals);
                }
            }
        }
        want => {
            if let Some((name, portals)) = targets.iter().find(|(n, _)| n == want) {
                push_target(&mut out, name, portals);
            }
        }
    }
    out.into_bytes()
}

/// What the Text exchange needs from the daemon.
pub trait TextHost {
    /// The targets this initiator may see, with concrete portal addresses.
    /// Called only when a SendTargets key is answered.
    fn targets(&mut self) -> Vec<TargetEntry>;
}

/// What to send after a Text Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextStep {
    /// A Text Response (sequence numbers left for the connection to stamp).
    Respond(Pdu),
    /// A Reject (protocol error, invalid field); the exchange is reset.
    Reject(Pdu),
}

#[derive(Debug, Clone)]
struct Open {
    itt: Itt,
    ttt: Ttt,
    /// Pieces of our answer not sent yet.
    pieces: VecDeque<Vec<u8>>,
    /// Whether the initiator's request had F=1: only then may our last
    /// piece carry F=1 (§11.11.1).
    final_requested: bool,
    lun_raw: u64,
}

/// The Text Request / Response exchange of one connection in the full
/// feature phase: multi-PDU requests (C bit), long responses split at the
/// initiator's MaxRecvDataSegmentLength and fetched with the Target Transfer
/// Tag (RFC 7143 §11.10, §11.11).
#[derive(Debug, Clone)]
pub struct TextExchange {
    session_type: SessionType,
    current_target: Option<String>,
    max_xmit: u32,
    our_mrdsl: u32,
    rx: Accumulator,
    open: Option<Open>,
    next_ttt: u32,
}

const F_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;

impl TextExchange {
    pub fn new(params: &SessionParams) -> TextExchange {
        TextExchange {
            session_type: params.session_type,
            current_target: params.target_name.clone(),
            max_xmit: params.max_xmit_data_segment_length.max(512),
            our_mrdsl: params.max_recv_data_segment_length,
            rx: Accumulator::new(),
            open: None,
            next_ttt: 1,
        }
    }

    /// The initiator's MaxRecvDataSegmentLength, which a Text Request may
    /// re-declare (§13.12: Use ALL). The daemon reads it after each request.
    pub fn max_xmit_data_segment_length(&self) -> u32 {
        self.max_xmit
    }

    fn tag(&mut self) -> Ttt {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        Ttt(t)
    }

    fn reject(&mut self, reason: RejectReason, pdu: &Pdu) -> TextStep {
        self.open = None;
        self.rx.clear();
        TextStep::Reject(pdu::reject(reason, &pdu.bhs))
    }

    /// Handle one Text Request.
    pub fn handle_request(&mut self, pdu: &Pdu, host: &mut dyn TextHost) -> TextStep {
        let b = &pdu.bhs;
        let (f, c) = (b.flags() & F_BIT != 0, b.flags() & C_BIT != 0);
        let (itt, ttt) = (b.itt(), b.ttt());
        if f && c {
            // §11.10.2: C=1 requires F=0.
            return self.reject(RejectReason::ProtocolError, pdu);
        }
        if ttt.0 != RESERVED_TAG {
            // A continuation of our exchange: it must name our tag.
            match &self.open {
                Some(o) if o.ttt == ttt && o.itt == itt => {}
                _ => return self.reject(RejectReason::InvalidPduField, pdu),
            }
            if self.open.as_ref().is_some_and(|o| !o.pieces.is_empty()) {
                // The initiator fetches the next piece with an empty request.
                if !pdu.data.is_empty() || c {
                    return self.reject(RejectReason::ProtocolError, pdu);
                }
                return TextStep::Respond(self.next_piece());
            }
        } else {
            // TTT 0xffffffff is a new request: whatever exchange was open,
            // even under the same ITT, is reset (§11.10.4), so nothing of
            // an abandoned request is glued to this one.
            self.open = None;
            self.rx.clear();
        }
        if self.rx.push(&pdu.data).is_err() {
            return self.reject(RejectReason::ProtocolError, pdu);
        }
        let tag = match &self.open {
            Some(o) => o.ttt,
            None => self.tag(),
        };
        if c {
            // More request text follows: answer empty, F=0 with our tag.
            self.open = Some(Open {
                itt,
                ttt: tag,
                pieces: VecDeque::new(),
                final_requested: false,
                lun_raw: b.lun_raw(),
            });
            return TextStep::Respond(pdu::text_response(
                itt,
                tag,
                false,
                false,
                b.lun_raw(),
                Vec::new(),
            ));
        }
        let pairs = match text::parse(&self.rx.take()) {
            Ok(p) => p,
            Err(e) => return self.reject(e.reject_reason(), pdu),
        };
        let answer = self.answer(&pairs, host);
        self.open = Some(Open {
            itt,
            ttt: tag,
            pieces: text::split(&answer, self.max_xmit as usize).into(),
            final_requested: f,
            lun_raw: b.lun_raw(),
        });
        TextStep::Respond(self.next_piece())
    }

    fn next_piece(&mut self) -> Pdu {
        let o = self.open.as_mut().expect("open exchange");
        let piece = o.pieces.pop_front().unwrap_or_default();
        let (itt, ttt, lun) = (o.itt, o.ttt, o.lun_raw);
        if !o.pieces.is_empty() {
            // More to come: F=0, C=1 and our tag (§11.11.2, §11.11.4).
            return pdu::text_response(itt, ttt, false, true, lun, piece);
        }
        if o.final_requested {
            self.open = None;
            pdu::text_response(itt, Ttt(RESERVED_TAG), true, false, lun, piece)
        } else {
            // The initiator did not end the negotiation: neither may we, and
            // F=0 needs a real tag (§11.11.4).
            pdu::text_response(itt, ttt, false, false, lun, piece)
        }
    }

    /// Answer the keys of a full feature phase Text Request.
    fn answer(&mut self, pairs: &[text::KeyValue], host: &mut dyn TextHost) -> Vec<u8> {
        let mut out = TextBuilder::new();
        let mut seen: Vec<&str> = Vec::new();
        for kv in pairs {
            let name = kv.key.as_str();
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let Some(d) = params::lookup(name) else {
                // Unknown and X-/X# extension keys (§6.2.1, §13.25).
                out.push(name, "NotUnderstood");
                continue;
            };
            match d.key {
                params::Key::SendTargets => {
                    let targets = host.targets();
                    let t = send_targets(
                        &kv.value,
                        &targets,
                        self.session_type == SessionType::Discovery,
                        self.current_target.as_deref(),
                    );
                    out.extend_raw(&t);
                }
                params::Key::MaxRecvDataSegmentLength => match parse_num(&kv.value) {
                    // Declarative in any phase (§13.12): the initiator's new
                    // limit; we declare ours in return.
                    Some(n) if (d.min as u64..=d.max as u64).contains(&n) => {
                        self.max_xmit = n as u32;
                        out.push(name, &self.our_mrdsl.to_string());
                    }
                    _ => {
                        out.push(name, "Reject");
                    }
                },
                // Declarations that need no answer.
                params::Key::InitiatorAlias => {}
                // Login-only keys (IO/LO), keys only a target sends, and
                // full feature renegotiation, which we do not support.
                _ => {
                    out.push(name, "Reject");
                }
            }
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{Bhs, Opcode};
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn targets() -> Vec<TargetEntry> {
        vec![
            (
                "iqn.2024-01.org.example:disk1".into(),
                vec![
                    ("192.0.2.1:3260".parse().unwrap(), 1),
                    (
                        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 3261, 0, 5)),
                        2,
                    ),
                ],
            ),
            (
                "iqn.2024-01.org.example:disk2".into(),
                vec![("192.0.2.1:3260".parse().unwrap(), 1)],
            ),
        ]
    }

    #[test]
    fn send_targets_all_in_discovery() {
        let t = send_targets("All", &targets(), true, None);
        assert_eq!(
            t,
            b"TargetName=iqn.2024-01.org.example:disk1\0TargetAddress=192.0.2.1:3260,1\0\
TargetAddress=[::1]:3261,2\0TargetName=iqn.2024-01.org.example:disk2\0TargetAddress=192.0.2.1:3260,1\0"
        );
    }

    #[test]
    fn send_targets_other_forms() {
        let ts = targets();
        assert_eq!(
            send_targets("All", &ts, false, Some("iqn.2024-01.org.example:disk2")),
            b"SendTargets=Reject\0"
        );
        assert_eq!(
            send_targets("", &ts, false, Some("iqn.2024-01.org.example:disk2")),
            b"TargetName=iqn.2024-01.org.example:disk2\0TargetAddress=192.0.2.1:3260,1\0"
        );
        assert_eq!(send_targets("", &ts, true, None), b"");
        assert_eq!(
            send_targets("iqn.2024-01.org.example:disk2", &ts, true, None),
            b"TargetName=iqn.2024-01.org.example:disk2\0TargetAddress=192.0.2.1:3260,1\0"
        );
        assert_eq!(send_targets("iqn.nope", &ts, true, None), b"");
    }

    struct Host(Vec<TargetEntry>);
    impl TextHost for Host {
        fn targets(&mut self) -> Vec<TargetEntry> {
            self.0.clone()
        }
    }

    fn params(st: SessionType, max_xmit: u32) -> SessionParams {
        SessionParams {
            tsih: 1,
            max_xmit_data_segment_length: max_xmit,
            ..SessionParams::rfc_defaults(st, "iqn.i", None)
        }
    }

    fn text_req(itt: u32, ttt: u32, f: bool, c: bool, data: &[u8]) -> Pdu {
        let mut b = Bhs::new(Opcode::TextRequest);
        b.0[0] |= 0x40;
        b.set_flags(if f { F_BIT } else { 0 } | if c { C_BIT } else { 0 });
        b.set_itt(Itt(itt));
        b.set_u32_at(20, ttt);
        Pdu::with_data(b, data.to_vec())
    }

    fn respond(s: TextStep) -> Pdu {
        match s {
            TextStep::Respond(p) => p,
            TextStep::Reject(p) => panic!("unexpected reject {p:?}"),
        }
    }

    #[test]
    fn long_response_is_split_and_fetched_with_ttt() {
        // Many targets, so the answer exceeds a 512-byte MaxRecvDataSegmentLength.
        let many: Vec<TargetEntry> = (0..40)
            .map(|i| {
                (
                    format!("iqn.2024-01.org.example:disk{i}"),
                    vec![("192.0.2.1:3260".parse().unwrap(), 1)],
                )
            })
            .collect();
        let whole = send_targets("All", &many, true, None);
        let mut host = Host(many);
        let mut x = TextExchange::new(&params(SessionType::Discovery, 512));
        let first = respond(x.handle_request(
            &text_req(7, RESERVED_TAG, true, false, b"SendTargets=All\0"),
            &mut host,
        ));
        assert_eq!(first.bhs.opcode(), Some(Opcode::TextResponse));
        assert_eq!(first.bhs.flags(), C_BIT);
        assert_eq!(first.bhs.itt(), Itt(7));
        let ttt = first.bhs.ttt();
        assert_ne!(ttt.0, RESERVED_TAG);
        assert_eq!(first.data.len(), 512);
        let mut got = first.data.clone();
        let mut n = 1;
        loop {
            let p = respond(x.handle_request(&text_req(7, ttt.0, true, false, b""), &mut host));
            got.extend_from_slice(&p.data);
            n += 1;
            assert!(p.data.len() <= 512);
            if p.bhs.flags() == F_BIT {
                assert_eq!(p.bhs.ttt().0, RESERVED_TAG);
                break;
            }
            assert_eq!(p.bhs.flags(), C_BIT);
            assert_eq!(p.bhs.ttt(), ttt);
        }
        assert_eq!(got, whole);
        assert_eq!(n, whole.len().div_ceil(512));
        // The exchange is closed: the old tag is refused.
        assert!(matches!(
            x.handle_request(&text_req(7, ttt.0, true, false, b""), &mut host),
            TextStep::Reject(_)
        ));
    }

    #[test]
    fn multi_pdu_request_and_unknown_keys() {
        let mut host = Host(targets());
        let mut p = params(SessionType::Normal, 8192);
        p.target_name = Some("iqn.2024-01.org.example:disk2".into());
        let mut x = TextExchange::new(&p);
        let ack = respond(x.handle_request(
            &text_req(9, RESERVED_TAG, false, true, b"X-foo=1\0SendTar"),
            &mut host,
        ));
        assert!(ack.data.is_empty());
        assert_eq!(ack.bhs.flags(), 0);
        let ttt = ack.bhs.ttt().0;
        assert_ne!(ttt, RESERVED_TAG);
        let r = respond(x.handle_request(
            &text_req(
                9,
                ttt,
                true,
                false,
                b"gets=\0MaxRecvDataSegmentLength=65536\0InitialR2T=No\0",
            ),
            &mut host,
        ));
        assert_eq!(r.bhs.flags(), F_BIT);
        assert_eq!(
            r.data,
            b"X-foo=NotUnderstood\0TargetName=iqn.2024-01.org.example:disk2\0TargetAddress=192.0.2.1:3260,1\0\
MaxRecvDataSegmentLength=8192\0InitialR2T=Reject\0"
        );
        assert_eq!(x.max_xmit_data_segment_length(), 65536);
    }

    /// Regression: a request with TTT 0xffffffff under the ITT of an
    /// unfinished multi-PDU request was glued to the old text.
    #[test]
    fn reserved_ttt_restarts_the_exchange() {
        let mut host = Host(targets());
        let mut p = params(SessionType::Normal, 8192);
        p.target_name = Some("iqn.2024-01.org.example:disk2".into());
        let mut x = TextExchange::new(&p);
        let ack = respond(x.handle_request(
            &text_req(9, RESERVED_TAG, false, true, b"X-junk=1\0SendTar"),
            &mut host,
        ));
        let old = ack.bhs.ttt().0;
        let r = respond(x.handle_request(
            &text_req(9, RESERVED_TAG, true, false, b"SendTargets=\0"),
            &mut host,
        ));
        assert_eq!(
            r.data,
            b"TargetName=iqn.2024-01.org.example:disk2\0TargetAddress=192.0.2.1:3260,1\0"
        );
        assert_eq!(r.bhs.flags(), F_BIT);
        // The abandoned exchange's tag is gone.
        assert!(matches!(
            x.handle_request(&text_req(9, old, true, false, b""), &mut host),
            TextStep::Reject(_)
        ));
    }

    #[test]
    fn bad_requests_are_rejected() {
        let mut host = Host(targets());
        let mut x = TextExchange::new(&params(SessionType::Discovery, 8192));
        let r = x.handle_request(&text_req(1, 1234, true, false, b""), &mut host);
        assert!(
            matches!(r, TextStep::Reject(p) if p.data[..48] == text_req(1, 1234, true, false, b"").bhs.0)
        );
        assert!(matches!(
            x.handle_request(&text_req(1, RESERVED_TAG, true, true, b""), &mut host),
            TextStep::Reject(_)
        ));
        assert!(matches!(
            x.handle_request(&text_req(1, RESERVED_TAG, true, false, b"A"), &mut host),
            TextStep::Reject(_)
        ));
        // F=0 request: answered with F=0 and a tag; an empty F=1 closes it.
        let r = respond(x.handle_request(
            &text_req(2, RESERVED_TAG, false, false, b"SendTargets=All\0"),
            &mut host,
        ));
        assert_eq!(r.bhs.flags(), 0);
        let t = r.bhs.ttt().0;
        assert_ne!(t, RESERVED_TAG);
        let r = respond(x.handle_request(&text_req(2, t, true, false, b""), &mut host));
        assert_eq!(
            (r.bhs.flags(), r.bhs.ttt().0, r.data.len()),
            (F_BIT, RESERVED_TAG, 0)
        );
    }
}
