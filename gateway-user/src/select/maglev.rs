//! Weighted Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table per backend set that
//! spreads flows by weight and, when the set changes, moves only about the changed share of
//! flows. The kernel and the userspace datapath index the same table with the same flow hash
//! (`gateway_common::select`), so both pick the same backend.

/// A backend's identity (which fixes its place in the table across rebuilds) and weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub weight: u32,
}

/// Builds a table of `size` slots (a prime) holding indexes into `entries`. Entries with
/// weight 0 get no slot. Empty when no entry has weight.
pub fn table(entries: &[Entry], size: u32) -> Vec<u32> {
    let live: Vec<(usize, &Entry)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.weight > 0)
        .collect();
    if live.is_empty() || size < 2 {
        return Vec::new();
    }
    let size64 = u64::from(size);
    // Each backend walks its own permutation of the slots: offset + j * skip (mod size).
    let walks: Vec<(u64, u64)> = live
        .iter()
        .map(|(_, e)| {
            (
                fnv1a(e.key.as_bytes(), 0xcbf2_9ce4_8422_2325) % size64,
                fnv1a(e.key.as_bytes(), 0x8422_2325_cbf2_9ce4) % (size64 - 1) + 1,
            )
        })
        .collect();
    let max_weight = u64::from(live.iter().map(|(_, e)| e.weight).max().unwrap_or(1));
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut slots: Vec<Option<u32>> = vec![None; size as usize];
    let mut filled = 0u32;
    while filled < size {
        for (i, (index, entry)) in live.iter().enumerate() {
            // A backend claims a slot each time its accumulated weight reaches the heaviest
            // backend's weight: shares follow weights.
            credit[i] += u64::from(entry.weight);
            while credit[i] >= max_weight && filled < size {
                credit[i] -= max_weight;
                let (offset, skip) = walks[i];
                loop {
                    let slot = ((offset + next[i] * skip) % size64) as usize;
                    next[i] += 1;
                    if slots[slot].is_none() {
                        slots[slot] = Some(*index as u32);
                        filled += 1;
                        break;
                    }
                }
            }
            if filled == size {
                break;
            }
        }
    }
    slots.into_iter().map(|s| s.unwrap_or(0)).collect()
}

/// FNV-1a with a chosen offset basis: stable across runs and builds (std's hasher is
/// randomised), so a restarted daemon builds the same table.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use gateway_common::select::MAGLEV_TABLE_SIZE;

    use super::*;

    fn entries(spec: &[(&str, u32)]) -> Vec<Entry> {
        spec.iter()
            .map(|(k, w)| Entry {
                key: (*k).into(),
                weight: *w,
            })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for i in table {
            counts[*i as usize] += 1;
        }
        counts
            .iter()
            .map(|c| *c as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn shares_follow_weights() {
        let cases: &[&[(&str, u32)]] = &[
            &[("a", 80), ("b", 20)],
            &[("a", 1), ("b", 1), ("c", 1)],
            &[("a", 5), ("b", 3), ("c", 2)],
            &[("a", 100), ("b", 1)],
        ];
        for spec in cases {
            let table = table(&entries(spec), MAGLEV_TABLE_SIZE);
            assert_eq!(table.len(), MAGLEV_TABLE_SIZE as usize);
            let total: u32 = spec.iter().map(|(_, w)| w).sum();
            for (share, (key, weight)) in shares(&table, spec.len()).iter().zip(spec.iter()) {
                let want = f64::from(*weight) / f64::from(total);
                assert!(
                    (share - want).abs() < 0.005,
                    "{spec:?}: {key} has {share:.4}, wants {want:.4}"
                );
            }
        }
    }

    #[test]
    fn zero_weight_backends_get_nothing() {
        let table = table(&entries(&[("a", 1), ("b", 0)]), 101);
        assert!(table.iter().all(|i| *i == 0));
        assert!(super::table(&entries(&[("a", 0)]), 101).is_empty());
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        let before_entries = entries(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        let before = table(&before_entries, MAGLEV_TABLE_SIZE);
        let after_entries = entries(&[("a", 1), ("b", 1), ("d", 1), ("e", 1)]);
        let after = table(&after_entries, MAGLEV_TABLE_SIZE);
        let key = |t: &[u32], e: &[Entry], i: usize| e[t[i] as usize].key.clone();
        let moved = (0..before.len())
            .filter(|&i| {
                key(&before, &before_entries, i) != "c"
                    && key(&before, &before_entries, i) != key(&after, &after_entries, i)
            })
            .count();
        // Maglev's bound is small, not zero: well under a tenth of the survivors' slots.
        let survivors = before
            .iter()
            .filter(|&&i| before_entries[i as usize].key != "c")
            .count();
        assert!(
            (moved as f64) < 0.1 * survivors as f64,
            "{moved} of {survivors} surviving slots moved"
        );
    }

    #[test]
    fn tables_are_stable_across_builds_and_entry_order() {
        let a = table(&entries(&[("x", 2), ("y", 1)]), 1031);
        assert_eq!(a, table(&entries(&[("x", 2), ("y", 1)]), 1031));
        let reordered = table(&entries(&[("y", 1), ("x", 2)]), 1031);
        fn names(t: &[u32], e: &[&'static str]) -> Vec<&'static str> {
            t.iter().map(|i| e[*i as usize]).collect()
        }
        let moved = names(&a, &["x", "y"])
            .iter()
            .zip(names(&reordered, &["y", "x"]))
            .filter(|(p, q)| *p != q)
            .count();
        assert!(moved < 1031 / 10, "{moved} slots depend on entry order");
    }

    #[test]
    fn flow_hash_spreads_ports() {
        use gateway_common::select::flow_hash;
        let src = [
            0,
            0,
            0xffff_u32.to_be(),
            u32::from_be_bytes([198, 51, 100, 2]).to_be(),
        ];
        let dst = [
            0,
            0,
            0xffff_u32.to_be(),
            u32::from_be_bytes([198, 51, 100, 1]).to_be(),
        ];
        let mut buckets = [0u32; 8];
        for port in 32768..(32768 + 8000) {
            buckets[(flow_hash(src, dst, port, 7000, 6) % 8) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|b| (800..1200).contains(b)),
            "{buckets:?}"
        );
    }
}
