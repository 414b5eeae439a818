//! Pure bookkeeping: message content format, per-socket seq tracking and the
//! attribution of missing seqs to measurement windows. No I/O here, so all of it
//! is unit-tested.

/// What one received `message` frame meant for the socket that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A seq above everything seen so far (possibly leaving a gap below it).
    New,
    /// A seq that filled an earlier gap: delivered once, but out of order.
    Late,
    /// A seq this socket had already seen (or one at/below its start point).
    Duplicate,
}

/// Tracks the `seq`s one socket received from its room.
///
/// The socket is expected to receive every seq in `(base, end]`, exactly once and in
/// increasing order, where `base` is the room's `last_seq` from the `ready` frame (or,
/// if the server did not send one, the seq just below the first message seen) and `end`
/// is the highest seq any sender in the room got an `ack` for.
///
/// Gaps are kept as inclusive ranges, so memory stays tiny unless the server
/// actually loses or reorders messages.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    base: Option<u64>,
    last: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Inclusive ranges of seqs below `last` not (yet) received, ascending, disjoint.
    gaps: Vec<(u64, u64)>,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the starting point from the `ready` frame's `last_seq`. Only the first call
    /// counts (a resumed socket keeps its original start).
    pub fn set_base(&mut self, last_seq: u64) {
        if self.base.is_none() {
            self.base = Some(last_seq);
            self.last = last_seq;
        }
    }

    pub fn base(&self) -> Option<u64> {
        self.base
    }

    /// Highest seq seen (or the base when nothing arrived yet).
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Counts a message that carries no seq (`--deliveries-only`): received, not checked.
    pub fn count_unsequenced(&mut self) {
        self.received += 1;
    }

    pub fn observe(&mut self, seq: u64) -> Observed {
        let base = match self.base {
            Some(b) => b,
            None => {
                let b = seq.saturating_sub(1);
                self.base = Some(b);
                self.last = b;
                b
            }
        };
        self.received += 1;
        if seq > self.last {
            if seq > self.last + 1 {
                self.gaps.push((self.last + 1, seq - 1));
            }
            self.last = seq;
            return Observed::New;
        }
        if seq > base && self.fill_gap(seq) {
            self.out_of_order += 1;
            return Observed::Late;
        }
        self.duplicates += 1;
        Observed::Duplicate
    }

    fn fill_gap(&mut self, seq: u64) -> bool {
        // gaps are sorted and disjoint: find the one that may contain seq
        let i = self.gaps.partition_point(|&(_, hi)| hi < seq);
        let Some(&(lo, hi)) = self.gaps.get(i) else {
            return false;
        };
        if seq < lo {
            return false;
        }
        match (seq == lo, seq == hi) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i].1 = seq - 1;
                self.gaps.insert(i + 1, (seq + 1, hi));
            }
        }
        true
    }

    /// The seqs this socket should have had but never got, as inclusive ranges:
    /// unfilled gaps plus everything in `(last, end]`. With no base at all (no `ready`
    /// `last_seq` and no message) `fallback_base` is used as the start point.
    pub fn missing(&self, end: u64, fallback_base: u64) -> Vec<(u64, u64)> {
        let mut out = self.gaps.clone();
        let last = if self.base.is_some() {
            self.last
        } else {
            fallback_base
        };
        if end > last {
            out.push((last + 1, end));
        }
        out
    }

    #[cfg(test)]
    pub fn missing_count(&self, end: u64, fallback_base: u64) -> u64 {
        self.missing(end, fallback_base)
            .iter()
            .map(|&(a, b)| b - a + 1)
            .sum()
    }
}

/// `content` of a bench message: `<sender-id>:<counter>:<send-unix-nanos>`.
pub fn format_content(out: &mut String, sender_id: &str, counter: u64, send_ns: u64) {
    use std::fmt::Write;
    let _ = write!(out, "{sender_id}:{counter}:{send_ns}");
}

/// Parses `<sender-id>:<counter>:<send-unix-nanos>`.
pub fn parse_content(content: &str) -> Option<(&str, u64, u64)> {
    let (rest, ns) = content.rsplit_once(':')?;
    let (sender, counter) = rest.rsplit_once(':')?;
    if sender.is_empty() {
        return None;
    }
    Some((sender, counter.parse().ok()?, ns.parse().ok()?))
}

/// Whether a sender id (`<run-id>.<room>.<client>`) belongs to this run.
pub fn is_this_run(sender_id: &str, run_id: &str) -> bool {
    sender_id
        .strip_prefix(run_id)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The counter at the end of a `client_id` of the form `<sender-id>-<counter>`.
pub fn parse_client_counter(client_id: &str) -> Option<u64> {
    client_id.rsplit_once('-')?.1.parse().ok()
}

/// Maps seqs of one room to the measurement window their message was sent in, from
/// the senders' acks. Seqs nobody acked (other clients' messages, acks lost with a
/// dropped socket) are "unattributed".
#[derive(Debug, Default)]
pub struct AckIndex {
    seqs: Vec<u64>,
    /// (first index into `seqs`, window) for each run of equal windows.
    runs: Vec<(usize, u16)>,
}

impl AckIndex {
    pub fn new(mut log: Vec<(u64, u16)>) -> Self {
        log.sort_unstable_by_key(|&(s, _)| s);
        log.dedup_by_key(|&mut (s, _)| s);
        let mut runs: Vec<(usize, u16)> = Vec::new();
        for (i, &(_, w)) in log.iter().enumerate() {
            if runs.last().is_none_or(|&(_, rw)| rw != w) {
                runs.push((i, w));
            }
        }
        Self {
            seqs: log.into_iter().map(|(s, _)| s).collect(),
            runs,
        }
    }

    /// Adds to `per_window[w]` how many seqs of `[a, b]` were sent in window `w` and
    /// returns how many seqs of the range are not in the index.
    pub fn attribute(&self, a: u64, b: u64, per_window: &mut [u64]) -> u64 {
        if b < a {
            return 0;
        }
        let lo = self.seqs.partition_point(|&s| s < a);
        let hi = self.seqs.partition_point(|&s| s <= b);
        let known = (hi - lo) as u64;
        if hi > lo {
            let mut r = self.runs.partition_point(|&(start, _)| start <= lo) - 1;
            while r < self.runs.len() && self.runs[r].0 < hi {
                let start = self.runs[r].0.max(lo);
                let end = self.runs.get(r + 1).map_or(hi, |&(s, _)| s.min(hi));
                let w = usize::from(self.runs[r].1).min(per_window.len().saturating_sub(1));
                if let Some(slot) = per_window.get_mut(w) {
                    *slot += (end - start) as u64;
                }
                r += 1;
            }
        }
        (b - a + 1) - known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trip() {
        let mut s = String::new();
        format_content(&mut s, "k3x9f.2.0", 17, 1_763_740_000_123_456_789);
        assert_eq!(s, "k3x9f.2.0:17:1763740000123456789");
        assert_eq!(
            parse_content(&s),
            Some(("k3x9f.2.0", 17, 1_763_740_000_123_456_789))
        );
        assert!(is_this_run("k3x9f.2.0", "k3x9f"));
        assert!(!is_this_run("k3x9fz.2.0", "k3x9f"));
        assert!(!is_this_run("other", "k3x9f"));
    }

    #[test]
    fn content_rejects_foreign_text() {
        assert_eq!(parse_content("hello world"), None);
        assert_eq!(parse_content("a:b:c"), None);
        assert_eq!(parse_content(":1:2"), None);
        assert_eq!(parse_content("x:1:"), None);
        // a sender id with colons in it still parses from the right
        assert_eq!(parse_content("a:b:3:4"), Some(("a:b", 3, 4)));
    }

    #[test]
    fn client_counter() {
        assert_eq!(parse_client_counter("k3x9f.2.0-17"), Some(17));
        assert_eq!(parse_client_counter("nodash"), None);
        assert_eq!(parse_client_counter("a-b"), None);
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = SeqTracker::new();
        t.set_base(10);
        for s in 11..=20 {
            assert_eq!(t.observe(s), Observed::New);
        }
        assert_eq!(t.received(), 10);
        assert_eq!(t.duplicates(), 0);
        assert_eq!(t.out_of_order(), 0);
        assert_eq!(t.missing_count(20, 0), 0);
        // the room went on to 23 but this socket stopped at 20
        assert_eq!(t.missing(23, 0), vec![(21, 23)]);
        assert_eq!(t.missing_count(23, 0), 3);
    }

    #[test]
    fn duplicates_detected() {
        let mut t = SeqTracker::new();
        t.set_base(0);
        assert_eq!(t.observe(1), Observed::New);
        assert_eq!(t.observe(1), Observed::Duplicate);
        assert_eq!(t.observe(2), Observed::New);
        assert_eq!(t.observe(1), Observed::Duplicate);
        // at/below the ready baseline: history replayed to a socket that did not ask
        let mut u = SeqTracker::new();
        u.set_base(5);
        assert_eq!(u.observe(5), Observed::Duplicate);
        assert_eq!(u.observe(3), Observed::Duplicate);
        assert_eq!(t.duplicates(), 2);
        assert_eq!(u.duplicates(), 2);
        assert_eq!(t.missing_count(2, 0), 0);
    }

    #[test]
    fn gaps_filled_late_are_out_of_order_not_loss() {
        let mut t = SeqTracker::new();
        t.set_base(0);
        assert_eq!(t.observe(1), Observed::New);
        assert_eq!(t.observe(5), Observed::New); // gap 2..=4
        assert_eq!(t.missing(5, 0), vec![(2, 4)]);
        assert_eq!(t.observe(3), Observed::Late); // splits the gap
        assert_eq!(t.missing(5, 0), vec![(2, 2), (4, 4)]);
        assert_eq!(t.observe(3), Observed::Duplicate);
        assert_eq!(t.observe(2), Observed::Late);
        assert_eq!(t.observe(4), Observed::Late);
        assert_eq!(t.missing_count(5, 0), 0);
        assert_eq!(t.out_of_order(), 3);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.received(), 6);
    }

    #[test]
    fn gap_edges() {
        let mut t = SeqTracker::new();
        t.set_base(0);
        t.observe(10); // gap 1..=9
        assert_eq!(t.observe(1), Observed::Late);
        assert_eq!(t.observe(9), Observed::Late);
        assert_eq!(t.missing(10, 0), vec![(2, 8)]);
        t.observe(20); // gap 11..=19
        assert_eq!(t.observe(15), Observed::Late);
        assert_eq!(t.missing(22, 0), vec![(2, 8), (11, 14), (16, 19), (21, 22)]);
        assert_eq!(t.missing_count(22, 0), 7 + 4 + 4 + 2);
    }

    #[test]
    fn loss_counts_unfilled_gaps_even_above_acked_end() {
        let mut t = SeqTracker::new();
        t.set_base(0);
        t.observe(1);
        t.observe(3);
        // seq 3 exists, so seq 2 was committed even if nobody's ack told us
        assert_eq!(t.missing_count(1, 0), 1);
    }

    #[test]
    fn base_from_first_message_without_ready() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(7), Observed::New);
        assert_eq!(t.base(), Some(6));
        assert_eq!(t.observe(8), Observed::New);
        assert_eq!(t.missing_count(9, 0), 1);
        // a socket that saw nothing uses the room's fallback start
        let empty = SeqTracker::new();
        assert_eq!(empty.missing(9, 6), vec![(7, 9)]);
    }

    #[test]
    fn set_base_only_once() {
        let mut t = SeqTracker::new();
        t.set_base(3);
        t.observe(4);
        t.set_base(50); // a reconnect's ready frame must not move the start
        assert_eq!(t.base(), Some(3));
        assert_eq!(t.missing_count(5, 0), 1);
    }

    #[test]
    fn ack_index_attribution() {
        // seqs 1..=4 acked in window 0, 5..=8 in window 1, 9 in window 0 (jitter at the
        // boundary), 10 in window 2; seq 11 not acked by anyone we know
        let mut log = vec![];
        for s in 1..=4 {
            log.push((s, 0u16));
        }
        for s in 5..=8 {
            log.push((s, 1));
        }
        log.push((10, 2));
        log.push((9, 0));
        log.push((9, 0)); // duplicate entries are harmless
        let idx = AckIndex::new(log);
        let mut w = vec![0u64; 3];
        assert_eq!(idx.attribute(3, 11, &mut w), 1);
        assert_eq!(w, vec![3, 4, 1]);
        let mut w = vec![0u64; 3];
        assert_eq!(idx.attribute(6, 6, &mut w), 0);
        assert_eq!(w, vec![0, 1, 0]);
        let mut w = vec![0u64; 3];
        assert_eq!(idx.attribute(20, 25, &mut w), 6);
        assert_eq!(w, vec![0, 0, 0]);
        assert_eq!(idx.attribute(5, 4, &mut w), 0);
        let empty = AckIndex::new(vec![]);
        assert_eq!(empty.attribute(1, 3, &mut w), 3);
    }
}
