//! Which open sockets the heartbeat visits on a given tick (and, the same
//! way, which rooms the bus checks while presumed declared dead): the sockets are
//! kept in `n` slices and each tick takes the next slice in turn, so one
//! interval of `n` ticks visits every socket exactly once, and no tick
//! visits more than a slice. Plain Rust, no timers: the ticker
//! ([`OpenSessions::run_heartbeat`](super::open_sessions::OpenSessions::run_heartbeat))
//! calls [`Slices::next_slice`] every `interval / n`.
//!
//! Invariants (unit and property tests below):
//! - A socket stays in the slice it was put in until it is removed, so it
//!   is visited once every `n` ticks, at its own phase: the spacing of its
//!   visits is the interval, whatever comes and goes around it.
//! - A socket goes into a least-filled slice. A slice therefore never holds
//!   more than `ceil(peak / n)` sockets, `peak` being the most sockets ever
//!   open at once (bounded by `MAX_CONNECTIONS`): when a socket joins a slice
//!   of `m`, that slice is a smallest one, so `m ≤ floor((open − 1) / n)`
//!   and it then holds `m + 1 ≤ ceil(open / n)`; removals only shrink
//!   slices.

use std::collections::HashMap;
use std::time::Duration;

/// The heartbeat ticks about this often (see [`Slices::count_for`]). Short,
/// so that a tick is a few sockets' work: at 50 ms (80 sockets a tick at
/// 16,000 sockets) the bursts of pings and of the pongs that answer them
/// still showed in the p99 of deliveries (docs/PERFORMANCE.md, Scaling).
/// Ticks of empty slices are slept through (see [`Slices::empty_ahead`]),
/// so a process with few sockets does not wake 200 times a second.
pub const TICK_TARGET: Duration = Duration::from_millis(5);
/// At most this many slices: with a very long interval the tick period
/// grows instead (interval / `MAX_SLICES`). At most 4,000 length
/// comparisons (a few microseconds) pick a socket's slice.
pub const MAX_SLICES: usize = 4_000;

/// Sockets by number, in slices.
#[derive(Debug)]
pub struct Slices<T> {
    slices: Vec<HashMap<u64, T>>,
    /// The slice each socket is in.
    slice_of: HashMap<u64, usize>,
    /// The slice the next tick takes.
    next: usize,
}

impl<T: Clone> Slices<T> {
    /// `n` slices (at least one).
    pub fn new(n: usize) -> Self {
        Slices {
            slices: (0..n.max(1)).map(|_| HashMap::new()).collect(),
            slice_of: HashMap::new(),
            next: 0,
        }
    }

    /// The number of slices for a heartbeat `interval`: one per
    /// [`TICK_TARGET`] of it, from 1 to [`MAX_SLICES`].
    pub fn count_for(interval: Duration) -> usize {
        Self::count_with_tick(interval, TICK_TARGET)
    }

    /// The number of slices for ticks of about `tick` over `interval`,
    /// from 1 to [`MAX_SLICES`].
    pub fn count_with_tick(interval: Duration, tick: Duration) -> usize {
        let n = interval.as_nanos() / tick.as_nanos().max(1);
        usize::try_from(n)
            .unwrap_or(MAX_SLICES)
            .clamp(1, MAX_SLICES)
    }

    /// How many slices there are.
    pub fn count(&self) -> usize {
        self.slices.len()
    }

    /// How many sockets there are.
    pub fn sockets(&self) -> usize {
        self.slice_of.len()
    }

    /// Adds (or replaces) socket `number`. A new socket goes into a
    /// least-filled slice (see the module comment for why that bounds
    /// every slice); among equals, the one the ticker reaches last, so
    /// the sockets of a burst of connects spread over the whole interval.
    pub fn insert(&mut self, number: u64, value: T) {
        if let Some(&slice) = self.slice_of.get(&number) {
            self.slices[slice].insert(number, value);
            return;
        }
        let n = self.slices.len();
        // Walk backwards from the slice just taken (the farthest from the
        // next tick) and keep the first smallest one.
        let mut best = (self.next + n - 1) % n;
        for step in 1..n {
            let slice = (self.next + n - 1 - step) % n;
            if self.slices[slice].len() < self.slices[best].len() {
                best = slice;
            }
        }
        self.slices[best].insert(number, value);
        self.slice_of.insert(number, best);
    }

    /// Removes socket `number`, if present.
    pub fn remove(&mut self, number: u64) {
        if let Some(slice) = self.slice_of.remove(&number) {
            self.slices[slice].remove(&number);
        }
    }

    /// One tick: the sockets of the next slice, appended to `out` (which
    /// the caller may reuse from tick to tick). At most `ceil(peak / n)`.
    pub fn next_slice(&mut self, out: &mut Vec<T>) {
        out.extend(self.slices[self.next].values().cloned());
        self.next = (self.next + 1) % self.slices.len();
    }

    /// How many of the next ticks, at most `limit`, would take an empty
    /// slice: the ticker may sleep through them and take them all at its
    /// next wake-up (an idle process then wakes a few times a second, not
    /// at every tick). Never a whole round: at most `n - 1`.
    pub fn empty_ahead(&self, limit: usize) -> usize {
        let n = self.slices.len();
        (0..limit.min(n - 1))
            .take_while(|i| self.slices[(self.next + i) % n].is_empty())
            .count()
    }

    /// Every socket (shutdown: once, not per tick).
    pub fn all(&self) -> Vec<T> {
        self.slices
            .iter()
            .flat_map(|s| s.values().cloned())
            .collect()
    }

    /// The largest slice.
    #[cfg(test)]
    fn largest(&self) -> usize {
        self.slices.iter().map(HashMap::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Runs `n` ticks (one interval) and counts the visits of each socket.
    fn one_interval(slices: &mut Slices<u64>) -> BTreeMap<u64, usize> {
        let mut visits = BTreeMap::new();
        let mut out = Vec::new();
        for _ in 0..slices.count() {
            out.clear();
            slices.next_slice(&mut out);
            for number in &out {
                *visits.entry(*number).or_default() += 1;
            }
        }
        visits
    }

    #[test]
    fn the_slice_count_follows_the_interval_within_bounds() {
        assert_eq!(Slices::<u64>::count_for(Duration::from_secs(10)), 2_000);
        assert_eq!(Slices::<u64>::count_for(Duration::from_secs(1)), 200);
        assert_eq!(Slices::<u64>::count_for(Duration::from_millis(10)), 2);
        assert_eq!(Slices::<u64>::count_for(Duration::from_millis(4)), 1);
        let fifty = Duration::from_millis(50);
        assert_eq!(
            Slices::<u64>::count_with_tick(Duration::from_secs(2), fifty),
            40
        );
        assert_eq!(Slices::<u64>::count_for(Duration::ZERO), 1);
        assert_eq!(
            Slices::<u64>::count_for(Duration::from_secs(31_536_000)),
            MAX_SLICES
        );
        assert_eq!(Slices::<u64>::new(0).count(), 1);
    }

    #[test]
    fn every_socket_is_visited_once_per_interval_and_a_tick_takes_one_slice() {
        let mut slices = Slices::new(200);
        for number in 1..=16_000 {
            slices.insert(number, number);
        }
        assert_eq!(slices.largest(), 80, "16,000 sockets over 200 slices");
        let visits = one_interval(&mut slices);
        assert_eq!(visits.len(), 16_000);
        assert!(visits.values().all(|v| *v == 1), "each exactly once");
        let mut out = Vec::new();
        slices.next_slice(&mut out);
        assert_eq!(out.len(), 80, "a tick is one slice, not every socket");
    }

    #[test]
    fn the_empty_slices_ahead_are_counted_up_to_the_limit_and_never_a_whole_round() {
        let mut slices = Slices::new(10);
        assert_eq!(slices.empty_ahead(100), 9, "never all n");
        assert_eq!(slices.empty_ahead(4), 4);
        // The first socket goes to the slice farthest ahead (the last).
        slices.insert(1, 1);
        assert_eq!(slices.empty_ahead(100), 9);
        let mut out = Vec::new();
        for _ in 0..9 {
            slices.next_slice(&mut out);
        }
        assert!(out.is_empty());
        assert_eq!(
            slices.empty_ahead(100),
            0,
            "the next slice holds the socket"
        );
        slices.next_slice(&mut out);
        assert_eq!(out, vec![1]);
        assert_eq!(Slices::<u64>::new(1).empty_ahead(5), 0);
    }

    #[test]
    fn a_burst_of_connects_spreads_over_the_interval_from_the_farthest_slice() {
        let mut slices = Slices::new(4);
        let mut out = Vec::new();
        slices.next_slice(&mut out); // slice 0 taken; next is 1
        for number in 1..=4 {
            slices.insert(number, number);
        }
        // The first connect goes to slice 0 (just taken, farthest away),
        // the next ones to 3, 2, 1.
        let order: Vec<Vec<u64>> = (0..4)
            .map(|_| {
                let mut out = Vec::new();
                slices.next_slice(&mut out);
                out
            })
            .collect();
        assert_eq!(order, vec![vec![4], vec![3], vec![2], vec![1]]);
    }

    #[test]
    fn a_socket_keeps_its_phase_while_others_come_and_go() {
        let mut slices = Slices::new(10);
        for number in 0..50 {
            slices.insert(number, number);
        }
        let tick_of = |slices: &mut Slices<u64>, wanted: u64| {
            (0..slices.count())
                .find(|_| {
                    let mut out = Vec::new();
                    slices.next_slice(&mut out);
                    out.contains(&wanted)
                })
                .expect("visited")
        };
        let first = tick_of(&mut slices, 7);
        // Churn: half leave, others arrive.
        for number in (0..50).filter(|n| n % 2 == 1 && *n != 7) {
            slices.remove(number);
        }
        for number in 100..130 {
            slices.insert(number, number);
        }
        // The next visit of 7 is exactly one interval (10 ticks) after the
        // first: it counts from the tick after the first visit.
        let again = tick_of(&mut slices, 7);
        assert_eq!(again, slices.count() - 1, "first visit at tick {first}");
    }

    /// One step of a random life: a socket connects (number `n`) or the
    /// `i`-th open socket (modulo) disconnects, or a tick passes.
    #[derive(Debug, Clone)]
    enum Step {
        Connect,
        Disconnect(usize),
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Connect),
            2 => any::<usize>().prop_map(Step::Disconnect),
            2 => Just(Step::Tick),
        ]
    }

    proptest! {
        /// Under any mix of connects, disconnects and ticks: no slice ever
        /// holds more than ceil(peak / n); every socket open for a whole
        /// interval is visited exactly once in it; a removed socket is
        /// never visited again.
        #[test]
        fn bounded_per_tick_and_once_per_interval(
            n in 1usize..40,
            steps in proptest::collection::vec(step(), 0..400),
        ) {
            let mut slices = Slices::new(n);
            let mut open: Vec<u64> = Vec::new();
            let mut next_number = 0u64;
            let mut peak = 0usize;
            let mut gone = std::collections::HashSet::new();
            // Per open socket: ticks since its last visit (or its connect),
            // and whether it has been visited yet.
            let mut since: HashMap<u64, (usize, bool)> = HashMap::new();
            let mut out = Vec::new();
            for s in steps {
                match s {
                    Step::Connect => {
                        next_number += 1;
                        slices.insert(next_number, next_number);
                        open.push(next_number);
                        since.insert(next_number, (0, false));
                        peak = peak.max(open.len());
                    }
                    Step::Disconnect(i) if !open.is_empty() => {
                        let number = open.swap_remove(i % open.len());
                        slices.remove(number);
                        since.remove(&number);
                        gone.insert(number);
                    }
                    Step::Disconnect(_) => {}
                    Step::Tick => {
                        out.clear();
                        slices.next_slice(&mut out);
                        prop_assert!(out.len() <= peak.div_ceil(n), "{} > ceil({peak}/{n})", out.len());
                        for number in &out {
                            prop_assert!(!gone.contains(number), "{number} visited after removal");
                            let (waited, visited) = since.insert(*number, (0, true)).unwrap_or_default();
                            // The first visit within an interval of the
                            // connect; then exactly one interval apart.
                            if visited {
                                prop_assert_eq!(waited, n - 1, "{} visited off its phase", number);
                            } else {
                                prop_assert!(waited < n, "{number} first visited after {waited} ticks");
                            }
                        }
                        for (number, (waited, _)) in since.iter_mut() {
                            if !out.contains(number) {
                                *waited += 1;
                                prop_assert!(*waited < n, "{number} not visited for {waited} ticks");
                            }
                        }
                    }
                }
                prop_assert!(slices.largest() <= peak.div_ceil(n));
                prop_assert_eq!(slices.sockets(), open.len());
            }
            // And a full interval now visits every open socket exactly once.
            let visits = one_interval(&mut slices);
            prop_assert_eq!(visits.len(), open.len());
            prop_assert!(visits.values().all(|v| *v == 1));
        }
    }
}
