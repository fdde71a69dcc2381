//! The allocation bitmap: one bit per `2^order_per_bit` pages, set = taken.
//!
//! [`Bitmap::find_area`] is Linux's `bitmap_find_next_zero_area_off`: find the next free bit,
//! align it, and check that the `count` bits from there are free; if a taken bit is in the
//! way, start again after it. Both inner searches go a 64-bit word at a time.
//!
//! On a large, fragmented region a word at a time is still a walk over every word, so the
//! bitmap keeps a summary: two smaller bitmaps of the same type, one bit per word, which
//! have summaries of their own down to a single word. Runs of full or of empty words are
//! crossed a summary word (64 words) at a time, and a request of `count >= 127` bits, whose
//! free run must hold `m = (count + 1) / 64 - 1` wholly free words in a row, first looks for
//! such a row with the same search one level up (`used.find_area(.., m, ..)`):
//!
//! ```text
//!  summary.full   0 1 1 1 0 ...   bit w: word w has no free bit   (each with its own
//!  summary.used   1 1 1 1 0 ...   bit w: word w has a taken bit    summary, recursively)
//!  words          w0 w1 w2 w3 w4  64 bits each; bits past the end read as taken
//! ```
//!
//! [`find_area_naive`] is the same search a bit at a time: the test oracle and the baseline
//! of the benchmark.

use std::fmt::Write as _;

/// Bits per word.
const WORD: u64 = 64;

/// An allocation bitmap, with or without summary levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// The bits; the padding bits of the last word are kept set, so no search finds them free.
    words: Vec<u64>,
    nbits: u64,
    summary: Option<Box<Summary>>,
}

/// One bit per word of the bitmap above, for each of two questions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    /// Bit `w`: word `w` is full (no free bit).
    full: Bitmap,
    /// Bit `w`: word `w` has a taken bit (is not wholly free).
    used: Bitmap,
}

impl Bitmap {
    /// An all-free bitmap of `nbits` bits with summary levels (what the allocator uses).
    pub fn new(nbits: u64) -> Self {
        Self::build(nbits, true)
    }

    /// An all-free bitmap without summary levels (a plain word-at-a-time search).
    pub fn without_summary(nbits: u64) -> Self {
        Self::build(nbits, false)
    }

    fn build(nbits: u64, summary: bool) -> Self {
        let nwords = nbits.div_ceil(WORD);
        let mut map = Bitmap {
            words: vec![0; nwords as usize],
            nbits,
            // A bitmap of one word is its own summary.
            summary: (summary && nwords > 1).then(|| {
                Box::new(Summary {
                    full: Bitmap::new(nwords),
                    used: Bitmap::new(nwords),
                })
            }),
        };
        if !nbits.is_multiple_of(WORD) {
            map.words[nwords as usize - 1] = !0 << (nbits % WORD);
            map.refresh_summary(nwords as usize - 1);
        }
        map
    }
    /// Heap bytes the bitmap and its summary levels take.
    pub fn heap_bytes(&self) -> u64 {
        let own = self.words.len() as u64 * 8;
        own + self
            .summary
            .as_ref()
            .map_or(0, |s| s.full.heap_bytes() + s.used.heap_bytes())
    }

    /// Number of bits.
    pub fn nbits(&self) -> u64 {
        self.nbits
    }

    /// Whether summary levels are kept.
    pub fn has_summary(&self) -> bool {
        self.summary.is_some()
    }

    /// Whether bit `i` is taken (bits past the end read as taken).
    pub fn test(&self, i: u64) -> bool {
        i >= self.nbits || self.words[(i / WORD) as usize] >> (i % WORD) & 1 == 1
    }

    /// Mark `[start, start + count)` taken (clamped to the bitmap).
    pub fn set_range(&mut self, start: u64, count: u64) {
        self.update_range(start, count, true);
    }

    /// Mark `[start, start + count)` free (clamped to the bitmap).
    pub fn clear_range(&mut self, start: u64, count: u64) {
        self.update_range(start, count, false);
    }

    /// Whether every bit of `[start, start + count)` is free (false if it leaves the bitmap).
    pub fn is_range_free(&self, start: u64, count: u64) -> bool {
        match start.checked_add(count) {
            Some(end) if end <= self.nbits => self.next_used(start, end) >= end,
            _ => false,
        }
    }

    /// Whether every bit of `[start, start + count)` is taken (false if it leaves the bitmap).
    pub fn is_range_used(&self, start: u64, count: u64) -> bool {
        match start.checked_add(count) {
            Some(end) if end <= self.nbits => next_one(&self.words, start, end, !0) >= end,
            _ => false,
        }
    }

    /// Number of taken bits.
    pub fn count_used(&self) -> u64 {
        let ones: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        ones - self.padding()
    }

    /// Length of the longest run of free bits.
    pub fn largest_free(&self) -> u64 {
        let (mut best, mut run) = (0, 0);
        for &w in &self.words {
            if w == 0 {
                run += WORD;
                continue;
            }
            best = best
                .max(run + u64::from(w.trailing_zeros()))
                .max(longest_zero_run(w));
            run = u64::from(w.leading_zeros());
        }
        best.max(run)
    }

    /// `[start, end)` widened over the free bits on both sides: the free run around a free
    /// bit `pos` is `free_span(pos, pos)`.
    pub fn free_span(&self, start: u64, end: u64) -> (u64, u64) {
        let low = self.prev_used(start).map_or(0, |u| u + 1);
        (low.min(start), self.next_used(end, self.nbits).max(end))
    }

    /// The bits as hex, one 16-digit group per 64 bits, lowest bits first; inside a group
    /// bit 0 is the last digit's lowest bit (as Linux prints a `u64`).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(self.words.len() * 16);
        for (i, &w) in self.words.iter().enumerate() {
            let w = if i + 1 == self.words.len() {
                w & !self.padding_mask()
            } else {
                w
            };
            let _ = write!(s, "{w:016x}");
        }
        s
    }

    /// First `i >= start` such that `[i, i + count)` is free and `(i + offset) & mask == 0`
    /// (`mask` = 2^k - 1), or `None`. Linux's `bitmap_find_next_zero_area_off`.
    pub fn find_area(&self, start: u64, count: u64, mask: u64, offset: u64) -> Option<u64> {
        if count == 0 || count > self.nbits || mask & mask.wrapping_add(1) != 0 {
            return None;
        }
        let mut start = start;
        loop {
            start = self.skip_to_free_words(start, count)?;
            let idx = align_index(self.next_free(start), mask, offset)?;
            let end = idx.checked_add(count).filter(|&e| e <= self.nbits)?;
            let used = self.next_used(idx, end);
            if used >= end {
                return Some(idx);
            }
            // Every start up to `used` would cover it; `used + 1 > start` makes progress.
            start = used + 1;
        }
    }

    /// A free run of `count` bits holds `m = (count + 1) / 64 - 1` wholly free words in a
    /// row. Find the first such row at or after `start` one level up, and move `start` to
    /// where a run holding it could begin; `None` if there is no such row (no fit at all).
    /// A no-op for runs shorter than 127 bits (m = 0), or without a summary.
    fn skip_to_free_words(&self, start: u64, count: u64) -> Option<u64> {
        let m = ((count + 1) / WORD).saturating_sub(1);
        let Some(s) = self.summary.as_ref().filter(|_| m > 0) else {
            return Some(start);
        };
        let row = s.used.find_area(start.div_ceil(WORD), m, 0, 0)?;
        Some(start.max(((row + m) * WORD).saturating_sub(count)))
    }

    /// First free bit at or after `from`, or `nbits`.
    fn next_free(&self, from: u64) -> u64 {
        let Some(s) = &self.summary else {
            return next_one(&self.words, from, self.nbits, !0);
        };
        if from >= self.nbits {
            return self.nbits;
        }
        let w = from / WORD;
        let x = !self.words[w as usize] & (!0 << (from % WORD));
        if x != 0 {
            return (w * WORD + u64::from(x.trailing_zeros())).min(self.nbits);
        }
        // Most free runs are near: look at the next word before asking the summary.
        if let Some(&next) = self.words.get(w as usize + 1)
            && next != !0
        {
            return ((w + 1) * WORD + u64::from(next.trailing_ones())).min(self.nbits);
        }
        let w = s.full.next_free(w + 2);
        if w >= s.full.nbits {
            return self.nbits;
        }
        let x = !self.words[w as usize];
        (w * WORD + u64::from(x.trailing_zeros())).min(self.nbits)
    }

    /// First taken bit in `[from, end)`, or `end`.
    fn next_used(&self, from: u64, end: u64) -> u64 {
        let Some(s) = &self.summary else {
            return next_one(&self.words, from, end, 0);
        };
        let end = end.min(self.nbits);
        if from >= end {
            return end;
        }
        let w = from / WORD;
        let x = self.words[w as usize] & (!0 << (from % WORD));
        if x != 0 {
            return (w * WORD + u64::from(x.trailing_zeros())).min(end);
        }
        // Most free runs end near: look at the next word before asking the summary.
        if let Some(&next) = self.words.get(w as usize + 1)
            && next != 0
        {
            return ((w + 1) * WORD + u64::from(next.trailing_zeros())).min(end);
        }
        let w = s.used.next_used(w + 2, end.div_ceil(WORD));
        if w * WORD >= end {
            return end;
        }
        let x = self.words[w as usize];
        (w * WORD + u64::from(x.trailing_zeros())).min(end)
    }

    /// Last taken bit before `pos`, if any (only compaction looks backwards).
    fn prev_used(&self, pos: u64) -> Option<u64> {
        let pos = pos.min(self.nbits);
        if pos == 0 {
            return None;
        }
        let mut w = ((pos - 1) / WORD) as usize;
        let mut x = self.words[w] & (!0 >> (WORD - 1 - (pos - 1) % WORD));
        loop {
            if x != 0 {
                return Some(w as u64 * WORD + WORD - 1 - u64::from(x.leading_zeros()));
            }
            w = w.checked_sub(1)?;
            x = self.words[w];
        }
    }

    fn update_range(&mut self, start: u64, count: u64, set: bool) {
        let end = start.saturating_add(count).min(self.nbits);
        if start >= end {
            return;
        }
        let (first, last) = (start / WORD, (end - 1) / WORD);
        for w in first..=last {
            let lo = if w == first { start % WORD } else { 0 };
            let hi = if w == last {
                (end - 1) % WORD
            } else {
                WORD - 1
            };
            let mask = (!0 << lo) & (!0 >> (WORD - 1 - hi));
            let w = w as usize;
            if set {
                self.words[w] |= mask;
            } else {
                self.words[w] &= !mask;
            }
            self.refresh_summary(w);
        }
    }

    fn refresh_summary(&mut self, w: usize) {
        let word = self.words[w];
        if let Some(s) = &mut self.summary {
            s.full.put(w as u64, word == !0);
            s.used.put(w as u64, word != 0);
        }
    }

    /// Set bit `i` to `value`; the levels below change only when its word changes state.
    fn put(&mut self, i: u64, value: bool) {
        let (w, bit) = ((i / WORD) as usize, 1u64 << (i % WORD));
        let old = self.words[w];
        let new = if value { old | bit } else { old & !bit };
        if new != old {
            self.words[w] = new;
            self.refresh_summary(w);
        }
    }

    fn padding_mask(&self) -> u64 {
        match self.nbits % WORD {
            0 => 0,
            r => !0 << r,
        }
    }

    fn padding(&self) -> u64 {
        u64::from(self.padding_mask().count_ones())
    }

    /// Every summary level agrees with the level above it (tests only).
    #[cfg(test)]
    pub(crate) fn summary_is_consistent(&self) -> bool {
        let padding = self.padding_mask();
        if self.words.last().is_some_and(|&w| w & padding != padding) {
            return false;
        }
        let Some(s) = &self.summary else {
            return true;
        };
        let agrees = self.words.iter().enumerate().all(|(w, &word)| {
            s.full.test(w as u64) == (word == !0) && s.used.test(w as u64) == (word != 0)
        });
        agrees && s.full.summary_is_consistent() && s.used.summary_is_consistent()
    }
}

/// The same search as [`Bitmap::find_area`], a bit at a time (Linux's algorithm with
/// `test_bit` in place of `find_next_bit`): the reference for tests and the benchmark.
pub fn find_area_naive(
    map: &Bitmap,
    start: u64,
    count: u64,
    mask: u64,
    offset: u64,
) -> Option<u64> {
    if count == 0 || count > map.nbits() || mask & mask.wrapping_add(1) != 0 {
        return None;
    }
    let mut start = start;
    loop {
        let mut idx = start;
        while idx < map.nbits() && map.test(idx) {
            idx += 1;
        }
        let idx = align_index(idx, mask, offset)?;
        let end = idx.checked_add(count).filter(|&e| e <= map.nbits())?;
        let mut i = idx;
        while i < end && !map.test(i) {
            i += 1;
        }
        if i == end {
            return Some(idx);
        }
        start = i + 1;
    }
}

/// Round `idx` up so that `idx + offset` is a multiple of `mask + 1` (Linux's
/// `__ALIGN_MASK(index + align_offset, align_mask) - align_offset`); `None` on overflow.
fn align_index(idx: u64, mask: u64, offset: u64) -> Option<u64> {
    let aligned = idx.checked_add(offset)?.checked_add(mask)? & !mask;
    aligned.checked_sub(offset)
}

/// First bit `i` in `[from, end)` set in `words[i / 64] ^ flip`, or `end`: `flip = 0` finds a
/// set bit, `flip = !0` a clear one. One word per step, as Linux's `find_next_bit`.
fn next_one(words: &[u64], from: u64, end: u64, flip: u64) -> u64 {
    if from >= end {
        return end;
    }
    let mut w = (from / WORD) as usize;
    let mut x = (words[w] ^ flip) & (!0 << (from % WORD));
    loop {
        if x != 0 {
            return (w as u64 * WORD + u64::from(x.trailing_zeros())).min(end);
        }
        w += 1;
        if w as u64 * WORD >= end {
            return end;
        }
        x = words[w] ^ flip;
    }
}

/// Length of the longest run of zero bits inside `w`: each step shortens every run by one.
fn longest_zero_run(w: u64) -> u64 {
    let (mut z, mut n) = (!w, 0);
    while z != 0 {
        z &= z << 1;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn both(nbits: u64) -> [Bitmap; 2] {
        [Bitmap::new(nbits), Bitmap::without_summary(nbits)]
    }

    #[test]
    fn ranges_across_words() {
        for mut m in both(200) {
            m.set_range(60, 10);
            assert!(m.is_range_used(60, 10) && !m.test(59) && !m.test(70));
            assert_eq!(m.count_used(), 10);
            assert!(m.is_range_free(0, 60) && !m.is_range_free(0, 61));
            m.clear_range(62, 3);
            assert_eq!(m.count_used(), 7);
            // Clamped, never a panic.
            m.set_range(190, u64::MAX);
            assert_eq!(m.count_used(), 17);
            assert!(!m.is_range_free(199, 2) && !m.is_range_used(u64::MAX, 2));
            assert!(m.summary_is_consistent());
        }
    }

    #[test]
    fn padding_is_never_free() {
        for m in both(70) {
            assert_eq!(m.find_area(0, 70, 0, 0), Some(0));
            assert_eq!(m.find_area(1, 70, 0, 0), None);
            assert_eq!(m.find_area(0, 71, 0, 0), None);
            assert_eq!(m.largest_free(), 70);
            assert_eq!(m.count_used(), 0);
            assert!(m.test(70) && m.test(u64::MAX));
        }
    }

    #[test]
    fn first_fit_with_alignment_and_offset() {
        for mut m in both(1024) {
            m.set_range(0, 5);
            assert_eq!(m.find_area(0, 3, 0, 0), Some(5));
            assert_eq!(m.find_area(0, 3, 7, 0), Some(8));
            // (i + 2) a multiple of 8: 6, then 14.
            assert_eq!(m.find_area(0, 3, 7, 2), Some(6));
            m.set_range(8, 1);
            assert_eq!(m.find_area(0, 3, 7, 2), Some(14));
            assert_eq!(m.find_area(15, 3, 7, 2), Some(22));
            // 130 bits (the whole-free-word shortcut) after the taken bit 8.
            assert_eq!(m.find_area(0, 130, 0, 0), Some(9));
            assert_eq!(m.find_area(0, 130, 63, 0), Some(64));
        }
    }

    #[test]
    fn large_requests_jump_to_rows_of_free_words() {
        for mut m in both(64 * 200) {
            // Free rows of 10, 20 and 40 words between taken bits.
            m.set_range(0, 64 * 200);
            for (first, len) in [(5, 10), (30, 20), (100, 40)] {
                m.clear_range(first * 64 + 3, len * 64 - 6);
            }
            assert_eq!(m.find_area(0, 64 * 10 - 6, 0, 0), Some(5 * 64 + 3));
            assert_eq!(m.find_area(0, 64 * 10 - 5, 0, 0), Some(30 * 64 + 3));
            assert_eq!(m.find_area(0, 64 * 40 - 6, 0, 0), Some(100 * 64 + 3));
            assert_eq!(m.find_area(0, 64 * 40 - 5, 0, 0), None);
            assert_eq!(m.find_area(0, 64 * 20, 63, 0), Some(101 * 64));
        }
    }

    #[test]
    fn bad_search_arguments_find_nothing() {
        for m in both(256) {
            assert_eq!(m.find_area(0, 0, 0, 0), None);
            assert_eq!(m.find_area(0, 257, 0, 0), None);
            assert_eq!(m.find_area(u64::MAX, 1, 0, 0), None);
            assert_eq!(m.find_area(0, 1, 5, 0), None, "mask not 2^k - 1");
            assert_eq!(m.find_area(0, 1, u64::MAX >> 1, u64::MAX), None);
            assert_eq!(find_area_naive(&m, 0, 1, u64::MAX >> 1, u64::MAX), None);
        }
        let empty = Bitmap::new(0);
        assert_eq!(empty.find_area(0, 1, 0, 0), None);
        assert_eq!((empty.largest_free(), empty.to_hex()), (0, String::new()));
    }

    #[test]
    fn largest_free_and_runs() {
        let mut m = Bitmap::new(300);
        assert_eq!(m.largest_free(), 300);
        m.set_range(10, 1);
        m.set_range(100, 1);
        assert_eq!(m.largest_free(), 199);
        assert_eq!(m.free_span(50, 50), (11, 100));
        assert_eq!(m.free_span(0, 0), (0, 10));
        assert_eq!(m.free_span(250, 250), (101, 300));
        // Around a taken range: the free runs touching it.
        assert_eq!(m.free_span(100, 101), (11, 300));
        m.set_range(0, 300);
        assert_eq!(m.largest_free(), 0);
    }

    #[test]
    fn hex_dump() {
        let mut m = Bitmap::new(68);
        m.set_range(0, 4);
        m.set_range(64, 1);
        assert_eq!(m.to_hex(), "000000000000000f0000000000000001");
    }

    fn random_map(nbits: u64, runs: &[(u16, u16)], summary: bool) -> Bitmap {
        let mut m = Bitmap::build(nbits, summary);
        let mut pos = 0;
        for &(free, used) in runs {
            pos += u64::from(free);
            m.set_range(pos, u64::from(used));
            pos += u64::from(used);
        }
        m
    }

    proptest! {
        #[test]
        fn word_search_equals_the_naive_search(
            // Up to 300k bits: three summary levels.
            nbits in prop_oneof![1u64..2000, 4000u64..300_000],
            runs in prop::collection::vec((0u16..3000, 0u16..1500), 0..200),
            frees in prop::collection::vec((0u64..300_000, 0u64..5000), 0..20),
            start in 0u64..2100,
            count in prop_oneof![1u64..140, 1u64..2000, 1u64..20_000],
            align_order in 0u32..13,
            offset in 0u64..4096,
        ) {
            let mask = (1u64 << align_order) - 1;
            let offset = offset & mask;
            let mut with = random_map(nbits, &runs, true);
            let mut without = random_map(nbits, &runs, false);
            for &(at, len) in &frees {
                with.clear_range(at, len);
                without.clear_range(at, len);
            }
            let expected = find_area_naive(&without, start, count, mask, offset);
            prop_assert_eq!(with.find_area(start, count, mask, offset), expected);
            prop_assert_eq!(without.find_area(start, count, mask, offset), expected);
            prop_assert!(with.summary_is_consistent());
            let naive_largest = (0..nbits)
                .fold((0u64, 0u64), |(best, run), i| {
                    if with.test(i) { (best, 0) } else { (best.max(run + 1), run + 1) }
                })
                .0;
            prop_assert_eq!(with.largest_free(), naive_largest);
            prop_assert_eq!(with.count_used(), (0..nbits).filter(|&i| with.test(i)).count() as u64);
        }
    }
}
