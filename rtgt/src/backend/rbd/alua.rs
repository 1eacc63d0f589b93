//! Implicit ALUA for an image served by several gateways (SPC-4 §5.15):
//! each gateway is one target port group with one port.
//!
//! - **Registry**: a gateway registers as an extended attribute of the
//!   image's state object (see [`super::shared`]), `rtgt.gw.<group>` =
//!   `<relative port> <its image client's address>`, and takes it out when
//!   it stops serving the LU.
//! - **Liveness**: a roll call, a notify on the state object with payload
//!   [`ROLL_CALL`] that every gateway's watch answers at once with its port
//!   group. A gateway that does not answer within [`ROLL_CALL_TIMEOUT_MS`]
//!   is taken for dead: a killed process's watch lingers at the OSD for
//!   about 30 s, but cannot answer.
//! - **States**: the lowest live group is active/optimized, the other live
//!   groups active/non-optimized, registered groups that did not answer
//!   unavailable. A stable preference, not the holder of the image's
//!   exclusive lock: the lock moves with every write sent down another
//!   path, and states that followed it would change (with a unit
//!   attention to every initiator) each time.
//! - **Takeover**: the active/optimized gateway breaks the exclusive lock
//!   of a gateway that missed [`MISSES_BEFORE_BREAK`] roll calls in a row
//!   (librbd blocklists the dead client as it breaks the lock), so writes
//!   resume within a few ticks instead of when the cluster times out the
//!   dead client's watch.
//! - **Unit attentions**: when a state changes, the lowest live gateway
//!   announces ASYMMETRIC ACCESS STATE CHANGED to every nexus of every
//!   gateway, through the shared state.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use scsi::{AccessState, PortGroup};

use super::conn::{cstr, os_err};
use super::shared::Core;

/// The payload of a roll call.
pub(super) const ROLL_CALL: &[u8] = b"rtgt.roll-call";

/// How long a roll call waits for the gateways' answers.
const ROLL_CALL_TIMEOUT_MS: u64 = 2000;

/// How often a gateway takes the roll.
const TICK: Duration = Duration::from_secs(3);

/// Roll calls in a row a gateway must miss before its lock is broken.
const MISSES_BEFORE_BREAK: u32 = 2;

/// Registry entries' names: this prefix and the port group.
const GATEWAY_XATTR: &str = "rtgt.gw.";

/// The port group SET TARGET PORT GROUPS made the preferred one.
const PREFERRED_XATTR: &str = "rtgt.preferred";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What ALUA needs of the image, which the state's client does not hold.
pub(super) trait Probe: Send + Sync {
    /// The image client's address (a reopen after fencing changes it).
    fn address(&self) -> Option<String>;
    /// The addresses of the clients holding the image's exclusive lock.
    fn lock_owners(&self) -> Option<Vec<String>>;
    /// Break `owner`'s exclusive lock (librbd blocklists it).
    fn break_lock(&self, owner: &str) -> bool;
}

/// A gateway serving the image, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Gateway {
    pub rel: u16,
    /// Its image client's address (as the exclusive lock names owners).
    pub address: String,
}

/// This gateway's part.
pub(super) struct Local {
    probe: Box<dyn Probe>,
    /// The port group and relative port this gateway serves the LU as.
    me: Mutex<Option<(u16, u16)>>,
    /// What is registered for us.
    registered: Mutex<Option<(u16, Gateway)>>,
    /// The states as the last roll call found them.
    view: Mutex<Option<Vec<PortGroup>>>,
    /// A port group two gateways answered for, as last reported.
    duplicate: Mutex<Option<u16>>,
}

impl Local {
    pub(super) fn new(probe: Box<dyn Probe>) -> Local {
        Local {
            probe,
            me: Mutex::new(None),
            registered: Mutex::new(None),
            view: Mutex::new(None),
            duplicate: Mutex::new(None),
        }
    }

    /// Serve as `group` / `rel` from now on.
    pub(super) fn serve_as(&self, group: u16, rel: u16) {
        *lock(&self.me) = Some((group, rel));
    }

    /// Our answer to a roll call: our port group (nothing before we serve).
    pub(super) fn answer(&self) -> Vec<u8> {
        lock(&self.me)
            .map(|(g, _)| g.to_string().into_bytes())
            .unwrap_or_default()
    }

    /// Take our registration out (we no longer serve the LU).
    pub(super) fn unregister(&self, core: &Core) {
        if let Some((group, _)) = lock(&self.registered).take() {
            if let Err(e) = core.remove_xattr(&format!("{GATEWAY_XATTR}{group}")) {
                tracing::warn!(oid = ?core.oid, error = %e, "cannot unregister this gateway");
            }
        }
    }
}

/// Start the thread that takes the roll every [`TICK`] (and at once when
/// woken). It ends when the returned sender is dropped.
pub(super) fn spawn(core: &Arc<Core>) -> io::Result<Sender<()>> {
    let (tx, rx) = mpsc::channel();
    let weak = Arc::downgrade(core);
    std::thread::Builder::new()
        .name("rbd-alua".into())
        .spawn(move || run(&weak, &rx))?;
    Ok(tx)
}

fn run(core: &Weak<Core>, rx: &mpsc::Receiver<()>) {
    let mut misses: BTreeMap<u16, u32> = BTreeMap::new();
    loop {
        if let Err(RecvTimeoutError::Disconnected) = rx.recv_timeout(TICK) {
            return;
        }
        let Some(core) = core.upgrade() else {
            return;
        };
        if let Err(e) = tick(&core, &mut misses) {
            tracing::warn!(oid = ?core.oid, error = %e, "ALUA roll call failed");
        }
    }
}

/// One roll call and what follows from it.
fn tick(core: &Core, misses: &mut BTreeMap<u16, u32>) -> io::Result<()> {
    let Some((group, _)) = *lock(&core.alua.me) else {
        return Ok(());
    };
    let (view, gws, live) = survey(core)?;
    let old = lock(&core.alua.view).replace(view.clone());
    // One gateway announces a change: the lowest live one.
    if old.is_some_and(|old| states_changed(&old, &view)) && live.first() == Some(&group) {
        let r = core.update(&mut |cur| scsi::asymmetric_access_changed(cur));
        if let Err(e) = r {
            tracing::warn!(oid = ?core.oid, result = ?e, "cannot announce an ALUA state change");
        }
    }
    for g in gws.keys() {
        if live.contains(g) {
            misses.remove(g);
        } else {
            *misses.entry(*g).or_default() += 1;
        }
    }
    misses.retain(|g, _| gws.contains_key(g));
    let optimized = view
        .iter()
        .find(|p| p.state == AccessState::ActiveOptimized)
        .map(|p| p.id);
    if optimized != Some(group) {
        return Ok(());
    }
    // We are the preferred path: a dead gateway must not keep the lock.
    let owners = core.alua.probe.lock_owners().unwrap_or_default();
    for owner in owners {
        let dead = gws.iter().find(|(g, gw)| {
            **g != group
                && same_client(&owner, &gw.address)
                && misses.get(g).is_some_and(|m| *m >= MISSES_BEFORE_BREAK)
        });
        if let Some((g, _)) = dead {
            tracing::warn!(oid = ?core.oid, group = g, owner = %owner, "breaking the image lock of a gateway that stopped answering");
            if !core.alua.probe.break_lock(&owner) {
                tracing::warn!(oid = ?core.oid, owner = %owner, "could not break the image lock");
            }
        }
    }
    Ok(())
}

/// What a roll call found: the states, the registered gateways, and the
/// live registered groups in order.
type Survey = (Vec<PortGroup>, BTreeMap<u16, Gateway>, Vec<u16>);

/// Make `group` the preferred (active/optimized) one for every gateway:
/// `false` when it is not a live registered group.
pub(super) fn prefer(core: &Core, group: u16) -> io::Result<bool> {
    let (_, _, live) = survey(core)?;
    if !live.contains(&group) {
        return Ok(false);
    }
    core.set_xattr(PREFERRED_XATTR, group.to_string().as_bytes())?;
    Ok(true)
}

/// Register (again, if our image client changed), take the roll, and work
/// out the states.
fn survey(core: &Core) -> io::Result<Survey> {
    keep_registered(core)?;
    let (gws, preferred) = registry(core)?;
    let (reply, r) = core.notify_with(ROLL_CALL, ROLL_CALL_TIMEOUT_MS);
    if r < 0 && r != -i64::from(libc::ETIMEDOUT) {
        return Err(os_err(r));
    }
    let answers: Vec<u16> = parse_acks(&reply)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| std::str::from_utf8(p).ok()?.parse().ok())
        .collect();
    let live: BTreeSet<u16> = answers.iter().copied().collect();
    // Two gateways answering for one group: a configuration error that
    // would make them overwrite each other's registration.
    let twice = live
        .iter()
        .copied()
        .find(|g| answers.iter().filter(|a| *a == g).count() > 1);
    let mut said = lock(&core.alua.duplicate);
    if twice.is_some() && twice != *said {
        tracing::error!(oid = ?core.oid, group = twice, "two gateways serve this image as the same port group: give each rtgtd its own --port-group");
    }
    *said = twice;
    drop(said);
    let live: Vec<u16> = live.into_iter().filter(|g| gws.contains_key(g)).collect();
    Ok((states(&gws, &live, preferred), gws, live))
}

fn keep_registered(core: &Core) -> io::Result<()> {
    let Some((group, rel)) = *lock(&core.alua.me) else {
        return Ok(());
    };
    let Some(address) = core.alua.probe.address() else {
        return Ok(());
    };
    let me = Gateway { rel, address };
    let mut reg = lock(&core.alua.registered);
    if reg.as_ref() == Some(&(group, me.clone())) {
        return Ok(());
    }
    core.set_xattr(
        &format!("{GATEWAY_XATTR}{group}"),
        format!("{} {}", me.rel, me.address).as_bytes(),
    )?;
    *reg = Some((group, me));
    Ok(())
}

/// The registered gateways, by port group, and the group set preferred.
fn registry(core: &Core) -> io::Result<(BTreeMap<u16, Gateway>, Option<u16>)> {
    let mut out = BTreeMap::new();
    let mut preferred = None;
    for (name, val) in core.xattrs()? {
        if name == PREFERRED_XATTR {
            preferred = std::str::from_utf8(&val).ok().and_then(|v| v.parse().ok());
            continue;
        }
        let Some(group) = name
            .strip_prefix(GATEWAY_XATTR)
            .and_then(|g| g.parse::<u16>().ok())
        else {
            continue;
        };
        let val = String::from_utf8_lossy(&val);
        if let Some((rel, address)) = val.split_once(' ') {
            if let Ok(rel) = rel.parse() {
                let address = address.to_string();
                out.insert(group, Gateway { rel, address });
            }
        }
    }
    Ok((out, preferred))
}

/// The states REPORT TARGET PORT GROUPS gives (see the module text), from
/// a roll call now, so that every gateway answers from the same facts (a
/// few milliseconds while all answer; [`ROLL_CALL_TIMEOUT_MS`] while one
/// is silent). The last roll call's when this one fails.
pub(super) fn port_groups(core: &Core, group: u16, rel: u16) -> io::Result<Vec<PortGroup>> {
    if lock(&core.alua.me).is_none() {
        core.alua.serve_as(group, rel);
    }
    match survey(core) {
        Ok((view, _, _)) => Ok(view),
        Err(e) => lock(&core.alua.view).clone().ok_or(e),
    }
}

/// The group set preferred if it is live, else the lowest live group,
/// active/optimized; other live ones non-optimized; the silent ones
/// unavailable.
fn states(gws: &BTreeMap<u16, Gateway>, live: &[u16], set: Option<u16>) -> Vec<PortGroup> {
    let set = set.filter(|g| live.contains(g));
    let preferred = set.or_else(|| live.first().copied());
    gws.iter()
        .map(|(&id, gw)| PortGroup {
            id,
            preferred: Some(id) == set,
            state: if Some(id) == preferred {
                AccessState::ActiveOptimized
            } else if live.contains(&id) {
                AccessState::ActiveNonOptimized
            } else {
                AccessState::Unavailable
            },
            ports: vec![gw.rel],
        })
        .collect()
}

/// Whether a group known before is in another state now (a group that
/// joins is no change of state; one that was active/optimized and went
/// is).
fn states_changed(old: &[PortGroup], new: &[PortGroup]) -> bool {
    old.iter().any(|o| match new.iter().find(|n| n.id == o.id) {
        Some(n) => n.state != o.state,
        None => o.state == AccessState::ActiveOptimized,
    })
}

/// The acknowledgement payloads in librados' notify reply: le32 count,
/// then per ack le64 gid, le64 cookie, le32 length and the payload; then
/// the timed-out watchers (not needed here). `None` if malformed.
pub(super) fn parse_acks(b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        take(16)?; // gid, cookie
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        out.push(take(len)?.to_vec());
    }
    Some(out)
}

/// Whether two client addresses as Ceph prints them (`ip:port/nonce`,
/// or a vector `[v2:ip:port/nonce,v1:...]`) name the same client: the
/// same nonce, which is what makes a client instance unique.
pub(super) fn same_client(a: &str, b: &str) -> bool {
    fn nonces(s: &str) -> impl Iterator<Item = &str> {
        s.split('/').skip(1).map(|t| {
            let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            &t[..end]
        })
    }
    nonces(a).any(|x| !x.is_empty() && nonces(b).any(|y| y == x))
}

impl Core {
    fn set_xattr(&self, name: &str, val: &[u8]) -> io::Result<()> {
        let api = self.conn.api;
        let name = cstr(name)?;
        // SAFETY: a live ioctx, C strings and a buffer of the length given.
        let r = unsafe {
            (api.rados_setxattr)(
                self.conn.ioctx,
                self.oid.as_ptr(),
                name.as_ptr(),
                val.as_ptr().cast(),
                val.len(),
            )
        };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        Ok(())
    }

    fn remove_xattr(&self, name: &str) -> io::Result<()> {
        let name = cstr(name)?;
        // SAFETY: a live ioctx and C strings.
        let r = unsafe {
            (self.conn.api.rados_rmxattr)(self.conn.ioctx, self.oid.as_ptr(), name.as_ptr())
        };
        if r < 0 && r != -libc::ENODATA {
            return Err(os_err(r.into()));
        }
        Ok(())
    }

    /// The state object's extended attributes.
    fn xattrs(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        let api = self.conn.api;
        let mut it: super::ffi::XattrIter = std::ptr::null_mut();
        // SAFETY: a live ioctx and C string, an out pointer for the
        // iterator, ended below.
        let r = unsafe { (api.rados_getxattrs)(self.conn.ioctx, self.oid.as_ptr(), &mut it) };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        let mut out = Vec::new();
        loop {
            let (mut name, mut val, mut len) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: a live iterator and out pointers; what they point to
            // stays valid until the next call.
            let r = unsafe { (api.rados_getxattrs_next)(it, &mut name, &mut val, &mut len) };
            if r < 0 || name.is_null() {
                break;
            }
            // SAFETY: as above; `val` has `len` bytes (or is NULL).
            let entry = unsafe {
                (
                    std::ffi::CStr::from_ptr(name)
                        .to_string_lossy()
                        .into_owned(),
                    if val.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(val.cast::<u8>(), len).to_vec()
                    },
                )
            };
            out.push(entry);
        }
        // SAFETY: the iterator from getxattrs, ended once.
        unsafe { (api.rados_getxattrs_end)(it) };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(rel: u16) -> Gateway {
        Gateway {
            rel,
            address: format!("127.0.0.1:0/{rel}"),
        }
    }

    #[test]
    fn the_lowest_live_group_is_preferred_and_silent_ones_unavailable() {
        let gws: BTreeMap<u16, Gateway> = [(1, gw(1)), (2, gw(2)), (3, gw(3))].into();
        let s = |live: &[u16]| -> Vec<(u16, AccessState)> {
            states(&gws, live, None)
                .iter()
                .map(|p| (p.id, p.state))
                .collect()
        };
        use AccessState::*;
        assert_eq!(
            s(&[1, 2, 3]),
            [
                (1, ActiveOptimized),
                (2, ActiveNonOptimized),
                (3, ActiveNonOptimized)
            ]
        );
        assert_eq!(
            s(&[2, 3]),
            [
                (1, Unavailable),
                (2, ActiveOptimized),
                (3, ActiveNonOptimized)
            ]
        );
        let before = states(&gws, &[1, 2, 3], None);
        assert!(states_changed(&before, &states(&gws, &[2, 3], None)));
        assert!(!states_changed(&before, &states(&gws, &[1, 2, 3], None)));
        // A group joining changes no state.
        let two: BTreeMap<u16, Gateway> = [(1, gw(1)), (2, gw(2))].into();
        assert!(!states_changed(&states(&two, &[1, 2], None), &before));
        // SET TARGET PORT GROUPS' choice wins while it is live.
        let set = states(&gws, &[1, 2, 3], Some(3));
        assert_eq!(set[2].state, ActiveOptimized);
        assert!(set[2].preferred && !set[0].preferred);
        assert_eq!(set[0].state, ActiveNonOptimized);
        let gone = states(&gws, &[1, 2], Some(3));
        assert_eq!(gone[0].state, ActiveOptimized);
        assert_eq!(gone[2].state, Unavailable);
    }

    #[test]
    fn notify_replies_parse_and_refuse_damage() {
        let mut b = Vec::new();
        b.extend_from_slice(&2u32.to_le_bytes());
        for (gid, p) in [(7u64, &b"1"[..]), (9, &b"2"[..])] {
            b.extend_from_slice(&gid.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(p);
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_acks(&b), Some(vec![b"1".to_vec(), b"2".to_vec()]));
        for cut in 0..b.len() - 4 {
            assert_eq!(parse_acks(&b[..cut]), None, "cut at {cut}");
        }
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_acks(&huge), None);
    }

    #[test]
    fn lock_owners_match_the_client_addresses_they_name() {
        assert!(same_client(
            "127.0.0.1:0/1658206537",
            "127.0.0.1:0/1658206537"
        ));
        assert!(same_client(
            "10.0.0.5:0/42",
            "[v2:10.0.0.5:0/42,v1:10.0.0.5:0/42]"
        ));
        assert!(!same_client(
            "127.0.0.1:0/1658206537",
            "127.0.0.1:0/1658206538"
        ));
        assert!(!same_client("127.0.0.1:0/", "127.0.0.1:0/"));
        assert!(!same_client("garbage", "garbage"));
    }
}
