//! Tamper evidence: every event carries the hash of the event before it on its subject
//! (`prev_hash`), so each subject is a chain. An event altered, removed or moved breaks the
//! link of the event after it.

use std::collections::HashMap;

use events::envelope::chain_hash;

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub subject: String,
    /// The stream sequence of the event whose link does not hold.
    pub sequence: u64,
    pub id: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The event before it on the subject was altered, or an event between them removed.
    Broken { before: Option<u64> },
    /// It follows an event that comes after it on the subject: events were swapped.
    Reordered { follows: u64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sequence, id, subject) = (self.sequence, &self.id, &self.subject);
        match self.kind {
            Kind::Broken { before: Some(before) } => write!(
                f,
                "{subject}: event {id} at sequence {sequence} does not follow the one before it (sequence {before}): \
                 that one was altered, or an event between them was removed"
            ),
            Kind::Broken { before: None } => write!(
                f,
                "{subject}: event {id} at sequence {sequence} is the first there but follows another: an earlier \
                 event was removed"
            ),
            Kind::Reordered { follows } => write!(
                f,
                "{subject}: event {id} at sequence {sequence} follows the event at sequence {follows}, which comes \
                 after it: events were reordered"
            ),
        }
    }
}

/// The end of one subject's chain as read so far, and its first break: memory per subject,
/// not per event.
#[derive(Debug, Clone, Default)]
struct Chain {
    last: Option<(u64, String)>,
    first_break: Option<Break>,
    /// The hash the broken event claims to follow: if an event with it comes later, the two
    /// were reordered.
    claimed: Option<String>,
}

/// Walks the chains as events are read.
#[derive(Debug, Default)]
pub struct Chains {
    subjects: HashMap<String, Chain>,
}

impl Chains {
    pub fn add(&mut self, subject: &str, sequence: u64, id: String, bytes: &[u8], prev_hash: Option<String>) {
        let hash = chain_hash(bytes);
        let chain = self.subjects.entry(subject.to_owned()).or_default();
        match &mut chain.first_break {
            Some(broken) if chain.claimed.as_ref() == Some(&hash) => {
                broken.kind = Kind::Reordered { follows: sequence };
                chain.claimed = None;
            }
            Some(_) => {}
            None if prev_hash != chain.last.as_ref().map(|(_, h)| h.clone()) => {
                let before = chain.last.as_ref().map(|(s, _)| *s);
                let kind = Kind::Broken { before };
                chain.first_break = Some(Break { subject: subject.to_owned(), sequence, id, kind });
                chain.claimed = prev_hash;
            }
            None => {}
        }
        chain.last = Some((sequence, hash));
    }

    pub fn subjects(&self) -> usize {
        self.subjects.len()
    }

    /// The first broken link of each subject, in stream order.
    pub fn breaks(&self) -> Vec<Break> {
        let mut breaks: Vec<Break> = self.subjects.values().filter_map(|c| c.first_break.clone()).collect();
        breaks.sort_by_key(|b| b.sequence);
        breaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` events on one subject, as bytes and their links.
    fn chain(n: usize) -> Vec<(Vec<u8>, Option<String>)> {
        let mut out: Vec<(Vec<u8>, Option<String>)> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|(bytes, _)| chain_hash(bytes));
            out.push((format!("event {i}").into_bytes(), prev));
        }
        out
    }

    fn walk(events: &[(Vec<u8>, Option<String>)]) -> Vec<Break> {
        let mut chains = Chains::default();
        for (i, (bytes, prev)) in events.iter().enumerate() {
            chains.add("s", i as u64 + 1, format!("e{i}"), bytes, prev.clone());
        }
        chains.breaks()
    }

    #[test]
    fn a_whole_chain_has_no_break() {
        assert_eq!(walk(&chain(5)), []);
    }

    #[test]
    fn an_altered_event_breaks_the_link_after_it() {
        let mut events = chain(5);
        events[2].0 = b"event 2, altered".to_vec();
        let breaks = walk(&events);
        assert_eq!(breaks.len(), 1);
        assert_eq!((breaks[0].sequence, &breaks[0].kind), (4, &Kind::Broken { before: Some(3) }));
    }

    #[test]
    fn a_removed_event_and_a_swap_are_named() {
        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(walk(&removed)[0].kind, Kind::Broken { before: Some(2) });
        let mut first_removed = chain(3);
        first_removed.remove(0);
        assert_eq!(walk(&first_removed)[0].kind, Kind::Broken { before: None });
        let mut swapped = chain(5);
        swapped.swap(1, 2);
        let breaks = walk(&swapped);
        assert_eq!((breaks[0].sequence, &breaks[0].kind), (2, &Kind::Reordered { follows: 3 }));
    }
}
