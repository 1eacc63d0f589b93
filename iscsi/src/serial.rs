//! Sequence numbers with RFC 1982 serial arithmetic (RFC 7143 §4.2.2.1).

use std::cmp::Ordering;

macro_rules! serial {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u32);

        impl $name {
            /// The next number, wrapping.
            pub fn next(self) -> Self {
                $name(self.0.wrapping_add(1))
            }
            pub fn plus(self, n: u32) -> Self {
                $name(self.0.wrapping_add(n))
            }
            /// RFC 1982 comparison; `None` when the two are exactly 2^31 apart.
            pub fn serial_cmp(self, other: Self) -> Option<Ordering> {
                let (a, b) = (self.0, other.0);
                if a == b {
                    Some(Ordering::Equal)
                } else if (a < b && b - a < 1 << 31) || (a > b && a - b > 1 << 31) {
                    Some(Ordering::Less)
                } else if (a < b && b - a > 1 << 31) || (a > b && a - b < 1 << 31) {
                    Some(Ordering::Greater)
                } else {
                    None
                }
            }
            pub fn lt(self, other: Self) -> bool {
                self.serial_cmp(other) == Some(Ordering::Less)
            }
            pub fn le(self, other: Self) -> bool {
                matches!(
                    self.serial_cmp(other),
                    Some(Ordering::Less | Ordering::Equal)
                )
            }
            /// How far `self` lies after `base` (wrapping difference).
            pub fn distance_from(self, base: Self) -> u32 {
                self.0.wrapping_sub(base.0)
            }
        }
    };
}

serial!(CmdSn, "Command sequence number.");
serial!(StatSn, "Status sequence number.");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps() {
        assert!(CmdSn(u32::MAX).lt(CmdSn(0)));
        assert!(CmdSn(5).lt(CmdSn(6)));
        assert!(!CmdSn(6).lt(CmdSn(5)));
        assert_eq!(CmdSn(0).serial_cmp(CmdSn(1 << 31)), None);
        assert_eq!(CmdSn(3).distance_from(CmdSn(u32::MAX)), 4);
    }
}
