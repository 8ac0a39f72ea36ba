//! Which backend a new connection goes to: a pure function of the
//! balance mode, the backends' loads, which were already tried for this
//! connection, and a rotating start.
//!
//! The start comes from a per-port counter bumped once per connection, so
//! round robin walks the list and least-connections breaks ties by the
//! same walk: equal load spreads instead of piling onto the first backend.

use flotilla_types::mesh::Balance;

/// The index of the backend to try, among `n` backends, skipping those in
/// `tried`; `None` when every one was tried. `load(i)` is backend `i`'s
/// open connections from this node.
pub fn pick(
    balance: Balance,
    n: usize,
    start: usize,
    tried: &[bool],
    load: impl Fn(usize) -> u64,
) -> Option<usize> {
    let order = (0..n)
        .map(|k| (start.wrapping_add(k)) % n)
        .filter(|&i| !tried.get(i).copied().unwrap_or(false));
    match balance {
        Balance::RoundRobin => order.into_iter().next(),
        // min_by_key keeps the first of equal keys: the first in the walk.
        Balance::LeastConnections => order.min_by_key(|&i| load(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_walks_from_the_start() {
        let none = [false; 3];
        let got: Vec<_> = (0..6)
            .map(|s| pick(Balance::RoundRobin, 3, s, &none, |_| 0))
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn retries_skip_what_was_tried() {
        let tried = [false, true, false];
        assert_eq!(pick(Balance::RoundRobin, 3, 1, &tried, |_| 0), Some(2));
        assert_eq!(pick(Balance::RoundRobin, 3, 1, &[true; 3], |_| 0), None);
        assert_eq!(
            pick(Balance::LeastConnections, 3, 0, &[true; 3], |_| 0),
            None
        );
        assert_eq!(pick(Balance::RoundRobin, 0, 5, &[], |_| 0), None);
    }

    #[test]
    fn least_connections_takes_the_idlest_and_ties_go_round() {
        let loads = [3u64, 1, 1, 5];
        let none = [false; 4];
        let load = |i: usize| loads[i];
        assert_eq!(pick(Balance::LeastConnections, 4, 0, &none, load), Some(1));
        assert_eq!(pick(Balance::LeastConnections, 4, 2, &none, load), Some(2));
        assert_eq!(pick(Balance::LeastConnections, 4, 3, &none, load), Some(1));
        let tried = [false, true, false, false];
        assert_eq!(pick(Balance::LeastConnections, 4, 0, &tried, load), Some(2));
    }
}
