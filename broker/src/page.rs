//! Where a consume page ends: the one rule for pages read from the hot
//! tier and from the cold tier, so that the same records make the same
//! pages whichever tier holds them.

/// The budget of one consume page: at most `max_records` records and
/// about `max_bytes` bytes of records
/// ([`crate::batch::record_size`]); the first record
/// always fits, however large, so a consumer can always make progress.
#[derive(Debug, Clone, Copy)]
pub struct PageBudget {
    max_records: u64,
    max_bytes: u64,
    records: u64,
    bytes: u64,
}

impl PageBudget {
    /// An empty page with these limits.
    pub fn new(max_records: u64, max_bytes: u64) -> Self {
        Self {
            max_records,
            max_bytes,
            records: 0,
            bytes: 0,
        }
    }

    /// Whether a record of `size` bytes still fits; if so it is counted.
    pub fn admit(&mut self, size: usize) -> bool {
        let size = size as u64;
        if self.is_full() || (self.records > 0 && self.bytes + size > self.max_bytes) {
            return false;
        }
        self.records += 1;
        self.bytes += size;
        true
    }

    /// Whether no further record can fit, whatever its size.
    pub fn is_full(&self) -> bool {
        self.records >= self.max_records
    }

    /// Records admitted.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes admitted.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_always_fits_and_the_budget_cuts_after() {
        let mut page = PageBudget::new(10, 100);
        assert!(page.admit(500), "the first record, however large");
        assert!(!page.admit(1));
        let mut page = PageBudget::new(10, 100);
        assert!(page.admit(60));
        assert!(page.admit(40), "exactly at the budget");
        assert!(!page.admit(1));
        assert_eq!((page.records(), page.bytes()), (2, 100));
        let mut page = PageBudget::new(2, u64::MAX);
        assert!(page.admit(1) && page.admit(1));
        assert!(page.is_full() && !page.admit(0));
    }
}
