//! End-to-end data verification for load runs (`rtgt-load --verify`).
//!
//! Each session owns a region of the LUN, cut into units of the smallest
//! transfer. Every unit written carries a pattern made from the session,
//! the unit's number and a generation, so what is read back can be checked
//! against the last write that was acknowledged (and a stray write, a
//! stale read or a torn transfer says which unit and which generation it
//! held instead). Two commands in flight never overlap, so the expected
//! contents are always defined. Units nobody wrote in this run, or whose
//! last write ended in an error, are not checked.

use std::fmt;

/// Generation 0: the unit's contents are unknown.
const UNKNOWN: u32 = 0;

/// A unit's header: magic, session, unit, generation.
const MAGIC: u32 = 0x7274_6776; // "rtgv"

/// One session's region and what it should hold.
pub struct Region {
    session: u32,
    /// First LBA of the region.
    base_lba: u64,
    /// Blocks per unit.
    unit_blocks: u32,
    /// Bytes per unit.
    unit_bytes: usize,
    /// Last acknowledged generation of each unit.
    gens: Vec<u32>,
    /// Units a command in flight covers.
    busy: Vec<bool>,
    next_gen: u32,
}

/// A command the region planned: where, and for a write its generations.
#[derive(Debug, Clone)]
pub struct Planned {
    /// First unit.
    pub start: usize,
    /// Units covered.
    pub units: usize,
    /// For a write, the generation each unit gets; empty for a read.
    gens: Vec<u32>,
}

impl Planned {
    pub fn is_write(&self) -> bool {
        !self.gens.is_empty()
    }
}

/// A unit that did not hold what it should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub session: u32,
    pub unit: usize,
    pub lba: u64,
    pub expected_gen: u32,
    /// What the header read back says (session, unit, generation), when
    /// it is one of ours at all.
    pub found: Option<(u32, u32, u32)>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "session {} unit {} (LBA {}): expected generation {}, found {}",
            self.session,
            self.unit,
            self.lba,
            self.expected_gen,
            match self.found {
                Some((s, u, g)) => format!("session {s} unit {u} generation {g}"),
                None => "data that is not any write's".into(),
            }
        )
    }
}

/// Fill `out` with the pattern of `unit` at generation `gen`.
fn pattern(session: u32, unit: usize, gen: u32, out: &mut [u8]) {
    let head = [MAGIC, session, unit as u32, gen];
    for (i, h) in head.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&h.to_le_bytes());
    }
    let mut x =
        (u64::from(gen) << 40) ^ (u64::from(session) << 24) ^ unit as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in out[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

impl Region {
    /// `units` units of `unit_blocks` blocks of `block_size` bytes, from
    /// `base_lba`.
    pub fn new(
        session: u32,
        base_lba: u64,
        units: usize,
        unit_blocks: u32,
        block_size: u32,
    ) -> Region {
        Region {
            session,
            base_lba,
            unit_blocks,
            unit_bytes: (unit_blocks * block_size) as usize,
            gens: vec![UNKNOWN; units],
            busy: vec![false; units],
            next_gen: 1,
        }
    }

    pub fn units(&self) -> usize {
        self.gens.len()
    }

    /// The LBA and block count of a planned command.
    pub fn extent(&self, p: &Planned) -> (u64, u32) {
        (
            self.base_lba + (p.start as u64) * u64::from(self.unit_blocks),
            p.units as u32 * self.unit_blocks,
        )
    }

    /// Plan a command of `units` units starting at `start` if none of them
    /// is busy; a write also gets its data, appended to `data`.
    pub fn plan(
        &mut self,
        start: usize,
        units: usize,
        write: bool,
        data: &mut Vec<u8>,
    ) -> Option<Planned> {
        let end = start.checked_add(units)?;
        if end > self.units() || self.busy[start..end].iter().any(|b| *b) {
            return None;
        }
        self.busy[start..end].iter_mut().for_each(|b| *b = true);
        let mut gens = Vec::new();
        if write {
            let at = data.len();
            data.resize(at + units * self.unit_bytes, 0);
            for (i, u) in (start..end).enumerate() {
                let g = self.next_gen;
                // Skips UNKNOWN when it wraps.
                self.next_gen = self.next_gen.wrapping_add(1).max(1);
                gens.push(g);
                let o = at + i * self.unit_bytes;
                pattern(self.session, u, g, &mut data[o..o + self.unit_bytes]);
            }
        }
        Some(Planned { start, units, gens })
    }

    /// A write ended: `good` if acknowledged with GOOD, `unchanged` if the
    /// target refused it before it started (TASK SET FULL, BUSY: nothing
    /// was written); otherwise the units' contents are unknown.
    pub fn wrote(&mut self, p: &Planned, good: bool, unchanged: bool) {
        for (i, u) in (p.start..p.start + p.units).enumerate() {
            if good {
                self.gens[u] = p.gens[i];
            } else if !unchanged {
                self.gens[u] = UNKNOWN;
            }
            self.busy[u] = false;
        }
    }

    /// A read ended with `data` (None if it failed): the mismatches among
    /// the units whose contents are known.
    pub fn read(&mut self, p: &Planned, data: Option<&[u8]>) -> Vec<Mismatch> {
        let mut bad = Vec::new();
        let mut want = vec![0u8; self.unit_bytes];
        for (i, u) in (p.start..p.start + p.units).enumerate() {
            self.busy[u] = false;
            let gen = self.gens[u];
            let Some(data) = data else { continue };
            if gen == UNKNOWN {
                continue;
            }
            let got = data.get(i * self.unit_bytes..(i + 1) * self.unit_bytes);
            pattern(self.session, u, gen, &mut want);
            if got == Some(&want[..]) {
                continue;
            }
            let found = got.and_then(|g| {
                let w = |k: usize| u32::from_le_bytes(g[k * 4..k * 4 + 4].try_into().unwrap());
                (w(0) == MAGIC).then(|| (w(1), w(2), w(3)))
            });
            bad.push(Mismatch {
                session: self.session,
                unit: u,
                lba: self.base_lba + u as u64 * u64::from(self.unit_blocks),
                expected_gen: gen,
                found,
            });
        }
        bad
    }

    /// Bytes whose contents are known (acknowledged in this run).
    pub fn known_bytes(&self) -> u64 {
        self.gens.iter().filter(|g| **g != UNKNOWN).count() as u64 * self.unit_bytes as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_check_the_last_acknowledged_write() {
        let mut r = Region::new(3, 1000, 8, 8, 512);
        let mut d = Vec::new();
        let w = r.plan(2, 3, true, &mut d).unwrap();
        assert_eq!(r.extent(&w), (1016, 24));
        assert!(
            r.plan(4, 2, false, &mut Vec::new()).is_none(),
            "overlaps a write in flight"
        );
        r.wrote(&w, true, false);
        let rd = r.plan(0, 8, false, &mut Vec::new()).unwrap();
        // Units 0, 1 and 5.. are unknown: anything goes there.
        let mut back = vec![0xeeu8; 8 * 4096];
        back[2 * 4096..5 * 4096].copy_from_slice(&d);
        assert!(r.read(&rd, Some(&back)).is_empty());
        // A stale unit (an older generation) is named.
        let w2 = r.plan(3, 1, true, &mut Vec::new()).unwrap();
        r.wrote(&w2, true, false);
        let rd = r.plan(2, 3, false, &mut Vec::new()).unwrap();
        let bad = r.read(&rd, Some(&d));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].unit, 3);
        assert_eq!(bad[0].found, Some((3, 3, 2)));
        // A failed write leaves its units unknown; a refused one does not.
        let w3 = r.plan(2, 1, true, &mut Vec::new()).unwrap();
        r.wrote(&w3, false, true);
        let w4 = r.plan(4, 1, true, &mut Vec::new()).unwrap();
        r.wrote(&w4, false, false);
        assert_eq!(r.known_bytes(), 2 * 4096);
    }
}
